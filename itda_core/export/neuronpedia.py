"""Neuronpedia export: one stored dictionary as a Neuronpedia "source", its atoms as features in JSON batches.

Two layouts of ``out/batch-<i>.json`` (plus ``out/itda-export.json``, what was written and how), each read in
the real code:

- ``format="api"`` (default): the payload that the ``neuronpedia`` client (1.2.1) posts to a Neuronpedia
  instance, ``FeatureRequest.upload_batch`` (``neuronpedia/requests/feature_request.py``):
  ``{"modelId", "source", "features": [{"index", "density", "activations": [{"tokens", "values",
  "quantileMax", "quantileMin", "quantileFraction"}], "explanations": [{"text", "methodName", "modelName"}],
  "topLogits": [{"token", "value"}] | null, "bottomLogits": ...}]}``, at most ``MAX_FEATURES_PER_BATCH``
  (128) features a batch; the client's dataclasses ``np_feature.Feature`` / ``Logit``,
  ``np_activation.Activation`` and ``np_explanation.Explanation`` rebuild it exactly (the tests do). The
  source id is ``<layer>-<source_set>``, as ``SourceSet.get_source_for_layer_number`` expects.
- ``format="saedashboard"``: SAEDashboard's (0.8.0) ``NeuronpediaDashboardBatch.to_dict()``
  (``sae_dashboard/neuronpedia/neuronpedia_dashboard.py``, written as ``batch-<i>.json`` by
  ``neuronpedia_runner.py``), what Neuronpedia's ``convert-saedashboard-to-neuronpedia-export.py`` turns into
  an instance's import folder: ``feature_index``, ``frac_nonzero``, ``pos_str`` / ``pos_values``,
  ``neg_str`` / ``neg_values``, ``freq_hist_data_bar_values`` / ``_heights``, ``activations`` with
  ``bin_min``, ``bin_max``, ``bin_contains``, ``tokens``, ``values``, ``qualifying_token_index`` (top contexts
  as its "TOP ACTIVATIONS" group: bins -1, max, -1) and every other key empty. It has no explanation field:
  the source texts go to ``out/explanations.json`` instead.

Where each field comes from: index = ``atoms.atom``; density (``frac_nonzero``) = ``atom_stats.density``
(n_active / ``index_runs.n_tokens``, held-out tokens); activations = ``atom_top_contexts`` (the ``top_n``
best; with ``quantiles`` also the ``atom_quantiles`` samples, quantileMin/Max = the bin's smallest/largest
coefficient and quantileFraction = bin_count / n_active), each as the document's tokens (``tokens`` +
``documents``: a token is its text with the gap before it, a special token its string) around the hit with a
value per token = the atom's coefficient there from ``codes`` (0 where its code does not use the atom; without
stored codes only the hit's own position carries its value); explanation = "source: " + the atom's training
context (``atoms`` provenance, ``tokens``, ``documents``) with its token marked «like this»; top/bottom logits
= :func:`itda_core.decompose.logit_effect` of ``atoms.vector`` (unit atom scaled to sqrt(d_model), final norm,
unembedding, centred: the dashboard's numbers), which needs the model: without one, or for an encoder, they
are null and ``itda-export.json`` says why; histogram = ``atom_histograms`` (bin midpoints and counts). Values
are the signed ITDA coefficients.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from itda_core.decompose import logit_effect
from itda_core.errors import ITDAError
from itda_core.export.folders import check_out, staged
from itda_core.store.connection import connect_readonly
from itda_core.store.contexts import documents_with_tokens, render_contexts
from itda_core.store.exports import atom_rows, code_arrays, export_source, histogram_rows, quantile_rows, top_hit_rows
from itda_core.store.queries import atom_vectors
from itda_core.tokenize import token_pieces

if TYPE_CHECKING:
    from itda_core.models import LoadedModel

MAX_BATCH = 128  # neuronpedia.requests.feature_request.MAX_FEATURES_PER_BATCH
METADATA_FILE = "itda-export.json"
EXPLANATION_METHOD = "itda-source"
Format = Literal["api", "saedashboard"]


@dataclass
class _Context:
    """One activation record: a window's tokens, the atom's value at each, which token is the hit, its bin."""

    tokens: list[str]
    values: list[float]
    target: int
    bin: tuple[float, float, float] | None = None  # (min, max, fraction) of a quantile sample; None for a top hit


@dataclass
class _Feature:
    """What both layouts say of one atom."""

    index: int
    density: float
    max_coef: float
    explanation: str
    contexts: list[_Context] = field(default_factory=list)
    top: list[tuple[str, float]] | None = None
    bottom: list[tuple[str, float]] | None = None
    hist: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    vector: list[float] = field(default_factory=list)


def export_neuronpedia(
    store: str | Path,
    dict_id: int,
    out: str | Path,
    *,
    top_n: int = 20,
    quantiles: bool = False,
    window: int | None = None,
    model: LoadedModel | Callable[[str], LoadedModel] | None = None,
    n_logits: int = 10,
    neuronpedia_model: str | None = None,
    source_set: str = "itda-res",
    format: Format = "api",
    batch_size: int = MAX_BATCH,
    include_vectors: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write dictionary ``dict_id`` of ``store`` as Neuronpedia feature batches in ``out`` (see the module
    docstring); ``model`` (a LoadedModel, or a loader called with the stored model name) adds the logits,
    ``window`` cuts contexts to that many tokens each side (None: the whole document, as Neuronpedia shows
    prompts), ``quantiles`` adds the quantile samples to the top contexts. Returns ``out``."""
    out = Path(out)
    if format not in ("api", "saedashboard"):
        raise ITDAError(f"unknown Neuronpedia format {format!r}: use 'api' or 'saedashboard'")
    if not 1 <= batch_size <= (MAX_BATCH if format == "api" else 10**9):
        raise ITDAError(f"batch_size must be 1-{MAX_BATCH} (the most Neuronpedia's upload-batch takes)")
    if top_n < 1 or n_logits < 1:
        raise ITDAError("top_n and n_logits must be >= 1")
    check_out(out, overwrite)
    src, features, vectors = _read(Path(store), int(dict_id), top_n, quantiles, window, format,
                                   include_vectors or model is not None)
    if include_vectors:
        for f in features:
            f.vector = [float(v) for v in vectors[f.index]]
    logits_note = _add_logits(features, vectors, src, model, n_logits)
    np_model = neuronpedia_model or Path(str(src["model_name"])).name.lower()
    source = f"{src['layer']}-{source_set}"
    batches = [features[i : i + batch_size] for i in range(0, len(features), batch_size)]
    with staged(out, overwrite) as tmp:
        for i, batch in enumerate(batches):
            if format == "api":
                payload = {"modelId": np_model, "source": source, "features": [_api(f) for f in batch]}
            else:
                payload = {"model_id": np_model, "layer": int(src["layer"]), "sae_set": source_set,
                           "sae_id_suffix": None, "features": [_saedashboard(f, src) for f in batch]}
            _write_json(tmp / f"batch-{i}.json", payload)
        if format == "saedashboard":
            _write_json(tmp / "explanations.json", [{"index": f.index, "text": f.explanation,
                                                     "methodName": EXPLANATION_METHOD} for f in features])
        _write_json(tmp / METADATA_FILE, {
            "format": "neuronpedia upload-batch (neuronpedia 1.2.1)" if format == "api"
            else "SAEDashboard NeuronpediaDashboardBatch (sae-dashboard 0.8.0)",
            "modelId": np_model, "source": source, "source_set": source_set, "dict_id": int(src["dict_id"]),
            "model_name": src["model_name"], "model_id": src["model_id"], "layer": int(src["layer"]),
            "site": src["site"], "n_features": len(features), "n_batches": len(batches), "logits": logits_note,
            "density": f"n_active / {int(src['index_tokens'])} held-out tokens (atom_stats.density)",
            "values": "signed ITDA coefficients (codes); "
            + ("every token of a window" if src["codes_kept"] else "only the hit's own token (no codes stored)"),
            "explanations": f"'source: ' + the atom's training context, token marked «»; method {EXPLANATION_METHOD}",
        })
    return out


def _read(
    store: Path, dict_id: int, top_n: int, quantiles: bool, window: int | None, format: Format, vectors: bool
) -> tuple[dict[str, Any], list[_Feature], np.ndarray]:
    """The dictionary's row, every atom's feature without logits and (with ``vectors``) the atom vectors,
    read in one short connection."""
    with connect_readonly(store) as con:
        src = export_source(con, dict_id)
        if src is None:
            raise ITDAError(f"no dictionary {dict_id} in {store}")
        if not src["indexed"]:
            raise ITDAError(f"dictionary {dict_id} has no held-out index (density, contexts): run itda index first")
        atoms = atom_rows(con, dict_id)
        tops = top_hit_rows(con, dict_id, top_n)
        qs = quantile_rows(con, dict_id) if quantiles else tops.iloc[:0]
        hist = histogram_rows(con, dict_id) if format == "saedashboard" else None
        hit_docs = set(tops["doc_id"].tolist()) | set(qs["doc_id"].tolist())
        keys = (src["corpus_id"], src["tokenizer_id"], int(src["seq_len"]))
        texts, by_doc = documents_with_tokens(con, *keys, hit_docs)
        codes = code_arrays(con, dict_id, hit_docs) if src["codes_kept"] and hit_docs else None
        sources = render_contexts(con, dict_id, atoms[["doc_id", "position"]], window=8)
        vecs = atom_vectors(con, dict_id) if vectors else np.zeros((0, 0), dtype=np.float32)
    by_atom = _codes_by_atom(codes)
    features = []
    for i, row in enumerate(atoms.itertuples(index=False)):
        atom = int(row.atom)
        ctx = sources.iloc[i]
        features.append(_Feature(
            index=atom, density=float(row.density), max_coef=float(row.max_coef) if pd.notna(row.max_coef) else 0.0,
            explanation=_explanation(ctx["before"], ctx["token"] if ctx["target_index"] >= 0 else str(row.token_text),
                                     ctx["after"]),
        ))
    n_active = dict(zip(atoms["atom"].tolist(), atoms["n_active"].tolist(), strict=True))
    by_index = {f.index: f for f in features}
    for hits, is_top in ((tops, True), (qs, False)):
        for h in hits.itertuples(index=False):
            atom = int(h.atom)
            made = _context(texts, by_doc, int(h.doc_id), int(h.position), float(h.coef), by_atom.get(atom), window)
            if made is None:
                continue
            if not is_top:
                made.bin = (float(h.bin_lo), float(h.bin_hi), float(h.bin_count) / max(1, int(n_active[atom])))
            by_index[atom].contexts.append(made)
    if hist is not None:
        for atom, group in hist.groupby("atom"):
            mids = ((group["lo"] + group["hi"]) / 2).astype(float).tolist()
            by_index[int(atom)].hist = (mids, group["count"].astype(float).tolist())
    return src, features, vecs


def _explanation(before: str, token: str, after: str) -> str:
    """'source: ' + the source context on one line, the token marked «like this» (its leading space outside)."""
    core = token.strip() or repr(token)[1:-1]
    lead = token[: len(token) - len(token.lstrip())]
    return "source: " + " ".join(f"{before}{lead}«{core}»{after}".split())


def _codes_by_atom(codes: dict[str, np.ndarray] | None) -> dict[int, dict[tuple[int, int], float]]:
    """``{atom: {(doc_id, position): coef}}`` of the stored codes (sorted by atom)."""
    if codes is None or not len(codes["atom"]):
        return {}
    atoms = codes["atom"]
    bounds = [0, *(np.flatnonzero(np.diff(atoms)) + 1).tolist(), len(atoms)]
    out = {}
    for lo, hi in itertools.pairwise(bounds):
        keys = zip(codes["doc_id"][lo:hi].tolist(), codes["position"][lo:hi].tolist(), strict=True)
        out[int(atoms[lo])] = dict(zip(keys, codes["coef"][lo:hi].tolist(), strict=True))
    return out


def _context(
    texts: dict[int, str], by_doc: dict[int, dict[int, tuple[str, int, int]]], doc_id: int, pos: int, coef: float,
    coefs: dict[tuple[int, int], float] | None, window: int | None,
) -> _Context | None:
    """The hit's window: token texts (gap included), the atom's value at each token, the hit's index."""
    tokens = by_doc.get(doc_id, {})
    if pos not in tokens:
        return None
    positions = sorted(tokens) if window is None else [p for p in range(pos - window, pos + window + 1) if p in tokens]
    strs = [tokens[p][0] for p in positions]
    spans = [(tokens[p][1], tokens[p][2]) for p in positions]
    pieces = [gap + piece for gap, piece, _ in token_pieces(texts.get(doc_id, ""), spans, strs)]
    if coefs is None:
        values = [coef if p == pos else 0.0 for p in positions]
    else:
        values = [coef if p == pos else float(coefs.get((doc_id, p), 0.0)) for p in positions]
    return _Context(pieces, values, positions.index(pos))


def _loaded(model: Any, name: str) -> LoadedModel:
    """The model itself, or what a loader returns for the stored model name."""
    from itda_core.models import LoadedModel

    return model if isinstance(model, LoadedModel) else model(name)


def _add_logits(features: list[_Feature], vectors: np.ndarray, src: dict[str, Any], model: Any, top: int) -> str:
    """Top and bottom logits of every atom from the model's unembedding; returns what the metadata says."""
    if model is None:
        return "omitted: no model given (pass model= to add top/bottom logits)"
    loaded = _loaded(model, str(src["model_name"]))
    if loaded.model_id != src["model_id"]:
        raise ITDAError(f"model {loaded.model_id} is not dictionary {src['dict_id']}'s model {src['model_id']}")
    names: dict[int, str] = {}

    def text(ids: list[int]) -> list[str]:
        """Each token id as the text it decodes to (cached)."""
        for i in ids:
            if i not in names:
                names[i] = loaded.tokenizer.decode([i])
        return [names[i] for i in ids]

    effect = None
    for f in features:
        effect = logit_effect(loaded, vectors[f.index].copy(), top=top)
        if effect is None:
            return f"omitted: {loaded.name} has no LM head ({loaded.family})"
        for key, frame in (("top", effect["promoted"]), ("bottom", effect["suppressed"])):
            pairs = list(zip(text(frame["token_id"].tolist()), frame["logit"].astype(float).tolist(), strict=True))
            setattr(f, key, pairs)
    how = "final norm, " if effect is not None and effect["normed"] else ""
    return f"included: unit atom x sqrt(d_model) through {how}the unembedding of {loaded.name}, centred logits"


def _api(f: _Feature) -> dict[str, Any]:
    """A feature as ``FeatureRequest.upload_batch`` sends it."""
    return {
        "index": f.index,
        "density": f.density,
        "activations": [
            {"tokens": c.tokens, "values": c.values, "quantileMax": c.bin[1] if c.bin else None,
             "quantileMin": c.bin[0] if c.bin else None, "quantileFraction": c.bin[2] if c.bin else None}
            for c in f.contexts
        ],
        "explanations": [{"text": f.explanation, "methodName": EXPLANATION_METHOD, "modelName": None}],
        "topLogits": None if f.top is None else [{"token": t, "value": v} for t, v in f.top],
        "bottomLogits": None if f.bottom is None else [{"token": t, "value": v} for t, v in f.bottom],
    }


def _saedashboard(f: _Feature, src: dict[str, Any]) -> dict[str, Any]:
    """A feature as ``NeuronpediaDashboardFeature.to_dict`` writes it (unknown tables left empty)."""
    empty = ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
             "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
             "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson")
    return {
        "feature_index": f.index,
        **{key: [] for key in empty},
        "neg_str": [t for t, _ in f.bottom or []], "neg_values": [v for _, v in f.bottom or []],
        "pos_str": [t for t, _ in f.top or []], "pos_values": [v for _, v in f.top or []],
        "frac_nonzero": f.density,
        "freq_hist_data_bar_values": f.hist[0], "freq_hist_data_bar_heights": f.hist[1],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "n_prompts_total": int(src["index_documents"]), "n_tokens_in_prompt": int(src["seq_len"]),
        "dataset": str(src["corpus_id"]), "decoder_weights_dist": [],
        "activations": [
            {"bin_min": c.bin[0] if c.bin else -1, "bin_max": c.bin[1] if c.bin else f.max_coef,
             "bin_contains": c.bin[2] if c.bin else -1, "tokens": c.tokens, "values": c.values,
             "qualifying_token_index": c.target}
            for c in f.contexts
        ],
        "vector": f.vector,
    }


def _write_json(path: Path, data: Any) -> None:
    """One JSON file (UTF-8, no NaN: Neuronpedia's importers are strict JSON)."""
    path.write_text(json.dumps(data, ensure_ascii=False, allow_nan=False), encoding="utf-8")
