"""Options of the similarity jobs, apart from their torch-heavy modules so that the CLI's help loads no torch:
which atoms a Jaccard counts (:class:`JaccardOptions`), ``itda similarity --store``
(:class:`StoreSimilarityConfig`), the layer-matching benchmark (:class:`LayerMatchingConfig`) and checkpoint
convergence (:class:`ConvergenceConfig`). Each field with help is also an option of its command."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from itda_core.config.train import TrainConfig
from itda_core.errors import ITDAError
from itda_core.options import CORPUS_HELP, DEVICE_HELP, default_of, help_of, option

__all__ = [
    "ALL_MEASURES",
    "ATOM_CHOICES",
    "DEFAULT_OPTIONS",
    "INDEX_CHOICES",
    "LAYER_MATCHING_MEASURES",
    "MAX_MIN_ATOMS",
    "PROTOCOLS",
    "SPLITS",
    "TIE_RULES",
    "ConvergenceConfig",
    "JaccardOptions",
    "LayerMatchingConfig",
    "StoreSimilarityConfig",
    "expected_shared",
    "jaccard_index",
    "parse_jaccard_options",
    "parse_measures",
]

ATOM_CHOICES = ("evidence", "all")
INDEX_CHOICES = ("raw", "corrected")
MAX_MIN_ATOMS = 1_000_000
# The measures shared with the baselines module (and ``itda similarity --store``, which validates against this).
ALL_MEASURES = ("jaccard", "cka", "cka_normalised", "svcca", "relative", "r2")
# What the benchmark scores: those plus the authors' linear regression (no intercept), computed only there.
LAYER_MATCHING_MEASURES = (*ALL_MEASURES, "r2_no_intercept")
PROTOCOLS = ("authors", "cross")
TIE_RULES = ("lowest", "wrong")
SPLITS = ("train", "held_out", "all")
PROMPT_SPLIT_HELP = "Part of the corpus for the prompts: train, held_out or all."

TextForm = tuple[Callable[[str], Any], Callable[[Any], str]]


def _train(name: str, cli: bool = True) -> Any:
    """An option of the dictionaries these jobs train: TrainConfig's default and help (declared there once)."""
    return option(default_of(TrainConfig, name), help=help_of(TrainConfig, name), cli=cli)


def parse_measures(spec: str, allowed: tuple[str, ...] = LAYER_MATCHING_MEASURES) -> tuple[str, ...]:
    """'all' (every one of ``allowed``) or a comma-separated list of them, without repeats."""
    if spec.strip().lower() == "all":
        return allowed
    chosen = tuple(dict.fromkeys(p.strip().lower() for p in spec.split(",") if p.strip()))
    bad = [m for m in chosen if m not in allowed]
    if bad or not chosen:
        raise ITDAError(f"unknown measure(s) {bad or spec!r}; use 'all' or any of {', '.join(allowed)}")
    return chosen


def _measures_text(allowed: tuple[str, ...]) -> TextForm:
    """How a tuple of measures is written on the command line: 'all' or 'jaccard,cka,...'."""
    return (lambda spec: parse_measures(spec, allowed),
            lambda measures: "all" if tuple(measures) == allowed else ",".join(measures))


def parse_jaccard_options(spec: str | None) -> dict[str, Any]:
    """A JSON object of keyword arguments for the Jaccard call, e.g. '{"method": "keys"}' ('' = none)."""
    if not spec:
        return {}
    try:
        value = json.loads(spec)
    except json.JSONDecodeError as err:
        raise ITDAError(f"--jaccard-options must be a JSON object (got {spec!r}: {err})") from err
    if not isinstance(value, dict):
        raise ITDAError(f"--jaccard-options must be a JSON object (got {spec!r})")
    return value


def _layers_text(everything: str) -> TextForm:
    """How a layer choice is written on the command line: ``everything`` (the job's default: None) or a spec
    such as '1-11' that the job reads against the model's depth (:func:`itda_core.layers.parse_layers`)."""
    return (lambda spec: None if spec.strip().lower() == everything else spec,
            lambda layers: everything if layers is None else
            layers if isinstance(layers, str) else ",".join(map(str, layers)))


def _index(shared: float, n_a: int, n_b: int) -> float:
    """The raw index |A n B| / |A u B| from the counts (nan for two empty sets)."""
    union = n_a + n_b - shared
    return shared / union if union else float("nan")


def expected_shared(n_a: int, n_b: int, universe: int) -> float:
    """Atoms two sets of sizes n_a and n_b share on average when drawn at random from ``universe`` tokens (the
    mean of the hypergeometric distribution); nan when the universe is unknown."""
    return n_a * n_b / universe if universe > 0 else float("nan")


def jaccard_index(shared: int, n_a: int, n_b: int, universe: int, index: str) -> float:
    """The Jaccard value of a pair from its counts: "raw" |A n B| / |A u B|, or "corrected" (J - J0) / (Jmax -
    J0) with J0 the raw index at the chance overlap :func:`expected_shared` and Jmax = min / max of the sizes
    (see :mod:`itda_core.similarity.jaccard`); nan where undefined (empty sets, unknown universe, Jmax <= J0)."""
    if index not in INDEX_CHOICES:
        raise ITDAError(f"unknown Jaccard index {index!r}; use one of {', '.join(INDEX_CHOICES)}")
    raw = _index(shared, n_a, n_b)
    if index == "raw":
        return raw
    if not n_a or not n_b:
        return float("nan")
    chance = expected_shared(n_a, n_b, universe)
    j0 = _index(chance, n_a, n_b) if chance == chance else float("nan")
    jmax = min(n_a, n_b) / max(n_a, n_b)
    return (raw - j0) / (jmax - j0) if jmax > j0 else float("nan")


@dataclass(frozen=True)
class JaccardOptions:
    """Which atoms count and which index (see :mod:`itda_core.similarity.jaccard`): ``atoms`` "evidence" (every
    atom but the arbitrary initial picks) or "all"; ``index`` "raw" (the paper's |A n B| / |A u B|) or
    "corrected" (for chance and set sizes); ``min_atoms``: a pair where either set counts fewer atoms has no
    value (nan), since a handful of atoms cannot say how alike two layers are (two 4-atom sets of repeated first
    tokens score 1)."""

    atoms: str = option("evidence", help="Which atoms count: 'evidence' (all but the initial atoms picked "
                        "arbitrarily among rows seen once) or 'all' (the paper).")
    index: str = option("raw", help="'corrected' (0 = the overlap expected by chance for these sizes, 1 = the "
                        "most they can share) or 'raw' (|A n B| / |A u B|, the paper).")
    min_atoms: int = option(32, help="A pair where either dictionary counts fewer atoms than this has no value "
                            "(nan): a handful of atoms cannot say how alike two layers are. 0 = always a value.")

    def __post_init__(self) -> None:
        """Refuse unknown choices with a one-line error."""
        if self.atoms not in ATOM_CHOICES:
            raise ITDAError(f"unknown atom choice {self.atoms!r}; use one of {', '.join(ATOM_CHOICES)}")
        if self.index not in INDEX_CHOICES:
            raise ITDAError(f"unknown Jaccard index {self.index!r}; use one of {', '.join(INDEX_CHOICES)}")
        if not isinstance(self.min_atoms, int) or not 0 <= self.min_atoms <= MAX_MIN_ATOMS:
            raise ITDAError(f"min_atoms must be an integer from 0 to {MAX_MIN_ATOMS:,}, got {self.min_atoms!r}")

    def too_few(self, n_a: int, n_b: int) -> bool:
        """Whether a pair of these set sizes is below ``min_atoms`` (its value is then nan)."""
        return min(n_a, n_b) < self.min_atoms

    def value(self, shared: int, n_a: int, n_b: int, universe: int) -> float:
        """The pair's Jaccard under these options from its counts (:func:`jaccard_index`), nan when
        :meth:`too_few`."""
        return float("nan") if self.too_few(n_a, n_b) else jaccard_index(shared, n_a, n_b, universe, self.index)

    @property
    def label(self) -> str:
        """Short text for plots and tables, e.g. "Jaccard (corrected, evidence atoms)"."""
        return f"Jaccard ({self.index}, {'all atoms' if self.atoms == 'all' else 'evidence atoms'})"


DEFAULT_OPTIONS = JaccardOptions()


@dataclass
class LayerMatchingConfig:
    """Options of the layer-matching benchmark (each field with help is an ``itda bench layer-matching``
    option; the dictionaries' own options default to ``itda train``'s)."""

    tokens: int = option(100_000, help="Tokens per model for the dictionaries (one pass).")
    baseline_tokens: int | None = option(None, help="First N of those tokens for the baselines (default: all).")
    k: int = _train("k")
    threshold: float | None = _train("threshold")
    init_rule: str = _train("init_rule", cli=False)
    seq_len: int = _train("seq_len")
    batch_size: int = _train("batch_size")
    corpus: str = option("default", help=CORPUS_HELP)
    split: str = option("train", help=PROMPT_SPLIT_HELP)
    layers: list[int] | str | None = option(
        None, text=_layers_text("default"),
        help="Layers to match: 'default' (1..n-1, the authors'), 'all' (0..n-1) or e.g. '1-11'.")
    measures: tuple[str, ...] = option(
        LAYER_MATCHING_MEASURES, text=_measures_text(LAYER_MATCHING_MEASURES),
        help=f"'all' or e.g. '{','.join(LAYER_MATCHING_MEASURES)}'.")
    protocol: str = option("authors", help="Headline score: 'authors' (M x M pairs, self included) or 'cross' "
                           "(different models only); both are always printed.")
    ties: str = option("lowest", help="A tied maximum goes to the 'lowest' layer (the authors') or counts as "
                       "'wrong'.")
    # the single place they are used is itda_core.similarity.layer_measures.jaccard_matrices
    jaccard_options: dict[str, Any] = option(
        factory=dict, text=(parse_jaccard_options, lambda options: json.dumps(options) if options else ""),
        help="JSON object of extra keyword arguments for the Jaccard call, e.g. '{\"method\": \"keys\"}'.")
    n_directions: int = option(20, help="SVCCA: canonical directions kept.", cli=False)
    n_anchors: int = option(300, help="Relative representations: anchor tokens.", cli=False)
    anchor_seed: int = option(0, help="Relative representations: seed of the anchors' choice.", cli=False)
    device: str = option("auto", help=DEVICE_HELP)
    progress: bool = option(True, help="Show a progress bar per model.")

    def check(self) -> None:
        """One-line errors for bad options."""
        unknown = [m for m in self.measures if m not in LAYER_MATCHING_MEASURES]
        if unknown:
            raise ITDAError(f"unknown measure(s) {unknown}; use any of {', '.join(LAYER_MATCHING_MEASURES)}")
        if not self.measures:
            raise ITDAError("no measures to score")
        if self.protocol not in PROTOCOLS:
            raise ITDAError(f"protocol must be one of {', '.join(PROTOCOLS)} (got {self.protocol!r})")
        if self.ties not in TIE_RULES:
            raise ITDAError(f"ties must be one of {', '.join(TIE_RULES)} (got {self.ties!r})")
        if not isinstance(self.jaccard_options, Mapping):
            raise ITDAError("jaccard_options must be a mapping of keyword arguments")
        if "options" in self.jaccard_options and {"atoms", "index", "min_atoms"} & set(self.jaccard_options):
            raise ITDAError("jaccard_options: give either 'options' or 'atoms'/'index'/'min_atoms', not both")
        if self.tokens < 2:
            raise ITDAError(f"tokens must be at least 2 (got {self.tokens})")
        if self.baseline_tokens is not None and self.baseline_tokens < 2:
            raise ITDAError(f"baseline_tokens must be at least 2 (got {self.baseline_tokens})")
        if self.split not in SPLITS:
            raise ITDAError(f"split must be train, held_out or all (got {self.split!r})")


@dataclass
class ConvergenceConfig:
    """Options of a convergence run (each field with help is an ``itda convergence`` option; the dictionaries'
    own options default to ``itda train``'s)."""

    layers: list[int] | str | None = option(None, text=_layers_text("all"), help="Layers, e.g. 'all' or '0-5'.")
    tokens: int = option(100_000, help="Tokens per checkpoint for the dictionaries.")
    k: int = _train("k")
    threshold: float | None = _train("threshold")
    seq_len: int = _train("seq_len")
    batch_size: int = _train("batch_size", cli=False)
    corpus: str = option("default", help=CORPUS_HELP)
    split: str = option("train", help=PROMPT_SPLIT_HELP)
    device: str = option("auto", help=DEVICE_HELP)
    progress: bool = option(True, help="Show a progress bar per checkpoint.")


def _like_layer_matching(name: str) -> Any:
    """A baseline option the store's similarities share with the benchmark (its default and help)."""
    return option(default_of(LayerMatchingConfig, name), help=help_of(LayerMatchingConfig, name), cli=False)


@dataclass
class StoreSimilarityConfig:
    """Options of ``itda similarity --store``: which measures to store and the baselines' activations."""

    measures: tuple[str, ...] = option(
        ALL_MEASURES, text=_measures_text(ALL_MEASURES),
        help=f"With --store: 'all' or e.g. '{','.join(ALL_MEASURES)}'.")
    tokens: int = option(
        20_000, help="With --store: first N tokens of the stored held-out text for the baselines (paper 100k).")
    split: str = option("held_out", help="With --store: stored documents for the baselines: held_out, train, all.")
    batch_size: int = option(32, help="Documents per forward pass of the baselines' activations.", cli=False)
    n_directions: int = _like_layer_matching("n_directions")
    n_anchors: int = _like_layer_matching("n_anchors")
    anchor_seed: int = _like_layer_matching("anchor_seed")
    device: str = option("auto", help=f"With --store: {DEVICE_HELP}")
    progress: bool = option(False, help="Show progress bars.", cli=False)
    jaccard: JaccardOptions = option(
        DEFAULT_OPTIONS, help="Which atoms count and which index the stored Jaccard uses.", cli=False)
