"""Where a model's weights go: truncation to the blocks a job reads, and accelerate device maps with offload.

Truncation rewrites the config to ``deepest + 1`` blocks before ``from_pretrained`` builds the model, so the later
blocks are never built nor read from the checkpoint (their weights are skipped as unused keys). The embeddings,
the final norm and the output head are still loaded (they are small next to the blocks); the head is guarded, so a
truncated model refuses to produce logits (they would come from the wrong layer). A device map hands placement to
accelerate: blocks spread over GPUs, the CPU and an offload folder on disk, each brought to its execution device
only for its own forward.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from itda_core.errors import ITDAError

# Strategies accelerate computes a map for (transformers' from_pretrained passes them on).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
PLACES = ("cpu", "disk")


def config_depth(config: Any) -> int:
    """The number of transformer blocks a transformers config declares."""
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        raise ITDAError(f"cannot find the number of layers in the config of {type(config).__name__}; "
                        "load this model whole (without up_to_layer)")
    return depth


def truncated_config(config: Any, up_to_layer: int) -> Any:
    """A copy of ``config`` with only blocks 0..``up_to_layer`` (per-layer lists such as Gemma's ``layer_types``
    cut to match), or a one-line error for a layer out of range."""
    depth = config_depth(config)
    if not 0 <= up_to_layer < depth:
        raise ITDAError(f"up_to_layer {up_to_layer} is out of range: this model has layers 0-{depth - 1}")
    out = copy.deepcopy(config)
    for name in ("layer_types", "sliding_window_pattern_list"):
        value = getattr(out, name, None)
        if isinstance(value, list) and len(value) == depth:
            setattr(out, name, value[: up_to_layer + 1])
    out.num_hidden_layers = up_to_layer + 1
    return out


@contextlib.contextmanager
def quiet_skipped_blocks(active: bool) -> Iterator[None]:
    """Silence transformers' load report while a truncated load skips the later blocks' weights (each one would be
    listed as UNEXPECTED); other loads keep the report."""
    if not active:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def check_device_map(device_map: str | dict[str, Any] | None, offload_dir: str | Path | None,
                     device: str | torch.device) -> str | dict[str, Any] | None:
    """The device map as transformers takes it, after the checks that give one-line errors: a known strategy or
    a {module: device} dict, an offload folder only with a map (and one whenever the map puts weights on disk),
    and no fixed --device beside a map (the map decides placement)."""
    if device_map is None:
        if offload_dir is not None:
            raise ITDAError("--offload-dir needs --device-map (e.g. --device-map auto), which decides what to offload")
        return None
    if str(device) != "auto":
        raise ITDAError(f"--device {device} and --device-map both place the model; use --device auto with a device "
                        "map (or drop --device-map)")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ITDAError(f"unknown device map {device_map!r}; use one of {', '.join(DEVICE_MAP_STRATEGIES)}")
        return device_map
    for module, place in device_map.items():
        ok = isinstance(place, int) or place in PLACES or str(place).startswith("cuda")
        if not ok:
            raise ITDAError(f"device map entry {module!r}: {place!r} is not a GPU index, 'cuda:N', 'cpu' or 'disk'")
        if (isinstance(place, int) or str(place).startswith("cuda")) and not torch.cuda.is_available():
            raise ITDAError(f"device map entry {module!r} asks for GPU {place!r} but no CUDA GPU is available")
    if "disk" in device_map.values() and offload_dir is None:
        raise ITDAError("the device map puts weights on 'disk'; pass --offload-dir DIR for them")
    return dict(device_map)


def map_uses_gpu(device_map: str | dict[str, Any]) -> bool:
    """Whether a device map will put weights on a GPU (a strategy does when one is available)."""
    if isinstance(device_map, str):
        return torch.cuda.is_available()
    return any(isinstance(p, int) or str(p).startswith("cuda") for p in device_map.values())


def execution_device(model: nn.Module) -> torch.device:
    """The device a dispatched model computes on first (its inputs go there, and the residual stream is gathered
    there): the first GPU of its map, else the CPU (offloaded weights are brought to it)."""
    placed = getattr(model, "hf_device_map", None) or {}
    for place in placed.values():
        if isinstance(place, int):
            return torch.device("cuda", place)
        if str(place).startswith("cuda"):
            return torch.device(str(place))
    return torch.device("cpu")


class TruncatedModelError(ITDAError):
    """Logits were asked of a model loaded without its last blocks."""


def guard_head(model: nn.Module, up_to_layer: int, n_layers: int) -> None:
    """Make the output head of a truncated model refuse to run: its logits would come from block ``up_to_layer``,
    not from the last block, and nothing would say so."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return

    def refuse(_module: nn.Module, _inputs: Any) -> None:
        raise TruncatedModelError(f"this model was loaded up to layer {up_to_layer} of 0-{n_layers - 1} "
                                  "(up_to_layer); logits need the whole model: load it without up_to_layer")

    head.register_forward_pre_hook(refuse)


def blocks_path(root: nn.Module, blocks: nn.ModuleList) -> str:
    """The dotted name of ``blocks`` inside ``root`` (``model.layers``, ``transformer.h``), for addressing one block
    by name (nnsight's envoys, device maps)."""
    for name, module in root.named_modules():
        if module is blocks:
            return name
    raise ITDAError(f"the blocks are not a submodule of {type(root).__name__}")  # pragma: no cover - wrap_model's find
