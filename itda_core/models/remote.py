"""Remote extraction through nnsight (NDIF): the residual stream of the asked layers, read by a trace that saves
each block's output and stops after the deepest one, in batches tokenised exactly as in-process extraction does.

:func:`remote_model` builds the model on the meta device (config and tokenizer only, no weights), which is all the
metadata a training run needs (width, depth, tokenizer, identity); the forward runs on NDIF (``remote=True``), in
a local serialise-and-run simulation of that request (``remote="local"``) or, lazily dispatching the weights here,
locally (``remote=False``). :func:`nnsight_source` wraps a model already loaded here, to run the same trace offline.
``source.forward`` plugs into ``itda_core.extraction.extract(..., forward=)``.

The NDIF API key is nnsight's: the ``NDIF_API_KEY`` environment variable, or ``nnsight.CONFIG.set_default_api_key``
(saved in ``~/.config/nnsight/config.yaml``). It is never written to a log or an error message: errors from a
remote run are redacted before they are raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from itda_core.errors import ITDAError
from itda_core.extras import require
from itda_core.models.hub import check_hub_id
from itda_core.models.loading import ENCODER_TYPES, LoadedModel, folder_model_id, wrap_model
from itda_core.models.placement import blocks_path

Remote = bool | Literal["local"]
KEY_HELP = ("set the NDIF_API_KEY environment variable, or once: python -c \"import nnsight; "
            "nnsight.CONFIG.set_default_api_key('YOUR_KEY')\" (get a key at https://login.ndif.us)")


def api_key() -> str:
    """The configured NDIF API key ('' if none); never to be printed."""
    nnsight = require("nnsight", "scale", "remote extraction")
    return str(nnsight.CONFIG.API.APIKEY or "")


def redact(text: str, secret: str | None = None) -> str:
    """``text`` with the API key (and any longer-than-8 secret given) replaced by ``***``."""
    for value in (secret, api_key()):
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return text


@dataclass
class NnsightSource:
    """A model reached through nnsight: ``lm`` carries its metadata (a meta-device model for remote runs),
    ``envoy`` is the nnsight wrapper, ``remote`` where the trace runs (True: NDIF)."""

    lm: LoadedModel
    envoy: Any = field(repr=False)
    remote: Remote = False
    block_path: str = ""

    def forward(self, model: LoadedModel, input_ids: Tensor, attention_mask: Tensor,
                layers: Sequence[int]) -> dict[int, Tensor]:
        """Residual stream after each block of ``layers`` ([b, t, d] on ``model.device``), as
        :func:`itda_core.extraction.residual_stream` returns it, from one nnsight trace that stops after the
        deepest block (no logits are computed, locally or on NDIF)."""
        wanted = sorted(set(layers))
        if not wanted:
            return {}
        if self.remote is True and not api_key():
            raise ITDAError(f"--remote needs an NDIF API key: {KEY_HELP}")
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        kwargs = {"use_cache": False} if model.family == "decoder" else {}
        try:
            saved = _trace(self.envoy, inputs, kwargs, [f"{self.block_path}.{layer}" for layer in wanted],
                           self.remote)
        except ITDAError:
            raise
        except Exception as err:  # a remote job fails in many ways; each becomes one redacted line
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            where = "on NDIF" if self.remote is True else "through nnsight"
            raise ITDAError(f"extracting {model.name} {where} failed: {redact(text)[:300]}") from None
        out = {}
        for layer, value in zip(wanted, saved, strict=True):
            hidden = value[0] if isinstance(value, tuple) else value
            out[layer] = hidden.detach().to(model.device)
        return out


def _trace(envoy: Any, inputs: dict[str, Tensor], kwargs: dict[str, Any], paths: list[str],
           remote: Remote) -> list[Any]:
    """One trace: save the output of each block in ``paths``, then stop the forward pass."""
    nnsight = require("nnsight", "scale", "remote extraction")
    with envoy.trace(inputs, remote=remote, **kwargs) as tracer:
        saved = nnsight.save([envoy.get(path).output for path in paths])
        tracer.stop()
    return saved


def _task(family: str) -> str:
    """The transformers pipeline task nnsight wraps a model in (part of NDIF's model key)."""
    return "feature-extraction" if family == "encoder" else "text-generation"


def nnsight_source(loaded: LoadedModel, remote: Remote = False) -> NnsightSource:
    """Wrap a model loaded here (:func:`itda_core.models.load_model`) in nnsight: the remote code path, run
    offline. Its metadata and identity are ``loaded``'s."""
    transformers_model = require("nnsight.modeling.transformers", "scale", "extraction through nnsight")
    if loaded.up_to_layer is not None:
        raise ITDAError("nnsight needs the whole model; load it without up_to_layer")
    envoy = transformers_model.TransformersModel(loaded.model, tokenizer=loaded.tokenizer,
                                                 task=_task(loaded.family))
    return NnsightSource(loaded, envoy, remote, blocks_path(loaded.model, loaded.blocks))


def remote_model(name: str, remote: Remote = True, *, revision: str | None = None,
                 trust_remote_code: bool = False) -> NnsightSource:
    """A model for remote extraction, built on the meta device (no weights are read): a Hugging Face id for NDIF
    (``remote=True``); a local folder too for ``remote="local"`` or ``False`` (dispatched here on first use).
    Its identity is what :func:`itda_core.models.load_model` gives the same name, so its dictionaries match."""
    transformers_model = require("nnsight.modeling.transformers", "scale", "remote extraction")
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(name).expanduser()
    local = folder.is_dir()
    if local and remote is True:
        raise ITDAError(f"--remote runs a model NDIF hosts, named by its Hugging Face id; {name} is a local folder "
                        "(extract it here, without --remote)")
    if not local:
        if name.endswith(".gguf") or name.startswith((".", "/", "~")):
            raise ITDAError(f"--remote needs a Hugging Face model id (e.g. meta-llama/Llama-3.1-8B), not {name!r}")
        check_hub_id(name, revision)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        family = "encoder" if getattr(config, "model_type", "") in ENCODER_TYPES else "decoder"
        envoy = transformers_model.TransformersModel(name, tokenizer=tokenizer, task=_task(family),
                                                     revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ITDAError(f"could not read the config and tokenizer of {name!r}: {redact(first)[:300]}") from None
    module = envoy._module  # the meta-device model nnsight built (its structure, no weights)
    if local:
        model_id = folder_model_id(folder)
    else:
        commit = getattr(config, "_commit_hash", None) or revision or "main"
        model_id = f"hf:{name}@{commit}"
    lm = wrap_model(module, tokenizer, name=name, model_id=model_id, source=f"nnsight:{name}",
                    device=torch.device("cpu"), dtype=torch.float32)
    return NnsightSource(lm, envoy, remote, blocks_path(module, lm.blocks))
