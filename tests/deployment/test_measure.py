"""file_bytes: a file's size and its deflated size, the deflate skipped when not asked for."""

from __future__ import annotations

import zlib

from agent_lightning.deployment import measure
from agent_lightning.deployment.measure import file_bytes


def test_file_bytes_deflates_only_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    data = bytes(range(256)) * 40 + b"\0" * 20_000  # the zeros deflate to almost nothing
    path.write_bytes(data)
    assert file_bytes(path) == (len(data), len(zlib.compress(data, 6)))
    assert file_bytes(path)[1] < len(data) // 2
    calls = []
    monkeypatch.setattr(measure.zlib, "compress", lambda *args: calls.append(args))
    assert file_bytes(path, compressed=False) == (len(data), None)
    assert calls == []  # a large export is not read and deflated for nothing
