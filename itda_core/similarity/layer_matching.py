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
``LayerMatchingConfig.jaccard_options``; :func:`_jaccard_matrices` is the one place they are used.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from itda_core.config.similarity import (  # the options live apart from torch (the CLI's help reads them)
    ALL_MEASURES,
    LAYER_MATCHING_MEASURES,
    PROTOCOLS,
    TIE_RULES,
    LayerMatchingConfig,
)
from itda_core.errors import ITDAError

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
class ModelRun:
    """What one model contributes: its dictionaries per layer and the baseline activations per layer."""

    name: str
    model_id: str
    n_layers: int
    dictionaries: dict[int, Any]  # layer -> ITDA
    activations: dict[int, Tensor]  # layer -> [n, d_model]
    token_ids: Tensor  # [n] token ids of the activation rows (must agree across models for the baselines)


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


def argmax_layers(matrix: np.ndarray, ties: str = "lowest") -> np.ndarray:
    """Column index of each row's maximum (rows = layers of model A, columns = the same layers of model B), or
    -1 where undecided. NaN never wins; a row without any finite value is undecided. A tie for the maximum
    goes to the lowest column with ``ties="lowest"`` (numpy's argmax, as the authors' code) and is undecided
    with ``ties="wrong"``."""
    if ties not in TIE_RULES:
        raise ITDAError(f"ties must be one of {', '.join(TIE_RULES)} (got {ties!r})")
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ITDAError(f"layer matching needs a square, non-empty matrix (got shape {m.shape})")
    filled = np.where(np.isnan(m), -np.inf, m)
    best = filled.max(axis=1, keepdims=True)
    is_best = filled == best
    pred = is_best.argmax(axis=1)  # first (lowest) column holding the maximum
    undecided = ~np.isfinite(best[:, 0])
    if ties == "wrong":
        undecided |= is_best.sum(axis=1) > 1
    return np.where(undecided, -1, pred)


def _tied(matrix: np.ndarray) -> int:
    """Rows whose (finite) maximum is held by more than one column."""
    filled = np.where(np.isnan(matrix), -np.inf, np.asarray(matrix, dtype=np.float64))
    best = filled.max(axis=1, keepdims=True)
    return int((((filled == best).sum(axis=1) > 1) & np.isfinite(best[:, 0])).sum())


def matching_accuracy(matrix: np.ndarray, ties: str = "lowest") -> float:
    """Fraction of rows i whose argmax over columns is i (see :func:`argmax_layers` for NaN and ties)."""
    pred = argmax_layers(matrix, ties)
    return float((pred == np.arange(len(pred))).mean())


def score_matrices(matrices: Mapping[tuple[int, int], np.ndarray], n_models: int, ties: str = "lowest",
                   ) -> dict[str, Any]:
    """Both scores of one measure from its layer x layer matrices of every ordered pair ``(a, b)`` of
    ``n_models`` models, self pairs ``(a, a)`` included (all M x M must be there; rows and columns are the
    scored layers only). Returns ``authors`` (right predictions / (M * M * L)), ``cross`` (right predictions of
    the pairs a != b / (M * (M - 1) * L)), ``per_pair`` accuracies, ``predictions`` (argmax index per row,
    -1 undecided) and ``ties`` (rows whose maximum is tied, over all M x M pairs)."""
    if n_models < 2:
        raise ITDAError("layer matching needs at least two models")
    missing = [(a, b) for a in range(n_models) for b in range(n_models) if (a, b) not in matrices]
    if missing:
        raise ITDAError(f"missing similarity matrices for pairs {missing[:4]}: the authors' score needs all "
                        "M x M ordered pairs, each model against itself included")
    sizes = {np.asarray(m).shape for m in matrices.values()}
    if len(sizes) != 1:
        raise ITDAError(f"matrices of different shapes {sorted(sizes)}")
    n_layers = next(iter(sizes))[0]
    right_all = right_cross = tied = 0
    per_pair: dict[tuple[int, int], float] = {}
    predictions: dict[tuple[int, int], np.ndarray] = {}
    for (a, b), m in matrices.items():
        pred = argmax_layers(m, ties)
        right = int((pred == np.arange(n_layers)).sum())
        predictions[(a, b)], per_pair[(a, b)] = pred, right / n_layers
        right_all += right
        right_cross += right if a != b else 0
        tied += _tied(m)
    return {
        "authors": right_all / (n_models * n_models * n_layers),
        "cross": right_cross / (n_models * (n_models - 1) * n_layers),
        "per_pair": per_pair,
        "predictions": predictions,
        "ties": tied,
    }


def _corpus(config: LayerMatchingConfig):  # -> Corpus
    from itda_core.corpus import load_corpus

    corpus = load_corpus(config.corpus)
    if config.split == "all":
        return corpus
    train, held = corpus.split()
    return train if config.split == "train" else held


def run_model(model: Any, corpus: Any, layers: list[int], config: LayerMatchingConfig) -> ModelRun:
    """One pass over ``corpus``: dictionaries for ``layers`` (trainer) and, from the same batches, the first
    baseline activations (kept on the model's device, float32)."""
    from itda_core.extraction import ActivationBatch
    from itda_core.trainer import TrainConfig, Trainer

    need_acts = any(m != "jaccard" for m in config.measures)
    keep = min(config.tokens, config.baseline_tokens or config.tokens) if need_acts else 0
    acts = {layer: torch.empty((keep, model.d_model), dtype=torch.float32, device=model.device) for layer in layers}
    ids = torch.empty(keep, dtype=torch.long)
    done = 0

    def collect(batch: ActivationBatch) -> None:
        nonlocal done
        n = min(len(batch), keep - done)
        if n <= 0:
            return
        for layer in layers:
            acts[layer][done : done + n] = batch.acts[layer][:n].float()
        ids[done : done + n] = batch.provenance.token_id[:n]
        done += n

    train_cfg = TrainConfig(layers=layers, k=config.k, threshold=config.threshold, max_tokens=config.tokens,
                            seq_len=config.seq_len, batch_size=config.batch_size, progress=config.progress,
                            init_rule=config.init_rule)
    dicts = Trainer(model, corpus, train_cfg).run(on_batch=collect if need_acts else None)
    return ModelRun(model.name, model.model_id, model.n_layers, dicts,
                    {layer: t[:done] for layer, t in acts.items()}, ids[:done])


def _pair_label(a: str, b: str) -> str:
    return f"{a} -> {b}"


def _labels(runs: Sequence[ModelRun]) -> list[str]:
    """Distinct labels (the model name, with #i appended where two runs share it)."""
    names = [r.name for r in runs]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


LINEAR = ("cka", "cka_normalised", "r2", "r2_no_intercept")  # built on cross-products, done blockwise below
CHUNK_ROWS = 8192
# Blockwise variants: how columns are shifted and scaled before the cross-products, and what uses them.
_VARIANTS = {
    "centred": ("cka", "r2"),  # centred columns
    "normalised": ("cka_normalised",),  # centred, each column divided by its norm (the authors' CKA)
    "raw": ("r2_no_intercept",),  # neither centred nor scaled (the authors' regression, no intercept)
}


def _column_stats(run: ModelRun, layers: list[int], variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """(shift, scale, mean) of the columns of all of ``run``'s layers side by side ([L*d] each): rows become
    ``(x - shift) * scale``. Shift is the column mean (0 for ``raw``), scale 1 or 1/norm of the centred column
    for ``normalised`` (as in ``baselines``)."""
    dtype = torch.float64 if run.activations[layers[0]].device.type != "mps" else torch.float32
    x0 = run.activations[layers[0]]
    total = torch.zeros(len(layers) * x0.shape[1], dtype=dtype, device=x0.device)
    sq = torch.zeros_like(total)
    n = x0.shape[0]
    for i in range(0, n, CHUNK_ROWS):
        block = torch.cat([run.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(dtype)
        total += block.sum(0)
    mean = total / n
    if variant == "raw":
        return torch.zeros_like(mean), torch.ones_like(mean), mean
    if variant == "centred":
        return mean, torch.ones_like(mean), mean
    for i in range(0, n, CHUNK_ROWS):
        block = torch.cat([run.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(dtype) - mean
        sq += block.pow(2).sum(0)
    return mean, 1.0 / (sq.sqrt() + 1e-12), mean


def _cross_all(a: ModelRun, b: ModelRun, layers: list[int], stats_a: tuple[Tensor, ...],
               stats_b: tuple[Tensor, ...]) -> Tensor:
    """``A^T B`` of the shifted (scaled) activations of all layers side by side: [L*d_a, L*d_b], one big
    product per row chunk (every layer pair at once, no per-cell re-centring)."""
    (ma, sa, _), (mb, sb, _) = stats_a, stats_b
    n = a.activations[layers[0]].shape[0]
    out = torch.zeros((ma.shape[0], mb.shape[0]), dtype=ma.dtype, device=ma.device)
    for i in range(0, n, CHUNK_ROWS):
        xa = (torch.cat([a.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(ma.dtype) - ma) * sa
        xb = (torch.cat([b.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(ma.device, ma.dtype)
              - mb.to(ma.device)) * sb.to(ma.device)
        out += xa.T @ xb
    return out


def _linear_matrices(runs: Sequence[ModelRun], layers: list[int], measures: Sequence[str],
                     ) -> dict[str, dict[tuple[int, int], np.ndarray]]:
    """CKA (textbook and feature-normalised) and R^2 (with and without intercept) for every ordered pair,
    self pairs included, from block cross-products: the same formulas as
    :mod:`itda_core.similarity.baselines` (tests check the values agree; R^2 without intercept is
    ``1 - ||Y - X pinv(X) Y||^2 / ||Y - mean(Y)||^2`` as in the authors' code), computed as one [L*d, L*d]
    product per model pair instead of L^2 separate cells."""
    n_layers = len(layers)
    out: dict[str, dict[tuple[int, int], np.ndarray]] = {m: {} for m in measures}
    for variant, names in _VARIANTS.items():
        wanted = [m for m in measures if m in names]
        if not wanted:
            continue
        stats = [_column_stats(r, layers, variant) for r in runs]
        d = [r.activations[layers[0]].shape[1] for r in runs]
        n_rows = runs[0].activations[layers[0]].shape[0]
        grams = [_cross_all(r, r, layers, stats[k], stats[k]) for k, r in enumerate(runs)]
        blocks = [g.view(n_layers, d[k], n_layers, d[k]).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
                  for k, g in enumerate(grams)]  # [L, d, d]: each layer's own Gram
        cka_key = next((m for m in wanted if m.startswith("cka")), None)
        r2_key = next((m for m in wanted if m.startswith("r2")), None)
        self_norm = [torch.linalg.matrix_norm(bl) for bl in blocks] if cka_key else []  # [L]
        pinv = [torch.linalg.pinv(bl, hermitian=True) for bl in blocks] if r2_key else []
        sq_sum = [bl.diagonal(dim1=1, dim2=2).sum(1) for bl in blocks]  # [L]: ||Y - shift||^2 per layer
        # total sum of squares about the mean (for "centred" that is sq_sum itself)
        ss_tot = [s - n_rows * stats[k][2].view(n_layers, d[k]).pow(2).sum(1) if variant == "raw" else s
                  for k, s in enumerate(sq_sum)]
        for a in range(len(runs)):
            for b in range(a, len(runs)):
                cross = grams[a] if a == b else _cross_all(runs[a], runs[b], layers, stats[a], stats[b])
                cb = cross.view(n_layers, d[a], n_layers, d[b]).permute(0, 2, 1, 3)  # [La, Lb, da, db]
                if cka_key:
                    denom = self_norm[a][:, None] * self_norm[b][None, :].to(self_norm[a].device)
                    cka = (cb.pow(2).sum((2, 3)) / denom).cpu().numpy()
                    out[cka_key][(a, b)], out[cka_key][(b, a)] = cka, cka.T
                if r2_key:
                    directions = ((a, b, cb),) if a == b else ((a, b, cb), (b, a, cb.permute(1, 0, 3, 2)))
                    for x, y, c in directions:  # x predicts y
                        explained = (torch.einsum("ipq,ijqr->ijpr", pinv[x].to(c.device), c) * c).sum((2, 3))
                        tot = ss_tot[y].to(c.device)[None, :]
                        if variant == "raw":  # residual = ||Y||^2 - explained (no intercept)
                            r2 = 1.0 - (sq_sum[y].to(c.device)[None, :] - explained) / tot
                        else:
                            r2 = explained / tot
                        out[r2_key][(x, y)] = r2.cpu().numpy()
    return out


def _baseline_matrices(runs: Sequence[ModelRun], layers: list[int], measure: str,
                       config: LayerMatchingConfig) -> dict[tuple[int, int], np.ndarray]:
    """Every ordered pair's layer x layer matrix (self pairs included) of one baseline; each (model, layer)
    is prepared once."""
    from itda_core.similarity.baselines import MEASURES

    m = MEASURES[measure]
    options: dict[str, Any] = {}
    if measure == "svcca":
        options["n_directions"] = config.n_directions
    if measure == "relative":
        options.update(n_anchors=config.n_anchors, seed=config.anchor_seed)
    prepared = [{layer: m.prepare(run.activations[layer], **options) for layer in layers} for run in runs]
    out = {}
    for a in range(len(runs)):
        for b in range(len(runs)):
            if m.symmetric and (b, a) in out:
                out[(a, b)] = out[(b, a)].T
                continue
            out[(a, b)] = np.array([[m.pair(prepared[a][i], prepared[b][j]) for j in layers] for i in layers])
    return out


def _jaccard_call_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for ``jaccard_matrix`` from the config's ``jaccard_options``: ``atoms``, ``index`` and
    ``min_atoms`` (JSON-friendly) become a :class:`JaccardOptions`; anything else (``method``, ``options``)
    goes as is."""
    from itda_core.similarity.jaccard import JaccardOptions

    opts = dict(options or {})
    fields = {k: opts.pop(k) for k in ("atoms", "index", "min_atoms") if k in opts}
    if fields:
        if "options" in opts:
            raise ITDAError("jaccard_options: give either 'options' or 'atoms'/'index'/'min_atoms', not both")
        opts["options"] = JaccardOptions(**fields)
    return opts


def _jaccard_matrices(runs: Sequence[ModelRun], layers: list[int], options: Mapping[str, Any] | None = None,
                      ) -> tuple[dict[tuple[int, int], np.ndarray], str]:
    """Every ordered pair's layer x layer Jaccard matrix, self pairs included, and the variant's label.
    ``options`` (the config's ``jaccard_options``, see :func:`_jaccard_call_options`) go to every
    ``jaccard_matrix`` call: the one place where Jaccard variants (which atoms count, chance correction, ...)
    plug into the benchmark. A pair (b, a) is taken as the transpose of (a, b), so the options must keep the
    index symmetric."""
    from itda_core.similarity.matrices import jaccard_matrix

    opts = _jaccard_call_options(options)
    out = {}
    label = ""
    for a in range(len(runs)):
        for b in range(len(runs)):
            if (b, a) in out:
                out[(a, b)] = out[(b, a)].T
                continue
            da = {layer: runs[a].dictionaries[layer] for layer in layers}
            db = {layer: runs[b].dictionaries[layer] for layer in layers}
            frame = jaccard_matrix(da, db, **opts)
            label = str(frame.attrs.get("label", "")) or label
            out[(a, b)] = np.asarray(frame.to_numpy(), dtype=np.float64)
    return out, label


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
    linear = _linear_matrices(runs, layers, [m for m in config.measures if m in LINEAR])
    for measure in config.measures:
        if measure == "jaccard":
            mats, variant = _jaccard_matrices(runs, layers, config.jaccard_options)
            result.labels[measure] = _jaccard_label(variant)
        elif measure in LINEAR:
            mats = linear[measure]
        else:
            mats = _baseline_matrices(runs, layers, measure, config)
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
    corpus = corpus if corpus is not None else _corpus(config)
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
