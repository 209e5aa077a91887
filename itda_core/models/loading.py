"""Loading a model from any source (embedded alias, hub id, local folder, GGUF file) as a LoadedModel.

Every source ends up as a transformers model plus a fast tokenizer wrapped in :class:`LoadedModel`,
which knows its blocks (for activation hooks), its width, its family and a stable identifier.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from itda_core.errors import ITDAError
from itda_core.models.embedded import EMBEDDED_MODELS, cache_root, embedded_source
from itda_core.models.gguf_cache import cached_gguf_folder
from itda_core.models.hub import check_hub_id
from itda_core.models.placement import (
    check_device_map,
    config_depth,
    execution_device,
    guard_head,
    map_uses_gpu,
    quiet_skipped_blocks,
    truncated_config,
)

Family = Literal["decoder", "encoder"]

# model_type values of bidirectional encoders; every other architecture is treated as a causal decoder.
ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "distilbert",
        "electra",
        "deberta",
        "deberta-v2",
        "mpnet",
        "albert",
        "camembert",
        "modernbert",
    }
)


@dataclass
class LoadedModel:
    """A model ready for activation extraction.

    ``model`` is the full model (a causal LM for decoders, so evaluation can reach the logits; the bare
    encoder for encoders); ``base`` is the module whose forward yields the residual stream; ``blocks`` are
    its transformer blocks, hooked to read the residual stream after each one.
    """

    name: str
    model_id: str
    model: nn.Module
    tokenizer: Any
    base: nn.Module
    blocks: nn.ModuleList
    family: Family
    architecture: str
    n_layers: int
    d_model: int
    device: torch.device
    dtype: torch.dtype
    source: str  # where the weights were read from
    up_to_layer: int | None = None  # loaded only blocks 0..up_to_layer (n_layers stays the model's full depth)
    device_map: dict[str, Any] | None = None  # accelerate's placement of the modules, when one was asked for

    def site_name(self, layer: int) -> str:
        """TransformerLens-style name of the residual stream after block ``layer``."""
        return f"blocks.{layer}.hook_resid_post"

    def check_layers(self, layers: list[int]) -> list[int]:
        """Sorted unique layers, each in range, or a clear error."""
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise ITDAError(f"layer(s) {bad} out of range for {self.name}, which has layers 0-{self.n_layers - 1}")
        cut = [layer for layer in layers if layer >= len(self.blocks)]
        if cut:
            raise ITDAError(f"layer(s) {cut} of {self.name} were not loaded (loaded up to layer {self.up_to_layer}); "
                            f"load it with up_to_layer >= {max(cut)} or whole")
        if not layers:
            raise ITDAError("no layers given; pass e.g. --layers 0-3 or --layers 5,7")
        return sorted(set(layers))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must be a valid, available device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ITDAError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ITDAError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return dev


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as configs and manifests record it: ``float32``, ``bfloat16``, ``float16``."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 by default; ``auto``: bfloat16 on CUDA, float32 on CPU; half precision only on CUDA (it is slow and
    inexact on CPU)."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        table = {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }
        if dtype not in table:
            raise ITDAError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        dtype = table[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ITDAError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
    if device.type == "cpu" and dtype != torch.float32:
        raise ITDAError(f"{dtype} on CPU is slow and inexact here; use float32 on CPU (half precision on CUDA)")
    return dtype


def folder_model_id(folder: Path) -> str:
    """Stable id for a local folder: its name plus a hash of its weight files' names and sizes and the config."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.suffix in {".safetensors", ".bin", ".json"}:
            digest.update(path.name.encode())
            digest.update(str(path.stat().st_size).encode())
            if path.name == "config.json":
                digest.update(path.read_bytes())
    return f"local:{folder.name}@{digest.hexdigest()[:16]}"


def _find_blocks(base: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a base model, for the architectures this tool supports."""
    for path in ("layers", "h", "encoder.layer", "decoder.layers", "transformer.h", "blocks"):
        obj: Any = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ITDAError(
        f"cannot find the transformer blocks of {type(base).__name__}; supported: Llama/Gemma/Qwen/GPT-2/"
        "GPT-NeoX/BERT-style models"
    )


def _d_model(config: Any) -> int:
    """The residual width from a transformers config (each architecture names it differently)."""
    for attr in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise ITDAError(f"cannot find the hidden size in the config of {type(config).__name__}")


def wrap_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    name: str,
    model_id: str,
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    n_layers: int | None = None,
) -> LoadedModel:
    """Wrap an already-built transformers model (used by :func:`load_model` and by tests with tiny models);
    ``n_layers`` is the full depth when ``model`` holds only the first blocks (a truncated load)."""
    config = model.config
    arch = str(getattr(config, "model_type", type(model).__name__))
    family: Family = "encoder" if arch in ENCODER_TYPES else "decoder"
    base = getattr(model, "base_model", model)
    blocks = _find_blocks(base)
    if not getattr(tokenizer, "is_fast", False):
        raise ITDAError(
            f"the tokenizer of {name} is not a fast tokenizer; character offsets need one (install 'tokenizers')"
        )
    model.eval()
    return LoadedModel(
        name=name,
        model_id=model_id,
        model=model,
        tokenizer=tokenizer,
        base=base,
        blocks=blocks,
        family=family,
        architecture=arch,
        n_layers=n_layers if n_layers is not None else len(blocks),
        d_model=_d_model(config),
        device=device,
        dtype=dtype,
        source=source,
    )


def _from_folder(
    folder: str,
    *,
    name: str,
    model_id: str,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool,
    revision: str | None = None,
    up_to_layer: int | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_dir: str | Path | None = None,
) -> LoadedModel:
    """Load config, tokenizer and weights with transformers, turning its errors into one clear line; only blocks
    0..``up_to_layer`` when it is given, placed by ``device_map`` (offloading to ``offload_dir``) when that is."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        auto = AutoModel if getattr(config, "model_type", "") in ENCODER_TYPES else AutoModelForCausalLM
        depth = config_depth(config)
        if up_to_layer is not None:
            config = truncated_config(config, up_to_layer)
            if up_to_layer == depth - 1:  # the last block asked for: the whole model, head included
                up_to_layer = None
        placement: dict[str, Any] = {}
        if device_map is not None:
            placement["device_map"] = device_map
            if offload_dir is not None:
                Path(offload_dir).mkdir(parents=True, exist_ok=True)
                placement["offload_folder"] = str(offload_dir)
        with quiet_skipped_blocks(up_to_layer is not None):
            model = auto.from_pretrained(folder, config=config, dtype=dtype, **placement, **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ITDAError(
            f"could not load model {name!r}: {first[:300]} -- check the name, your network (hub ids need "
            f"internet), or use a local folder, a .gguf file or an embedded alias ({', '.join(EMBEDDED_MODELS)})"
        ) from err
    except ValueError as err:
        first = str(err).strip().splitlines()[0]
        hint = " (pass trust_remote_code=True if you trust it)" if "trust_remote_code" in str(err) else ""
        raise ITDAError(f"could not load model {name!r}: {first[:300]}{hint}") from err
    placed = getattr(model, "hf_device_map", None) if device_map is not None else None
    if placed is None:
        model.to(device)
    else:
        device = execution_device(model)
    if up_to_layer is not None:
        guard_head(model, up_to_layer, depth)
    loaded = wrap_model(model, tokenizer, name=name, model_id=model_id, source=str(folder), device=device,
                        dtype=dtype, n_layers=depth)
    loaded.up_to_layer = up_to_layer
    loaded.device_map = dict(placed) if placed is not None else None
    return loaded


def _exists(path: Path, *, folder: bool = False) -> bool:
    """``path.exists()`` (``is_dir()`` with ``folder``), False for a name the system cannot look up (longer than a
    file name may be), which then goes on to be checked as a hub id."""
    try:
        return path.is_dir() if folder else path.exists()
    except OSError:
        return False


def load_model(
    name: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
    up_to_layer: int | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_dir: str | Path | None = None,
) -> LoadedModel:
    """Load an embedded alias (``smollm2-135m``, ``gemma3-270m``, ``minilm-l6``), a local ``.gguf`` file,
    a local model folder or a Hugging Face model id. GGUF weights are converted once to a safetensors
    cache so that later loads take seconds.

    ``up_to_layer=N`` loads only blocks 0..N (for extraction, training and indexing, which never need logits; the
    model keeps its identity and full ``n_layers``, so its dictionaries equal a full load's). ``device_map``
    (``auto``, ``balanced``, ``sequential`` or a {module: GPU index, 'cpu' or 'disk'} dict) lets accelerate
    place the modules, offloading to ``offload_dir``; ``device`` then stays ``auto``."""
    device_map = check_device_map(device_map, offload_dir, device)
    mapped = device_map is not None and map_uses_gpu(device_map)
    dev = resolve_device(device) if device_map is None else torch.device("cuda" if mapped else "cpu")
    dt = resolve_dtype(dtype, dev)
    if up_to_layer is not None and up_to_layer < 0:
        raise ITDAError(f"up_to_layer must be a layer index >= 0 (got {up_to_layer})")
    where, model_id, trusted = locate_model(name, revision=revision, trust_remote_code=trust_remote_code,
                                            cache_dir=cache_dir)
    loaded = _from_folder(where, name=name, model_id=model_id, device=dev, dtype=dt, trust_remote_code=trusted,
                          revision=revision if not model_id else None, up_to_layer=up_to_layer,
                          device_map=device_map, offload_dir=offload_dir)
    if not model_id:  # a hub id: identified by the commit it resolved to
        commit = getattr(loaded.model.config, "_commit_hash", None) or revision or "main"
        loaded.model_id = f"hf:{name}@{commit}"
    return loaded


def locate_model(name: str, *, revision: str | None = None, trust_remote_code: bool = False,
                 cache_dir: str | Path | None = None) -> tuple[str, str, bool]:
    """(folder or hub id to read, model id ('' for a hub id: its commit is known once read), trust_remote_code) for
    an embedded alias, a .gguf file (converted once into a cached folder), a model folder or a hub id."""
    cache = Path(cache_dir).expanduser() / "models" if cache_dir else None
    if name in EMBEDDED_MODELS:
        folder, model_id = embedded_source(name, cache)
        return str(folder), model_id, False
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ITDAError(f"GGUF file {path} does not exist")
        folder, sha = cached_gguf_folder(path, cache or cache_root() / "models", label=path.stem)
        return str(folder), f"gguf:{path.stem}@sha256:{sha[:16]}", trust_remote_code
    if _exists(path, folder=True):
        if not (path / "config.json").is_file():
            raise ITDAError(f"{path} is a folder without config.json; point to a transformers model folder")
        return str(path), folder_model_id(path), trust_remote_code
    if _exists(path) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ITDAError(
            f"{name!r} is not a model folder, a .gguf file, a hub id or an embedded alias "
            f"({', '.join(EMBEDDED_MODELS)})"
        )
    close = difflib.get_close_matches(name, list(EMBEDDED_MODELS), n=1, cutoff=0.6)
    if close:
        raise ITDAError(f"unknown model {name!r}; did you mean the embedded alias {close[0]!r}?")
    check_hub_id(name, revision)
    return name, "", trust_remote_code


def model_depth(name: str, *, revision: str | None = None, trust_remote_code: bool = False,
                cache_dir: str | Path | None = None) -> int:
    """How many blocks a model has, from its config alone (no weights read): what a truncated load needs to know
    before it can choose the deepest layer of a spec such as 'middle' or '-1'."""
    from transformers import AutoConfig

    where, model_id, trusted = locate_model(name, revision=revision, trust_remote_code=trust_remote_code,
                                            cache_dir=cache_dir)
    kwargs: dict[str, Any] = {"trust_remote_code": trusted}
    if revision and not model_id:
        kwargs["revision"] = revision
    try:
        return config_depth(AutoConfig.from_pretrained(where, **kwargs))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ITDAError(f"could not read the config of {name!r}: {first[:300]}") from err
