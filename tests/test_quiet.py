from __future__ import annotations

import logging
import subprocess
import sys

from agent_lightning.quiet import messages_dropped, silence_known_noise


def test_known_noise_is_dropped_and_other_messages_pass(caplog):
    silence_known_noise()
    silence_known_noise()  # idempotent
    assert len(logging.getLogger("torchao").filters) == 1
    with caplog.at_level(logging.WARNING, logger="torchao"):
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: no CUDA")
        logging.getLogger("torchao").warning("a real torchao warning")
    assert [r.getMessage() for r in caplog.records] == ["a real torchao warning"]


def test_importing_torchao_after_the_package_prints_nothing():
    code = "import agent_lightning, torchao"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Failed to load" not in result.stderr and "opaque value type" not in result.stderr


def test_known_warnings_are_ignored_and_others_are_not():
    import warnings

    silence_known_noise()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_known_noise()  # installed inside the recording context, as the package does at import
        warnings.warn("Int8Tensor does not implement _stable_hash_for_caching. For PT2 ...", UserWarning)
        warnings.warn("a real warning", UserWarning)
    assert [str(w.message) for w in caught] == ["a real warning"]


def test_messages_are_dropped_only_inside_the_block():
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.modeling_utils")  # transformers' loggers do not propagate to root
    logger.addHandler(handler)
    note = "`loss_type={}` was set in the config but it is unrecognized. Using the default loss: `ForCausalLMLoss`."
    try:
        with messages_dropped("transformers.modeling_utils", "`loss_type=None` was set"):
            logger.warning(note.format("None"))
            logger.warning(note.format("Foo"))
        logger.warning(note.format("None"))
    finally:
        logger.removeHandler(handler)
    assert [m.split(" ")[0] for m in seen] == ["`loss_type=Foo`", "`loss_type=None`"]
    assert not logger.filters
