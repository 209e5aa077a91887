"""Similarity between dictionaries (Jaccard of provenance sets) and activation-based baselines."""

from __future__ import annotations

from itda_core.similarity.baselines import (
    baseline_matrix,
    collect_activations,
    linear_cka,
    linear_cka_feature_normalised,
    linear_regression_r2,
    relative_similarity,
    svcca,
)
from itda_core.similarity.convergence import ConvergenceConfig, checkpoint_convergence, convergence_figure
from itda_core.similarity.jaccard import (
    check_comparable,
    jaccard,
    jaccard_by_span,
    model_jaccard,
    same_tokenizer,
    shared_atoms,
    span_matches,
)
from itda_core.similarity.layer_matching import (
    LayerMatchingConfig,
    LayerMatchingResult,
    matching_accuracy,
    run_layer_matching,
)
from itda_core.similarity.matrices import jaccard_matrix, labelled_matrix, model_jaccard_matrix

__all__ = [
    "ConvergenceConfig",
    "LayerMatchingConfig",
    "LayerMatchingResult",
    "baseline_matrix",
    "check_comparable",
    "checkpoint_convergence",
    "collect_activations",
    "convergence_figure",
    "jaccard",
    "jaccard_by_span",
    "jaccard_matrix",
    "labelled_matrix",
    "linear_cka",
    "linear_cka_feature_normalised",
    "linear_regression_r2",
    "matching_accuracy",
    "model_jaccard",
    "model_jaccard_matrix",
    "relative_similarity",
    "run_layer_matching",
    "same_tokenizer",
    "shared_atoms",
    "span_matches",
    "svcca",
]
