"""Evaluation of ITDA dictionaries: CE loss score (Leask et al. 2025), KL, reconstruction metrics, sweeps."""

from __future__ import annotations

from itda_core.evaluation.ce_score import (
    PositionMasks,
    position_masks,
    special_token_ids,
    splice_forward,
    splice_hook,
)
from itda_core.evaluation.metrics import LossStats, ReconstructionStats, ce_loss_score
from itda_core.evaluation.run import EvalResult, evaluate, evaluate_many
from itda_core.evaluation.sweep import default_sizes, plot_sweep, save_figure, sweep, sweep_table

__all__ = [
    "EvalResult",
    "LossStats",
    "PositionMasks",
    "ReconstructionStats",
    "ce_loss_score",
    "default_sizes",
    "evaluate",
    "evaluate_many",
    "plot_sweep",
    "position_masks",
    "save_figure",
    "special_token_ids",
    "splice_forward",
    "splice_hook",
    "sweep",
    "sweep_table",
]
