"""delphi export: one dictionary's held-out codes as delphi's latent cache, so delphi explains and scores atoms.

The layout is the one eai-delphi 0.1.3 writes and reads (``delphi/latents/cache.py``,
``LatentCache.save_splits`` / ``save_config``; ``delphi/latents/loader.py``, ``LatentDataset._edges`` /
``_build`` and ``TensorBuffer.load``): ``out`` is the ``latents`` folder, holding one folder per module
(delphi's hookpoint: the module path of block ``layer`` in ``AutoModel``, ``layers.L`` for Llama / Gemma /
Qwen, ``h.L`` for GPT-2, ``encoder.layer.L`` for BERT; that block's output is our site
``blocks.L.hook_resid_post``), and nothing else (delphi lists the folder's entries as modules). In it:

- ``{start}_{end}.safetensors`` for each latent range, ``end`` inclusive, the ranges cut at
  ``torch.linspace(0, width, n_splits + 1).long()`` like ``_generate_split_indices``; each file holds
  ``locations`` [N, 3] (row of ``tokens``, position in the row, latent index minus ``start``; uint16 when the
  rows and latent offsets are below 2**16, else uint32, as delphi decides), ``activations`` [N] (float16, as
  delphi writes them) and ``tokens`` [rows, ctx_len] int64 (every file has them all, like delphi's);
- ``config.json``: delphi's ``CacheConfig`` keys (``dataset_repo``, ``dataset_split``, ``dataset_name``,
  ``dataset_column``, ``batch_size``, ``cache_ctx_len``, ``n_tokens``, ``n_splits``) plus ``model_name``
  (the tokenizer ``LatentDataset`` loads when given none), and ``itda`` with what delphi does not know: the
  dictionary, sign handling and where each held-out document lies in ``tokens``.

Sources: the ``codes`` table (the raw sparse codes of the held-out tokens ``itda index`` encoded) and the
``tokens`` table (token ids of the documents those codes come from).

Signs. delphi's cache keeps any latent with ``|x| > 1e-5`` but everything after assumes activations >= 0:
the firing counts count ``x > 0``, ``LatentDataset`` counts every stored entry as active
(``per_token_frequency``), windows are ranked by their maximum and ``normalize_activations`` clamps to
[0, 10], so a negative coefficient is an "activating" example with nothing highlighted and its context is
never a non-activating one. Hence ``signs``: ``"split"`` (default) makes atom j with coef > 0 latent j and
with coef < 0 latent m + j with value |coef| (width 2m: every statistic delphi computes is then right, and
nothing is lost; SAELens's export uses the same ``[D; -D]`` mapping); ``"positive"`` keeps coef > 0 only
(width m, negatives dropped); ``"signed"`` writes the coefficients as they are (width m; delphi's statistics
then count negatives as activity). Entries with ``|coef| <= min_abs`` (default 1e-5, delphi's own cut) are
left out.

Layout. delphi's denominator is ``rows * ctx_len``, so ``layout="packed"`` (default, like delphi's own
tokenised data) concatenates the encoded tokens of the documents (each up to its last coded position; special
tokens left out when the dictionary skipped them, as ``itda index`` did) into rows of ``ctx_len`` (default
the dictionary's ``seq_len``), padding only the last row: ``n_tokens`` is then the index's token count plus
that padding. ``layout="documents"`` gives one row per document with columns = positions (width: the longest
document rounded up to a multiple of 32, delphi's default example length), clearer but padded.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.numpy import save_file

from itda_core.errors import ITDAError
from itda_core.export.folders import check_out, staged
from itda_core.store.connection import connect_readonly
from itda_core.store.exports import code_arrays, export_source, token_arrays

Signs = Literal["split", "positive", "signed"]
Layout = Literal["packed", "documents"]
# where AutoModel keeps its blocks, by config.model_type (delphi's hookpoints are paths in AutoModel)
BLOCKS = {"gpt2": "h", "gptj": "h", "bloom": "h", "falcon": "h", "bert": "encoder.layer", "roberta": "encoder.layer",
          "xlm-roberta": "encoder.layer", "electra": "encoder.layer", "distilbert": "transformer.layer"}
EXAMPLE_CTX_LEN = 32  # delphi's ConstructorConfig.example_ctx_len: a row's length should be a multiple of it
FLOAT16_MAX = 65504.0


def delphi_module(architecture: str | None, layer: int) -> str:
    """delphi's hookpoint for the output of block ``layer`` (the residual stream after it)."""
    return f"{BLOCKS.get(str(architecture), 'layers')}.{int(layer)}"


def hub_model_name(model_id: str, model_name: str) -> str:
    """The name AutoTokenizer loads: a hub model's id, an embedded model's original on the hub, else ours."""
    from itda_core.models.embedded import EMBEDDED_MODELS

    if model_id.startswith("hf:"):
        return model_id[3:].rsplit("@", 1)[0]
    embedded = EMBEDDED_MODELS.get(model_name)
    return embedded.hf_name if embedded is not None and model_id.startswith(f"{embedded.alias}@") else model_name


def export_delphi(
    store: str | Path,
    dict_id: int,
    out: str | Path,
    *,
    signs: Signs = "split",
    layout: Layout = "packed",
    ctx_len: int | None = None,
    n_splits: int = 5,
    min_abs: float = 1e-5,
    activation_dtype: Literal["float16", "float32"] = "float16",
    module: str | None = None,
    model_name: str | None = None,
    pad_token_id: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write dictionary ``dict_id``'s held-out codes as delphi's latent cache in ``out`` (the ``latents``
    folder; see the module docstring); returns the module folder ``out/<module>``."""
    out = Path(out)
    if signs not in ("split", "positive", "signed") or layout not in ("packed", "documents"):
        raise ITDAError(f"signs must be split, positive or signed and layout packed or documents, "
                        f"not {signs!r} / {layout!r}")
    if n_splits < 1 or (ctx_len is not None and ctx_len < 1) or activation_dtype not in ("float16", "float32"):
        raise ITDAError("n_splits and ctx_len must be >= 1 and activation_dtype float16 or float32")
    check_out(out, overwrite)
    with connect_readonly(Path(store)) as con:
        src = export_source(con, int(dict_id))
        if src is None:
            raise ITDAError(f"no dictionary {dict_id} in {store}")
        if not src["indexed"]:
            raise ITDAError(f"dictionary {dict_id} has no held-out index (no codes): run itda index first")
        if not src["codes_kept"]:
            raise ITDAError(f"dictionary {dict_id} was indexed without its codes (--no-keep-codes): "
                            "run itda index --reindex first")
        codes = code_arrays(con, int(dict_id))
        docs = np.unique(codes["doc_id"])
        toks = token_arrays(con, src["corpus_id"], src["tokenizer_id"], int(src["seq_len"]), docs.tolist())
    if not len(docs):
        raise ITDAError(f"dictionary {dict_id}'s index holds no codes: run itda index --reindex first")
    grid = _place(toks, codes, layout, ctx_len or (int(src["seq_len"]) if layout == "packed" else None),
                  bool(src["skip_special_tokens"]))
    pad = pad_token_id if pad_token_id is not None else _pad_id(toks)
    tokens = np.where(grid["filled"], grid["tokens"], pad).astype(np.int64)
    rows, cols = grid["code_row"], grid["code_col"]
    m = int(src["n_atoms"])
    keep, latent, act, width = _latents(codes["atom"], codes["coef"], m, signs, min_abs)
    rows, cols = rows[keep], cols[keep]
    if activation_dtype == "float16" and len(act) and float(np.abs(act).max()) > FLOAT16_MAX:
        raise ITDAError(f"a coefficient of dictionary {dict_id} exceeds float16's range: "
                        "pass activation_dtype='float32'")
    order = np.lexsort((latent, cols, rows))  # torch.nonzero's order: row, position, latent
    locations = np.stack([rows, cols, latent], axis=1)[order]
    act = act[order].astype(activation_dtype)
    name = module or delphi_module(src["architecture"], int(src["layer"]))
    bounds = torch.linspace(0, width, steps=min(n_splits, width) + 1).long().tolist()
    config = {
        "dataset_repo": f"itda:{src['corpus_id']}", "dataset_split": "held_out", "dataset_name": "",
        "dataset_column": "text", "batch_size": int(tokens.shape[0]), "cache_ctx_len": int(tokens.shape[1]),
        "n_tokens": int(tokens.size), "n_splits": len(bounds) - 1,
        "model_name": model_name or hub_model_name(str(src["model_id"]), str(src["model_name"])),
        "itda": {
            "dict_id": int(src["dict_id"]), "model_id": src["model_id"], "layer": int(src["layer"]),
            "site": src["site"], "n_atoms": m, "width": width, "signs": signs,
            "latents": {"split": "latent j < m: atom j where coef > 0; latent m + j: atom j where coef < 0, |coef|",
                        "positive": "latent j: atom j where coef > 0 (negative codes dropped)",
                        "signed": "latent j: atom j, signed coefficient"}[signs],
            "min_abs": min_abs, "activation_dtype": activation_dtype, "layout": layout, "pad_token_id": int(pad),
            "n_tokens_index": int(src["index_tokens"]), "n_tokens_cached": int(grid["filled"].sum()),
            "n_entries": len(act),
            "documents": "[doc_id, offset, n] per document: its tokens are tokens.flatten()[offset:offset + n]"
            + (", special tokens left out" if layout == "packed" and src["skip_special_tokens"] else ""),
            "document_offsets": grid["documents"],
        },
    }
    with staged(out, overwrite) as tmp:
        folder = tmp / name
        folder.mkdir(parents=True)
        for start, stop in itertools.pairwise(bounds):
            mask = (locations[:, 2] >= start) & (locations[:, 2] < stop)
            part = locations[mask].copy()
            part[:, 2] -= start
            small = not len(part) or (part[:, 2].max() < 2**16 and part[:, 0].max() < 2**16)
            save_file({"locations": np.ascontiguousarray(part.astype(np.uint16 if small else np.uint32)),
                       "activations": np.ascontiguousarray(act[mask]), "tokens": tokens},
                      str(folder / f"{start}_{stop - 1}.safetensors"))
        (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out / name


def _latents(
    atoms: np.ndarray, coefs: np.ndarray, m: int, signs: Signs, min_abs: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Which codes are kept (|coef| > min_abs; coef > 0 too for "positive"), their latent indices and
    activations, and the width."""
    keep = np.abs(coefs) > min_abs
    if signs == "positive":
        keep &= coefs > 0
    atoms, coefs = atoms[keep], coefs[keep]
    if signs == "split":
        return keep, atoms + m * (coefs < 0), np.abs(coefs), 2 * m
    return keep, atoms, coefs, m


def _pad_id(toks: dict[str, np.ndarray]) -> int:
    """The padding token: the documents' most common special token (BOS, CLS), else 0."""
    special = toks["token_id"][toks["special"]]
    if not len(special):
        return 0
    values, counts = np.unique(special, return_counts=True)
    return int(values[np.argmax(counts)])


def _place(
    toks: dict[str, np.ndarray], codes: dict[str, np.ndarray], layout: Layout, ctx_len: int | None, skip: bool
) -> dict[str, Any]:
    """Where each token and each code goes in the [rows, ctx_len] token grid, and each document's offset."""
    doc, pos = toks["doc_id"], toks["position"]
    doc_ids, doc_index = np.unique(doc, return_inverse=True)
    last = np.full(len(doc_ids), -1, dtype=np.int64)  # a document's last coded position: where encoding stopped
    np.maximum.at(last, np.minimum(np.searchsorted(doc_ids, codes["doc_id"]), len(doc_ids) - 1), codes["position"])
    longest = int(pos.max(initial=0)) + 1
    if layout == "packed":
        kept = (pos <= last[doc_index]) & ~(toks["special"] & skip)
        flat = np.cumsum(kept) - 1
        width = int(ctx_len or longest)
        n_rows = max(1, -(-int(kept.sum()) // width))
    else:
        kept = np.ones(len(pos), dtype=bool)
        width = int(ctx_len or -(-longest // EXAMPLE_CTX_LEN) * EXAMPLE_CTX_LEN)
        if longest > width:
            raise ITDAError(f"ctx_len {width} is shorter than the longest document ({longest} tokens)")
        n_rows = len(doc_ids)
        flat = doc_index * width + pos
    grid = np.zeros(n_rows * width, dtype=np.int64)
    filled = np.zeros(n_rows * width, dtype=bool)
    grid[flat[kept]], filled[flat[kept]] = toks["token_id"][kept], True
    scale = max(longest, int(codes["position"].max(initial=0)) + 1)
    keys, code_keys = doc * scale + pos, codes["doc_id"] * scale + codes["position"]
    at = np.minimum(np.searchsorted(keys, code_keys), len(keys) - 1)
    if (keys[at] != code_keys).any() or not kept[at].all():
        raise ITDAError("the store's codes name tokens its tokens table lacks: run itda index --reindex")
    counts = np.bincount(doc_index[kept], minlength=len(doc_ids))
    first_docs, first = np.unique(doc[kept], return_index=True)
    offsets = dict(zip(first_docs.tolist(), flat[kept][first].tolist(), strict=True))
    return {"tokens": grid.reshape(n_rows, width), "filled": filled.reshape(n_rows, width),
            "code_row": flat[at] // width, "code_col": flat[at] % width,
            "documents": [[int(d), offsets.get(int(d), 0), int(c)] for d, c in zip(doc_ids, counts, strict=True)]}
