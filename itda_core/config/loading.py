"""How a model is loaded for jobs that only read its residual stream (train, index): precision, accelerate's
placement over GPUs, CPU and disk, truncation to the blocks asked for (:class:`LoadingConfig`), and extraction on
NDIF through nnsight (:class:`RemoteConfig`). No torch here, so reading the options (the CLI's help) is instant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from itda_core.errors import ITDAError
from itda_core.options import option

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class LoadingConfig:
    """Precision, placement and truncation of a local model load."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", help="Weights and activations: auto = bfloat16 on CUDA, float32 on CPU (half precision is refused on "
        "CPU).")
    device_map: str | None = option(
        None, help="Let accelerate place the blocks over the GPUs, the CPU and --offload-dir: auto, balanced, "
        "balanced_low_0 or sequential (then leave --device at auto).")
    offload_dir: Path | None = option(
        None, help="Folder for the weights --device-map puts on disk (each block is read in for its own forward).")
    truncate: bool = option(
        True, help="Load only the blocks up to the deepest layer asked for (later blocks are never built); the "
        "dictionaries are exactly those of a full load.")

    def __post_init__(self) -> None:
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise ITDAError(f"unknown --device-map {self.device_map!r}; use one of {', '.join(DEVICE_MAPS)}")
        if self.offload_dir is not None and self.device_map is None:
            raise ITDAError("--offload-dir needs --device-map (e.g. --device-map auto), which decides what to offload")

    @property
    def local_only(self) -> list[str]:
        """The options given that place a local load (meaningless for a remote one)."""
        given = {"--dtype": self.dtype != "auto", "--device-map": self.device_map is not None,
                 "--offload-dir": self.offload_dir is not None}
        return [flag for flag, on in given.items() if on]


@dataclass
class RemoteConfig:
    """Whether the forward passes run on NDIF (nnsight) instead of here."""

    remote: bool = option(
        False, help="Extract on NDIF through nnsight: the model (a Hugging Face id NDIF hosts) is built here on the "
        "meta device, without weights. Needs an NDIF API key: NDIF_API_KEY or nnsight.CONFIG.set_default_api_key.")
