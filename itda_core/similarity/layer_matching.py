"""The layer-matching benchmark (Kornblith et al. 2019), as the ITDA paper runs it.

For architecturally identical models trained from different seeds, layer i of one model should be most
similar to layer i of the other. For every ordered pair of models (A, B) and every layer i of A, the
prediction is ``argmax_j S(A_i, B_j)``; accuracy is the fraction of (pair, layer) predictions equal to i.
Every model is run once over the same prompts: ITDA dictionaries for every layer are built from that pass
(Jaccard), and the first ``baseline_tokens`` activations of the same pass feed the baselines (CKA, SVCCA,
relative representations, linear-regression R^2), so all measures see the same text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from itda_core.errors import ITDAError

__all__ = [
    "ALL_MEASURES",
    "PAPER_ACCURACY",
    "PAPER_MODELS",
    "LayerMatchingConfig",
    "LayerMatchingResult",
    "ModelRun",
    "format_table",
    "matching_accuracy",
    "run_layer_matching",
    "run_model",
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
ALL_MEASURES = ("jaccard", "cka", "cka_normalised", "svcca", "relative", "r2")
# Paper's accuracies, 5 seeds each of GPT-2 small / medium (the paper reports one linear CKA number).
PAPER_ACCURACY: dict[str, tuple[float, float]] = {
    "r2": (0.16, 0.07),
    "svcca": (0.50, 0.44),
    "cka": (0.69, 0.61),
    "relative": (0.87, 0.78),
    "jaccard": (0.88, 0.89),
}
MEASURE_LABELS = {
    "jaccard": "ITDA Jaccard",
    "cka": "linear CKA",
    "cka_normalised": "linear CKA (feature-normalised)",
    "svcca": "SVCCA",
    "relative": "relative representations",
    "r2": "linear regression R^2",
}


@dataclass
class LayerMatchingConfig:
    """Options of the benchmark (they double as ``itda bench layer-matching`` options)."""

    tokens: int = 100_000  # activations streamed per model: dictionaries are built on all of them
    baseline_tokens: int | None = None  # first N of those for the baselines; None = all (paper: 100k)
    k: int = 40
    threshold: float | None = None  # None -> the trainer's default (0.3 / d_model)
    seq_len: int = 128
    batch_size: int = 32
    corpus: str = "default"
    split: str = "train"  # train / held_out / all: which part of the corpus supplies the prompts
    layers: list[int] | None = None  # None = every layer
    measures: tuple[str, ...] = ALL_MEASURES
    n_directions: int = 20  # SVCCA
    n_anchors: int = 300  # relative representations
    anchor_seed: int = 0
    device: str = "auto"
    progress: bool = False

    def check(self) -> None:
        """One-line errors for bad options."""
        unknown = [m for m in self.measures if m not in ALL_MEASURES]
        if unknown:
            raise ITDAError(f"unknown measure(s) {unknown}; use any of {', '.join(ALL_MEASURES)}")
        if not self.measures:
            raise ITDAError("no measures to score")
        if self.tokens < 2:
            raise ITDAError(f"tokens must be at least 2 (got {self.tokens})")
        if self.baseline_tokens is not None and self.baseline_tokens < 2:
            raise ITDAError(f"baseline_tokens must be at least 2 (got {self.baseline_tokens})")
        if self.split not in ("train", "held_out", "all"):
            raise ITDAError(f"split must be train, held_out or all (got {self.split!r})")


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
    """Accuracy per measure (mean over ordered pairs), per ordered pair, and every similarity matrix."""

    models: list[str]
    layers: list[int]
    accuracy: dict[str, float]
    per_pair: dict[str, dict[str, float]]  # measure -> "A -> B" -> accuracy
    matrices: dict[str, dict[str, list[list[float]]]]  # measure -> "A -> B" -> rows (A's layers) x cols (B's)
    atoms: dict[str, dict[int, int]]  # model -> layer -> dictionary size
    tokens: int
    baseline_tokens: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

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


def matching_accuracy(matrix: np.ndarray) -> float:
    """Fraction of rows i whose strict argmax over columns is i (rows = layers of model A, columns = the
    same layers of model B). A tie for the maximum, or a NaN row, counts as wrong: an undecided measure must
    not score."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ITDAError(f"layer matching needs a square, non-empty matrix (got shape {m.shape})")
    filled = np.where(np.isnan(m), -np.inf, m)
    best = filled.max(axis=1, keepdims=True)
    is_best = filled == best
    diag = np.diagonal(is_best)
    unique = is_best.sum(axis=1) == 1
    finite = np.isfinite(np.diagonal(filled))
    return float((diag & unique & finite).mean())


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
                            seq_len=config.seq_len, batch_size=config.batch_size, progress=config.progress)
    dicts = Trainer(model, corpus, train_cfg).run(on_batch=collect if need_acts else None)
    return ModelRun(model.name, model.model_id, model.n_layers, dicts,
                    {layer: t[:done] for layer, t in acts.items()}, ids[:done])


def _pair_label(a: str, b: str) -> str:
    return f"{a} -> {b}"


def _labels(runs: Sequence[ModelRun]) -> list[str]:
    """Distinct labels (the model name, with #i appended where two runs share it)."""
    names = [r.name for r in runs]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


LINEAR = ("cka", "cka_normalised", "r2")  # measures built on the cross-covariance, done blockwise below
CHUNK_ROWS = 8192


def _centred(run: ModelRun, layers: list[int], normalise: bool) -> tuple[Tensor, Tensor]:
    """(column means, column scales) of all of ``run``'s layers side by side ([L*d]); scales are 1, or
    1/norm of the centred column for the feature-normalised CKA (as in ``baselines``)."""
    dtype = torch.float64 if run.activations[layers[0]].device.type != "mps" else torch.float32
    x0 = run.activations[layers[0]]
    total = torch.zeros(len(layers) * x0.shape[1], dtype=dtype, device=x0.device)
    sq = torch.zeros_like(total)
    n = x0.shape[0]
    for i in range(0, n, CHUNK_ROWS):
        block = torch.cat([run.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(dtype)
        total += block.sum(0)
    mean = total / n
    if not normalise:
        return mean, torch.ones_like(mean)
    for i in range(0, n, CHUNK_ROWS):
        block = torch.cat([run.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(dtype) - mean
        sq += block.pow(2).sum(0)
    return mean, 1.0 / (sq.sqrt() + 1e-12)


def _cross_all(a: ModelRun, b: ModelRun, layers: list[int], stats_a: tuple[Tensor, Tensor],
               stats_b: tuple[Tensor, Tensor]) -> Tensor:
    """``A^T B`` of the centred (scaled) activations of all layers side by side: [L*d_a, L*d_b], one big
    product per row chunk (every layer pair at once, no per-cell re-centring)."""
    (ma, sa), (mb, sb) = stats_a, stats_b
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
    """CKA, feature-normalised CKA and R^2 for every ordered pair, from block cross-covariances: the same
    formulas as :mod:`itda_core.similarity.baselines` (tests check the values agree), computed as one
    [L*d, L*d] product per model pair instead of L^2 separate cells."""
    n_layers = len(layers)
    out: dict[str, dict[tuple[int, int], np.ndarray]] = {m: {} for m in measures}
    for normalise in (False, True):
        wanted = [m for m in measures if (m == "cka_normalised") == normalise]
        if not wanted:
            continue
        stats = [_centred(r, layers, normalise) for r in runs]
        d = [r.activations[layers[0]].shape[1] for r in runs]
        grams = [_cross_all(r, r, layers, stats[k], stats[k]) for k, r in enumerate(runs)]
        blocks = [g.view(n_layers, d[k], n_layers, d[k]).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
                  for k, g in enumerate(grams)]  # [L, d, d]: each layer's own Gram
        self_norm = [torch.linalg.matrix_norm(bl) for bl in blocks]  # [L]
        pinv = [torch.linalg.pinv(bl, hermitian=True) for bl in blocks] if "r2" in wanted else []
        for a in range(len(runs)):
            for b in range(a + 1, len(runs)):
                cross = _cross_all(runs[a], runs[b], layers, stats[a], stats[b])
                cb = cross.view(n_layers, d[a], n_layers, d[b]).permute(0, 2, 1, 3)  # [La, Lb, da, db]
                if "cka" in wanted or "cka_normalised" in wanted:
                    denom = self_norm[a][:, None] * self_norm[b][None, :].to(self_norm[a].device)
                    cka = (cb.pow(2).sum((2, 3)) / denom).cpu().numpy()
                    key = "cka_normalised" if normalise else "cka"
                    out[key][(a, b)], out[key][(b, a)] = cka, cka.T
                if "r2" in wanted:
                    for x, y, c in ((a, b, cb), (b, a, cb.permute(1, 0, 3, 2))):  # x predicts y
                        ss_tot = blocks[y].diagonal(dim1=1, dim2=2).sum(1).to(c.device)  # [Ly]
                        explained = (torch.einsum("ipq,ijqr->ijpr", pinv[x].to(c.device), c) * c).sum((2, 3))
                        out["r2"][(x, y)] = (explained / ss_tot[None, :]).cpu().numpy()
    return out


def _baseline_matrices(runs: Sequence[ModelRun], layers: list[int], measure: str,
                       config: LayerMatchingConfig) -> dict[tuple[int, int], np.ndarray]:
    """Every ordered pair's layer x layer matrix of one baseline; each (model, layer) is prepared once."""
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
            if a == b:
                continue
            if m.symmetric and (b, a) in out:
                out[(a, b)] = out[(b, a)].T
                continue
            out[(a, b)] = np.array([[m.pair(prepared[a][i], prepared[b][j]) for j in layers] for i in layers])
    return out


def _jaccard_matrices(runs: Sequence[ModelRun], layers: list[int]) -> dict[tuple[int, int], np.ndarray]:
    from itda_core.similarity.matrices import jaccard_matrix

    out = {}
    for a in range(len(runs)):
        for b in range(len(runs)):
            if a == b:
                continue
            if (b, a) in out:
                out[(a, b)] = out[(b, a)].T
                continue
            da = {layer: runs[a].dictionaries[layer] for layer in layers}
            db = {layer: runs[b].dictionaries[layer] for layer in layers}
            out[(a, b)] = jaccard_matrix(da, db).to_numpy()
    return out


def score_runs(runs: Sequence[ModelRun], layers: list[int], config: LayerMatchingConfig) -> LayerMatchingResult:
    """Accuracy of every measure over all ordered pairs of ``runs`` (at least two)."""
    if len(runs) < 2:
        raise ITDAError("layer matching needs at least two models")
    baselines = [m for m in config.measures if m != "jaccard"]
    if baselines:
        n = {len(r.token_ids) for r in runs}
        if len(n) != 1 or any(not torch.equal(runs[0].token_ids, r.token_ids) for r in runs[1:]):
            raise ITDAError("the baselines need the same tokens in every model (same tokenizer); these models "
                            "tokenise the prompts differently -- score only jaccard (--measures jaccard)")
        if next(iter(n)) < 2:
            raise ITDAError("too few tokens for the baselines")
    labels = _labels(runs)
    accuracy: dict[str, float] = {}
    per_pair: dict[str, dict[str, float]] = {}
    matrices: dict[str, dict[str, list[list[float]]]] = {}
    linear = _linear_matrices(runs, layers, [m for m in config.measures if m in LINEAR])
    for measure in config.measures:
        if measure == "jaccard":
            mats = _jaccard_matrices(runs, layers)
        elif measure in LINEAR:
            mats = linear[measure]
        else:
            mats = _baseline_matrices(runs, layers, measure, config)
        pairs = {_pair_label(labels[a], labels[b]): matching_accuracy(m) for (a, b), m in mats.items()}
        per_pair[measure] = pairs
        accuracy[measure] = float(np.mean(list(pairs.values())))
        matrices[measure] = {_pair_label(labels[a], labels[b]): m.tolist() for (a, b), m in mats.items()}
    atoms = {label: {layer: len(run.dictionaries[layer]) for layer in layers}
             for label, run in zip(labels, runs, strict=True)}
    cfg = asdict(config)
    cfg["measures"] = list(config.measures)
    return LayerMatchingResult(
        models=labels, layers=layers, accuracy=accuracy, per_pair=per_pair, matrices=matrices, atoms=atoms,
        tokens=int(next(iter(runs[0].dictionaries.values())).config.tokens_seen),
        baseline_tokens=len(runs[0].token_ids), seconds=0.0, config=cfg,
    )


def run_layer_matching(models: Sequence[Any], config: LayerMatchingConfig | None = None,
                       corpus: Any = None) -> LayerMatchingResult:
    """The whole benchmark: ``models`` are names for :func:`load_model` (HF ids, local folders, aliases) or
    already loaded models, all of one depth; ``corpus`` defaults to ``config.corpus``/``config.split``.
    Models are loaded one at a time; their activations (baseline_tokens x d_model x layers, float32) stay."""
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
            layers = model.check_layers(list(config.layers) if config.layers is not None
                                        else list(range(model.n_layers)))
        if len(layers) < 2:
            raise ITDAError("layer matching needs at least two layers")
        with torch.no_grad():
            runs.append(run_model(model, corpus, layers, config))
        if not isinstance(spec, LoadedModel):
            del model
    assert layers is not None
    result = score_runs(runs, layers, config)
    result.seconds = time.perf_counter() - start
    return result


def format_table(result: LayerMatchingResult) -> str:
    """Accuracy per measure, best first, beside the paper's GPT-2 small / medium numbers."""
    lines = [
        f"layer matching: {len(result.models)} models, {len(result.models) * (len(result.models) - 1)} ordered "
        f"pairs, layers {result.layers[0]}-{result.layers[-1]}; dictionaries on {result.tokens:,} tokens, "
        f"baselines on {result.baseline_tokens:,}",
        f"{'measure':<34}{'accuracy':>9}{'paper small':>13}{'paper medium':>14}",
    ]
    for measure, acc in sorted(result.accuracy.items(), key=lambda kv: -kv[1]):
        paper = PAPER_ACCURACY.get(measure)
        small, medium = (f"{paper[0]:.2f}", f"{paper[1]:.2f}") if paper else ("-", "-")
        lines.append(f"{MEASURE_LABELS.get(measure, measure):<34}{acc:>9.3f}{small:>13}{medium:>14}")
    return "\n".join(lines)
