"""One-time conversion of GGUF models into a safetensors folder that transformers loads in seconds.

Loading a GGUF file parses its metadata and dequantises every tensor (a minute for the embedded models);
the converted folder reloads in a few seconds with identical weights. Conversions are written to a
temporary folder and renamed into place, so a process killed mid-way never leaves a cache that is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from itda_core.errors import ITDAError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "itda_conversion.json"
_STALE_TMP_SECONDS = 6 * 3600
_sha_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _sha_memo:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _sha_memo[key] = digest.hexdigest()
    return _sha_memo[key]


def _convert(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers (dequantised to float32) and save it as safetensors into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (KeyboardInterrupt, ITDAError):
        raise
    except Exception as err:  # gguf/transformers raise many types for a bad file
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ITDAError(
            f"could not read GGUF file {gguf} ({type(err).__name__}: {detail}); the file is corrupt or not a "
            "supported causal-LM GGUF: re-download it or pass a transformers model folder instead"
        ) from err
    # transformers refuses to save a model that still carries its GGUF quantizer; the weights are already
    # plain float32, so dropping the quantizer state is all that is needed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _clean_stale(cache: Path, label: str) -> None:
    """Remove temporary folders left behind by conversions that were killed long ago."""
    now = time.time()
    for tmp in cache.glob(f".{label}-*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def cached_gguf_folder(
    gguf: Path | None,
    cache: Path,
    *,
    label: str,
    sha256: str | None = None,
    assemble: Callable[[Path], None] | None = None,
) -> tuple[Path, str]:
    """Folder with the converted model for ``gguf`` (converting it on first use) and the file's sha256.

    ``assemble`` builds the GGUF file at a given path first (for models shipped in parts); then ``sha256``
    must be given, since it names the cache entry before the file exists.
    """
    if gguf is None and (assemble is None or sha256 is None):
        raise ValueError("either a GGUF path or an assemble function with its sha256 is required")
    sha = sha256 or file_sha256(gguf)  # type: ignore[arg-type]
    final = cache / f"{label}-{sha[:16]}"
    if (final / COMPLETE_MARKER).is_file():
        return final, sha
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ITDAError(
            f"cannot create the model cache {cache} ({err}); set ITDA_CACHE_DIR to a writable folder"
        ) from err
    if final.exists():  # a folder without the marker is not ours to trust
        shutil.rmtree(final, ignore_errors=True)
    _clean_stale(cache, label)
    log.warning("converting %s to a safetensors cache in %s (once; later loads take seconds)", label, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=cache))
    try:
        source = gguf
        if assemble is not None:
            source = tmp / "assembled" / f"{label}.gguf"
            source.parent.mkdir()
            assemble(source)
        assert source is not None
        _convert(source, tmp)
        if assemble is not None:
            shutil.rmtree(source.parent)
        (tmp / COMPLETE_MARKER).write_text(
            json.dumps(
                {
                    "label": label,
                    "source": str(gguf or "assembled"),
                    "sha256": sha,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
                indent=1,
            )
        )
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / COMPLETE_MARKER).is_file():  # not a concurrent conversion that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, sha
