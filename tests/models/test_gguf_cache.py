"""The GGUF cache (itda_core.models.gguf_cache): corrupt files, and conversions that are atomic."""

from __future__ import annotations

from pathlib import Path

import pytest

from itda_core.errors import ITDAError
from itda_core.models import gguf_cache, load_model


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ITDAError, match="corrupt"):
        load_model(str(bad), device="cpu", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "models").glob("broken-*")), "no cache entry for a failed conversion"


def test_gguf_cache_is_atomic(tmp_path, monkeypatch):
    """A conversion killed mid-way leaves no usable cache entry; the next call converts again."""
    src = tmp_path / "m.gguf"
    src.write_bytes(b"not really gguf")
    calls = []

    def crashing(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        calls.append("crash")
        raise KeyboardInterrupt

    def working(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"whole")
        calls.append("ok")

    monkeypatch.setattr(gguf_cache, "_convert", crashing)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.cached_gguf_folder(src, tmp_path / "cache", label="m")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(gguf_cache, "_convert", working)
    folder, _sha = gguf_cache.cached_gguf_folder(src, tmp_path / "cache", label="m")
    assert (folder / "model.safetensors").read_bytes() == b"whole"
    assert (folder / gguf_cache.COMPLETE_MARKER).is_file()
    again, _ = gguf_cache.cached_gguf_folder(src, tmp_path / "cache", label="m")
    assert again == folder and calls == ["crash", "ok"], "second call must reuse the cache"
    # a folder at the final name without the marker (e.g. copied by hand, half-written) is not trusted
    (folder / gguf_cache.COMPLETE_MARKER).unlink()
    gguf_cache.cached_gguf_folder(src, tmp_path / "cache", label="m")
    assert calls == ["crash", "ok", "ok"]
