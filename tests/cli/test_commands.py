"""The top-level command: its table of subcommands, one help for every entry point, a quiet console, and where
runs are written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent_lightning.cli import COMMANDS, main
from agent_lightning.cli.commands import help_text
from tests.conftest import REPO

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_top_level_help_lists_every_subcommand_with_one_line(capsys):
    main(["--help"])
    printed = capsys.readouterr().out
    assert printed.strip() == help_text()
    for name, command in COMMANDS.items():
        assert f"  {name}" in printed and command.summary in printed
    assert {"fit", "validate", "test", "predict", "compress", "export"} <= set(COMMANDS)
    assert "Train LLM-based agents" in printed and "COMMAND --help" in printed


def test_every_entry_point_prints_the_same_help():
    console_script = Path(sys.executable).parent / "agent-lightning"
    commands = {
        "agent-lightning": [str(console_script), "--help"],
        "python -m agent_lightning": [sys.executable, "-m", "agent_lightning", "--help"],
        "train.py": [sys.executable, str(REPO / "train.py"), "--help"],
    }
    outputs = {}
    for name, command in commands.items():
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stderr == "", f"{name} printed on stderr: {result.stderr[-2000:]}"
        outputs[name] = result.stdout
    assert outputs["python -m agent_lightning"] == outputs["agent-lightning"] == outputs["train.py"]
    assert outputs["agent-lightning"].strip() == help_text()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "usage:" in printed and (name in printed.split("\n", 1)[0] or f"agent-lightning {name}" in printed)


def test_an_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "'train' is not a command" in error and "fit, validate, test, predict, compress, export" in error


NOISE = (
    "LightningCLI's args parameter",  # Lightning's advice that does not apply to our command table
    "litlogger",  # Lightning's advertisement
    "LOAD REPORT",  # transformers' report of the head we are about to train
    "Consider training on your downstream task",
    "MISSING",
    "Loading weights",  # transformers' progress bars
    "Writing model shards",
    "to estimate number of stepping batches",
    "LeafSpec",  # Lightning on torch 2.13
    "is now natively supported by torch.compile",  # torchao's registration notes
)


def test_the_main_job_console_has_no_noise_and_keeps_real_warnings(tmp_path, tiny_bert, tiny_data_dir):
    command = [sys.executable, str(REPO / "train.py"), "compress", "-c", str(REPO / "configs" / "default.yaml")]
    command += [f"--model.model={tiny_bert}", f"--data.dataset={tiny_data_dir}", "--data.batch_size=8"]
    command += ["--trainer.max_epochs=2", "--student-layers", "1"]
    # a genuine warning: the run has fewer batches than the logging interval (Lightning says so, and it must show)
    command += ["--trainer.log_every_n_steps=50"]
    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    for noise in NOISE:
        assert noise not in console, f"{noise!r} is on the console"
    assert "smaller than the logging interval Trainer(log_every_n_steps=50)" in console
    for stage in ("Stage 1", "Stage 2", "Stage 3", "Stage 4", "Summary: runs/student/version_0/summary.md"):
        assert stage in console
    assert "| CPU latency, batch 32 |" in console


def _fit(tmp_path: Path, tiny_bert: str, *extra: str) -> None:
    main(
        [
            "fit",
            "-c",
            str(REPO / "configs" / "default.yaml"),
            f"--model.model={tiny_bert}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--test_after_fit=false",
            *extra,
        ]
    )


def test_default_root_dir_moves_logs_and_checkpoints(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path, tiny_bert, f"--trainer.default_root_dir={tmp_path / 'elsewhere'}")
    run = tmp_path / "elsewhere" / "agent" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert not (tmp_path / "runs").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "elsewhere")


def test_an_explicit_logger_save_dir_wins_over_default_root_dir(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(
        tmp_path,
        tiny_bert,
        f"--trainer.default_root_dir={tmp_path / 'elsewhere'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    )
    assert (tmp_path / "logs" / "agent" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "elsewhere" / "agent").exists()
