"""SAELens export: an ITDA as a folder that ``sae_lens.SAE.load_from_disk`` loads (its ``matching_pursuit`` SAE).

SAELens's matching pursuit (``sae_lens/saes/matching_pursuit_sae.py``, ``_encode_matching_pursuit``, read in
sae-lens 6.54.0) takes at each step the latent with the largest *positive* correlation,
``relu(residual @ W_dec.T).max(dim=1)``, with that correlation as its value, and sums each latent's values
(``scatter_add_``) into dense ``[n, d_sae]`` activations. ITDA's takes the largest |correlation| with a signed
coefficient. With the decoder ``[D; -D]`` (latent j is atom j, latent m + j is -atom j) both pick the same
atom at every step: atom j with coefficient c < 0 is latent m + j with value -c.

Its stopping rules are set so that it runs exactly k plain MP steps, like ``matching_pursuit``:
``residual_threshold`` 0 (the rule is on only when it is > 0), ``stop_on_duplicate_support`` False (on, a
token stops as soon as a step re-picks an atom already in its support, which plain MP does) and
``max_iterations`` k (None would mean d_in steps). ``apply_b_dec_to_input`` is False and ``b_dec`` zero: ITDA
encodes raw activations. The folder holds ``cfg.json`` and ``sae_weights.safetensors`` (never pickle), both
written without importing sae_lens; :func:`fold_saelens_codes` and :func:`saelens_codes_to_itda` map SAELens's
activations back to signed ITDA codes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.errors import ITDAError
from itda_core.export.folders import check_out, staged

SAELENS_FORMAT = "6.54.0"  # the sae-lens version whose cfg.json this writes (>= 6.0: no pre-6 conversion on load)
CFG_FILE = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME
WEIGHTS_FILE = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
SIGNED_DECODER = "W_dec = [atoms; -atoms]: latent j < m is atom j, latent m + j is -atom j"


def saelens_model_name(config: ITDAConfig) -> str:
    """The model name TransformerLens and SAELens look up: a hub model's name, an embedded model's original on
    the hub, else ours (SAELens loads the model by this name)."""
    from itda_core.models.embedded import EMBEDDED_MODELS

    if config.model_id.startswith("hf:"):
        return config.model_id[3:].rsplit("@", 1)[0]
    embedded = EMBEDDED_MODELS.get(config.model_name)
    if embedded is not None and config.model_id.startswith(f"{embedded.alias}@"):
        return embedded.hf_name
    return config.model_name


def prepends_bos(itda: ITDA) -> bool | None:
    """Whether documents began with a special token (BOS, CLS), read from the atoms at position 0 (an empty
    character span); None when no atom comes from position 0 (SAELens's activation store needs to know)."""
    prov = itda.provenance
    first = prov.position == 0
    if not bool(first.any()):
        return None
    return bool((prov.char_start[first] == prov.char_end[first]).any())


def _check(itda: ITDA, dtype: str) -> None:
    """Refuse what SAELens would load but not encode as ITDA does: no atoms, non-finite or non-unit atoms."""
    if len(itda) == 0:
        raise ITDAError("this dictionary has no atoms, so there is nothing to export; train it on more tokens")
    if dtype not in DTYPES:
        raise ITDAError(f"unknown dtype {dtype!r} for the SAELens export; choose one of {', '.join(DTYPES)}")
    if itda.config.k < 1:
        raise ITDAError(f"the dictionary's k is {itda.config.k}; SAELens needs at least one MP step")
    atoms = itda.atoms.detach().float()
    if not bool(torch.isfinite(atoms).all()):
        raise ITDAError("the dictionary's atoms hold NaN or infinite values; train it again")
    # a normalised float32 row is unit norm within d rounding errors; MP's coefficients assume unit atoms
    off = float((atoms.norm(dim=1) - 1).abs().max())
    if off > itda.d_model * torch.finfo(torch.float32).eps:
        raise ITDAError(f"the dictionary's atoms are not unit norm (off by up to {off:.2e}); train it again")


def saelens_config(
    itda: ITDA, *, hook_name: str | None = None, context_size: int | None = None, model_name: str | None = None,
    prepend_bos: bool | None = None, dataset_path: str | None = None, dtype: str = "float32", device: str = "cpu",
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``cfg.json`` of the export: SAELens's matching-pursuit fields set for exactly k plain MP steps, its
    metadata (model, TransformerLens hook, context, dataset) and the ITDA config it came from."""
    c = itda.config
    meta: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT,
        "sae_lens_training_version": None,  # not trained by SAELens
        "model_name": model_name or saelens_model_name(c),
        "model_class_name": "HookedEncoder" if c.family == "encoder" else "HookedTransformer",
        "hook_name": hook_name or c.site,
        "hook_head_index": None,
        "context_size": context_size or c.seq_len,
        "prepend_bos": prepends_bos(itda) if prepend_bos is None else prepend_bos,
        "exclude_special_tokens": c.skip_special_tokens,
        "dataset_path": dataset_path or c.corpus_id,
        "model_from_pretrained_kwargs": {},
        "neuronpedia_id": None,
        "itda_model_id": c.model_id,  # the exact weights (an embedded model is quantised, not the hub's)
        "itda_atoms": len(itda),
        "itda_decoder": SIGNED_DECODER,
        "itda_config": dataclasses.asdict(c),
        **(metadata or {}),
    }
    return {
        "architecture": "matching_pursuit",
        "d_in": itda.d_model,
        "d_sae": 2 * len(itda),
        "dtype": dtype,
        "device": device,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "residual_threshold": 0.0,
        "max_iterations": c.k,
        "stop_on_duplicate_support": False,
        "metadata": meta,
    }


def export_saelens(
    itda: ITDA, out: str | Path, *, hook_name: str | None = None, context_size: int | None = None,
    model_name: str | None = None, prepend_bos: bool | None = None, dataset_path: str | None = None,
    dtype: str = "float32", device: str = "cpu", metadata: dict[str, Any] | None = None, overwrite: bool = False,
) -> Path:
    """Write ``out/`` (cfg.json + sae_weights.safetensors) for ``sae_lens.SAE.load_from_disk``: a matching-pursuit
    SAE whose encode gives this dictionary's k-step codes (signed via ``[D; -D]``); returns ``out``. A non-empty
    ``out`` is replaced only with ``overwrite``, and only once the new folder is complete."""
    _check(itda, dtype)
    out = Path(out)
    cfg = saelens_config(itda, hook_name=hook_name, context_size=context_size, model_name=model_name,
                         prepend_bos=prepend_bos, dataset_path=dataset_path, dtype=dtype, device=device,
                         metadata=metadata)
    try:
        text = json.dumps(cfg, indent=2, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ITDAError(f"the SAELens metadata cannot be written as JSON ({err})") from err
    atoms = itda.atoms.detach().to(device="cpu", dtype=DTYPES[dtype])
    tensors = {"W_dec": torch.cat([atoms, -atoms]).contiguous(), "b_dec": torch.zeros(itda.d_model, dtype=atoms.dtype)}
    if out.exists() and not out.is_dir() and not overwrite:
        raise ITDAError(f"{out} is a file; give the SAELens export a folder")
    check_out(out, overwrite)
    try:
        with staged(out, overwrite) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / CFG_FILE).write_text(text, encoding="utf-8")
    except (OSError, SafetensorError) as err:  # safetensors reports I/O errors as its own error type
        raise ITDAError(f"cannot write the SAELens export to {out} ({getattr(err, 'strerror', None) or err})") from err
    return out


def itda_codes_to_saelens(indices: Tensor, coefficients: Tensor, n_atoms: int) -> Tensor:
    """The SAELens activations [n, 2m] that ITDA codes [n, k] correspond to (each latent's values summed, a
    negative coefficient on atom j as latent m + j), to compare with the exported SAE's encode."""
    if indices.shape != coefficients.shape or indices.dim() != 2:
        raise ITDAError(f"indices {tuple(indices.shape)} and coefficients {tuple(coefficients.shape)} must be [n, k]")
    latent = torch.where(coefficients < 0, indices + n_atoms, indices).long()
    acts = torch.zeros(indices.shape[0], 2 * n_atoms, dtype=coefficients.dtype, device=coefficients.device)
    return acts.scatter_add_(1, latent, coefficients.abs())


def fold_saelens_codes(feature_acts: Tensor) -> Tensor:
    """Signed dense ITDA codes [..., m] from the exported SAE's activations [..., 2m]: latent j minus latent m + j."""
    if feature_acts.dim() < 1 or feature_acts.shape[-1] % 2:
        raise ITDAError(f"SAELens activations of shape {tuple(feature_acts.shape)} are not [..., 2m] of an ITDA export")
    m = feature_acts.shape[-1] // 2
    return feature_acts[..., :m] - feature_acts[..., m:]


def saelens_codes_to_itda(feature_acts: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
    """ITDA codes (indices [n, k], coefficients [n, k]) from the exported SAE's activations [n, 2m], so that
    ``ITDA.decode`` and comparisons work on them: each atom's signed total once, largest |coefficient| first
    (ties: lowest index), then (0, 0.0). SAELens keeps neither the step order nor repeats, so these are not
    MP's per-step columns; their reconstruction is. ``k`` defaults to the most atoms a row uses."""
    dense = fold_saelens_codes(feature_acts)
    if dense.dim() != 2:
        raise ITDAError(f"SAELens activations must be [n, 2m] here, got shape {tuple(feature_acts.shape)}")
    n, m = dense.shape
    width = int((dense != 0).sum(dim=1).max()) if k is None and n else (k or 0)
    order = torch.sort(dense.abs(), dim=1, descending=True, stable=True).indices[:, : min(width, m)]
    coef = dense.gather(1, order)
    idx = torch.where(coef != 0, order, torch.zeros_like(order))
    if width > m:  # more columns than atoms: pad with (0, 0.0)
        pad = width - m
        idx = torch.cat([idx, idx.new_zeros(n, pad)], dim=1)
        coef = torch.cat([coef, coef.new_zeros(n, pad)], dim=1)
    return idx, coef


def itda_config_of(sae_metadata: Any) -> ITDAConfig:
    """The ITDA config an export recorded, from a loaded SAE's ``cfg.metadata`` (or the cfg.json's dict)."""
    data = sae_metadata.get("itda_config") if hasattr(sae_metadata, "get") else None
    if not isinstance(data, dict):
        raise ITDAError("this SAELens config holds no 'itda_config'; it was not written by export_saelens")
    return ITDAConfig.from_dict(data)
