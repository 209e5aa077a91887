"""The layer-matching benchmark (Kornblith et al. 2019), as the ITDA paper runs it.

For architecturally identical models trained from different seeds, layer i of one model should be most
similar to layer i of the other. For an ordered pair of models (A, B) and a layer i of A, the prediction is
``argmax_j S(A_i, B_j)`` and it is right when it equals i.

Scoring (both scores are always computed and reported; ``LayerMatchingConfig.protocol`` only picks which one
is the headline ``accuracy``):

* ``authors`` (default; the released code, ``layer_similarity.py``): layers 1..n-1 (layer 0 is not scored),
  all M x M ordered model pairs **including each model against itself**, right predictions divided by
  M * M * (L - 1); a tie for the maximum goes to the lowest layer (numpy's argmax). A model against itself
  almost always scores 1, so this score is about (M - 1) / M * cross + 1 / M.
* ``cross``: the same layers and tie rule, only the M * (M - 1) pairs of different models.

``ties="wrong"`` makes a tied row (and a NaN row) count as wrong instead, so that a measure that cannot tell
layers apart scores 0 rather than 1 / (L - 1).

Every model is run once over the same prompts: ITDA dictionaries for every scored layer are built from that
pass (Jaccard), and the first ``baseline_tokens`` activations of the same pass feed the baselines (linear CKA
both ways, SVCCA, relative representations, linear-regression R^2 with and without intercept), so all
measures see the same text. Options for the Jaccard call (``jaccard_matrix``) go in
``LayerMatchingConfig.jaccard_options``; :func:`itda_core.similarity.layer_measures.jaccard_matrices` is the
one place they are used.

This module is the driver (:func:`run_layer_matching`, :func:`score_runs`) and its result; one model's pass is
in :mod:`~itda_core.similarity.layer_runs`, every measure's matrices in
:mod:`~itda_core.similarity.layer_measures`, the scoring in :mod:`~itda_core.similarity.layer_scoring`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from itda_core.config.similarity import (  # the options live apart from torch (the CLI's help reads them)
    ALL_MEASURES,
    LAYER_MATCHING_MEASURES,
    PROTOCOLS,
    LayerMatchingConfig,
)
from itda_core.errors import ITDAError
from itda_core.similarity.layer_measures import LINEAR, baseline_matrices, jaccard_matrices, linear_matrices
from itda_core.similarity.layer_runs import ModelRun, benchmark_corpus, run_model
from itda_core.similarity.layer_scoring import argmax_layers, matching_accuracy, score_matrices

__all__ = [
    "ALL_MEASURES",
    "LAYER_MATCHING_MEASURES",
    "PAPER_ACCURACY",
    "PAPER_MODELS",
    "PROTOCOLS",
    "LayerMatchingConfig",
    "LayerMatchingResult",
    "ModelRun",
    "argmax_layers",
    "chosen_layers",
    "default_layers",
    "format_table",
    "matching_accuracy",
    "run_layer_matching",
    "run_model",
    "score_matrices",
    "score_runs",
]

# The paper's five GPT-2 small seeds (Stanford CRFM Mistral project), used with --paper-models.
PAPER_MODELS = [
    "stanford-crfm/alias-gpt2-small-x21",
    "stanford-crfm/battlestar-gpt2-small-x49",
    "stanford-crfm/caprica-gpt2-small-x81",
    "stanford-crfm/darkmatter-gpt2-small-x343",
    "stanford-crfm/expanse-gpt2-small-x777",
]
# Paper's accuracies, 5 seeds each of GPT-2 small / medium, beside the variant its code computed: its CKA is
# the feature-normalised one and its linear regression has no intercept (layer_similarity.py).
PAPER_ACCURACY: dict[str, tuple[float, float]] = {
    "r2_no_intercept": (0.16, 0.07),
    "svcca": (0.50, 0.44),
    "cka_normalised": (0.69, 0.61),
    "relative": (0.87, 0.78),
    "jaccard": (0.88, 0.89),
}
MEASURE_LABELS = {
    "jaccard": "ITDA Jaccard",
    "cka": "linear CKA (textbook)",
    "cka_normalised": "linear CKA, feature-normalised (the authors' code; the paper's figures)",
    "svcca": "SVCCA",
    "relative": "relative representations",
    "r2": "linear regression R^2, with intercept",
    "r2_no_intercept": "linear regression R^2, no intercept (the authors' code; the paper's figures)",
}


@dataclass
class LayerMatchingResult:
    """Both scores per measure, and per ordered pair (self pairs "A -> A" included) the accuracy, the
    predicted layer of every row and the similarity matrix. ``accuracy`` is the headline score of
    ``protocol``; ``accuracy_authors`` / ``accuracy_cross`` are always both there."""

    models: list[str]
    layers: list[int]
    accuracy: dict[str, float]
    accuracy_authors: dict[str, float]  # M x M ordered pairs (self included) x layers
    accuracy_cross: dict[str, float]  # M x (M - 1) ordered pairs of different models x layers
    ties: dict[str, int]  # measure -> predictions (over all M x M pairs) whose maximum was tied
    per_pair: dict[str, dict[str, float]]  # measure -> "A -> B" -> accuracy
    predictions: dict[str, dict[str, list[int | None]]]  # measure -> "A -> B" -> argmax layer per row of A
    matrices: dict[str, dict[str, list[list[float]]]]  # measure -> "A -> B" -> rows (A's layers) x cols (B's)
    atoms: dict[str, dict[int, int]]  # model -> layer -> dictionary size
    tokens: int
    baseline_tokens: int
    seconds: float
    protocol: str = "authors"
    config: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # measure -> label (Jaccard: with its variant)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not np.isfinite(v):
                return None
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            return v

        return clean(asdict(self))


def _pair_label(a: str, b: str) -> str:
    return f"{a} -> {b}"


def _labels(runs: Sequence[ModelRun]) -> list[str]:
    """Distinct labels (the model name, with #i appended where two runs share it)."""
    names = [r.name for r in runs]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def score_runs(runs: Sequence[ModelRun], layers: list[int], config: LayerMatchingConfig) -> LayerMatchingResult:
    """Both scores of every measure over the M x M ordered pairs of ``runs`` (at least two), on ``layers``."""
    config.check()
    if len(runs) < 2:
        raise ITDAError("layer matching needs at least two models")
    if len(layers) < 2:
        raise ITDAError("layer matching needs at least two layers")
    baselines = [m for m in config.measures if m != "jaccard"]
    if baselines:
        n = {len(r.token_ids) for r in runs}
        if len(n) != 1 or any(not torch.equal(runs[0].token_ids, r.token_ids) for r in runs[1:]):
            raise ITDAError("the baselines need the same tokens in every model (same tokenizer); these models "
                            "tokenise the prompts differently -- score only jaccard (--measures jaccard)")
        if next(iter(n)) < 2:
            raise ITDAError("too few tokens for the baselines")
    labels = _labels(runs)
    result = LayerMatchingResult(
        models=labels, layers=list(layers), accuracy={}, accuracy_authors={}, accuracy_cross={}, ties={},
        per_pair={}, predictions={}, matrices={}, atoms={}, tokens=0, baseline_tokens=len(runs[0].token_ids),
        seconds=0.0, protocol=config.protocol,
    )
    linear = linear_matrices(runs, layers, [m for m in config.measures if m in LINEAR])
    for measure in config.measures:
        if measure == "jaccard":
            mats, variant = jaccard_matrices(runs, layers, config.jaccard_options)
            result.labels[measure] = _jaccard_label(variant)
        elif measure in LINEAR:
            mats = linear[measure]
        else:
            mats = baseline_matrices(runs, layers, measure, config)
        result.labels.setdefault(measure, MEASURE_LABELS[measure])
        scores = score_matrices(mats, len(runs), config.ties)
        result.accuracy_authors[measure] = scores["authors"]
        result.accuracy_cross[measure] = scores["cross"]
        result.accuracy[measure] = scores[config.protocol]
        result.ties[measure] = scores["ties"]
        order = sorted(mats)
        result.per_pair[measure] = {_pair_label(labels[a], labels[b]): scores["per_pair"][(a, b)] for a, b in order}
        result.predictions[measure] = {
            _pair_label(labels[a], labels[b]): [layers[p] if p >= 0 else None for p in scores["predictions"][(a, b)]]
            for a, b in order}
        result.matrices[measure] = {_pair_label(labels[a], labels[b]): mats[(a, b)].tolist() for a, b in order}
    result.atoms = {label: {layer: len(run.dictionaries[layer]) for layer in layers}
                    for label, run in zip(labels, runs, strict=True)}
    result.tokens = int(next(iter(runs[0].dictionaries.values())).config.tokens_seen)
    cfg = asdict(config)
    cfg["measures"] = list(config.measures)
    result.config = cfg
    return result


PAPER_JACCARD = "Jaccard (raw, all atoms)"  # the paper's |A n B| / |A u B| over every atom


def _jaccard_label(variant: str) -> str:
    """'ITDA Jaccard (index, atoms; ...)', noting whether it is the variant the paper's figures used."""
    if not variant.startswith("Jaccard (") or not variant.endswith(")"):
        return f"ITDA {variant or 'Jaccard'}"
    note = "the paper's" if variant == PAPER_JACCARD else "the paper's: raw, all atoms"
    return f"ITDA {variant[:-1]}; {note})"


def default_layers(n_layers: int) -> list[int]:
    """The layers the authors score: 1..n-1 (layer 0, the first block's output, is left out)."""
    return list(range(1, n_layers))


def chosen_layers(layers: Sequence[int] | str | None, n_layers: int) -> list[int]:
    """The layers to score on a model of ``n_layers``: the given list, a spec such as '1-11' or 'all' read
    against the depth (:func:`itda_core.layers.parse_layers`, as ``itda train --layers``), or by default the
    authors' 1..n-1."""
    from itda_core.layers import parse_layers

    if layers is None:
        return default_layers(n_layers)
    return parse_layers(layers, n_layers) if isinstance(layers, str) else list(layers)


def run_layer_matching(models: Sequence[Any], config: LayerMatchingConfig | None = None,
                       corpus: Any = None) -> LayerMatchingResult:
    """The whole benchmark: ``models`` are names for :func:`load_model` (HF ids, local folders, aliases) or
    already loaded models, all of one depth; ``corpus`` defaults to ``config.corpus``/``config.split``.
    Layers default to 1..n-1 (the authors'). Models are loaded one at a time; their activations
    (baseline_tokens x d_model x layers, float32) stay."""
    from itda_core.models import LoadedModel, load_model

    config = config or LayerMatchingConfig()
    config.check()
    if len(models) < 2:
        raise ITDAError("layer matching needs at least two models")
    start = time.perf_counter()
    corpus = corpus if corpus is not None else benchmark_corpus(config)
    runs: list[ModelRun] = []
    layers: list[int] | None = None
    for spec in models:
        model = spec if isinstance(spec, LoadedModel) else load_model(str(spec), device=config.device)
        if runs and model.n_layers != runs[0].n_layers:
            raise ITDAError(f"layer matching needs models of one depth: {runs[0].name} has {runs[0].n_layers} "
                            f"layers, {model.name} has {model.n_layers}")
        if layers is None:
            layers = model.check_layers(chosen_layers(config.layers, model.n_layers))
        if len(layers) < 2:
            raise ITDAError(f"layer matching needs at least two layers (scoring {layers} of {model.n_layers}; "
                            "the default leaves out layer 0)")
        with torch.no_grad():
            runs.append(run_model(model, corpus, layers, config))
        if not isinstance(spec, LoadedModel):
            del model
    assert layers is not None
    result = score_runs(runs, layers, config)
    result.seconds = time.perf_counter() - start
    return result


def format_table(result: LayerMatchingResult) -> str:
    """Both scores per measure, best headline first, beside the paper's GPT-2 small / medium numbers (printed
    next to the variant the authors' code computed)."""
    m = len(result.models)
    n_layers = len(result.layers)
    label = {k: result.labels.get(k) or MEASURE_LABELS.get(k, k) for k in result.accuracy}
    width = max(len(v) for v in label.values()) + 2
    head = "authors" if result.protocol == "authors" else "cross"
    lines = [
        f"layer matching: {m} models, layers {result.layers[0]}-{result.layers[-1]} ({n_layers} scored); "
        f"dictionaries on {result.tokens:,} tokens, baselines on {result.baseline_tokens:,}",
        f"authors: {m} x {m} ordered pairs (self pairs included) x {n_layers} layers = {m * m * n_layers} "
        f"predictions; cross: {m} x {m - 1} pairs of different models = {m * (m - 1) * n_layers}; "
        f"ties: {'lowest layer' if result.config.get('ties', 'lowest') == 'lowest' else 'wrong'}; "
        f"sorted by {head}",
        f"{'measure':<{width}}{'authors':>9}{'cross':>8}{'paper small':>13}{'paper medium':>14}{'ties':>6}",
    ]
    for measure in sorted(result.accuracy, key=lambda k: -result.accuracy[k]):
        paper = PAPER_ACCURACY.get(measure)
        small, medium = (f"{paper[0]:.2f}", f"{paper[1]:.2f}") if paper else ("-", "-")
        lines.append(f"{label[measure]:<{width}}{result.accuracy_authors[measure]:>9.3f}"
                     f"{result.accuracy_cross[measure]:>8.3f}{small:>13}{medium:>14}{result.ties[measure]:>6}")
    lines.append("paper: 5 seeds of GPT-2 small / medium, scored the authors' way")
    return "\n".join(lines)
