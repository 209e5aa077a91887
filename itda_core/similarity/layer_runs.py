"""One model's pass for the layer-matching benchmark: its seed dictionaries and its baseline activations.

Every model is run once over the same prompts: ITDA dictionaries for every scored layer are trained from that
pass, and the first ``baseline_tokens`` activations of the same batches are kept for the baselines, so all
measures see the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from itda_core.config.similarity import LayerMatchingConfig

if TYPE_CHECKING:
    from itda_core.corpus import Corpus

__all__ = ["ModelRun", "benchmark_corpus", "run_model"]


@dataclass
class ModelRun:
    """What one model contributes: its dictionaries per layer and the baseline activations per layer."""

    name: str
    model_id: str
    n_layers: int
    dictionaries: dict[int, Any]  # layer -> ITDA
    activations: dict[int, Tensor]  # layer -> [n, d_model]
    token_ids: Tensor  # [n] token ids of the activation rows (must agree across models for the baselines)


def benchmark_corpus(config: LayerMatchingConfig) -> Corpus:
    """The benchmark's prompts: ``config.corpus``, its train or held-out part, or all of it (``config.split``)."""
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
