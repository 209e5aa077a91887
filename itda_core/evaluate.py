"""Evaluation entry points (``from itda_core.evaluate import evaluate, sweep``); see itda_core.evaluation."""

from __future__ import annotations

from itda_core.evaluation import (
    EvalResult,
    ce_loss_score,
    default_sizes,
    evaluate,
    evaluate_many,
    plot_sweep,
    position_masks,
    save_figure,
    special_token_ids,
    splice_forward,
    sweep,
    sweep_table,
)

__all__ = [
    "EvalResult",
    "ce_loss_score",
    "default_sizes",
    "evaluate",
    "evaluate_many",
    "plot_sweep",
    "position_masks",
    "save_figure",
    "special_token_ids",
    "splice_forward",
    "sweep",
    "sweep_table",
]
