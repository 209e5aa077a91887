"""Checkpoint convergence (the paper's appendix on "layer freezing"): the Jaccard of each training checkpoint's
dictionary against the final checkpoint's, per layer. Every checkpoint is run once over the same prompts
(one dictionary per layer from one pass); a layer whose Jaccard reaches ~its final value early has stopped
changing which tokens it treats as novel."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from itda_core.config.similarity import SPLITS, ConvergenceConfig  # apart from torch (the CLI's help reads it)
from itda_core.errors import ITDAError

__all__ = ["ConvergenceConfig", "ConvergenceResult", "checkpoint_convergence", "checkpoint_label",
           "convergence_figure"]


@dataclass
class ConvergenceResult:
    """``jaccard[c][l]``: checkpoint c's layer-l dictionary vs the final checkpoint's (the last row is 1)."""

    checkpoints: list[str]  # as given
    labels: list[str]  # short names for tables and plots
    layers: list[int]
    jaccard: list[list[float]]
    atoms: list[list[int]]  # dictionary sizes, same shape
    tokens: int
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Checkpoints (rows) x layers (columns) of Jaccard against the final checkpoint."""
        return pd.DataFrame(self.jaccard, index=pd.Index(self.labels, name="checkpoint"),
                            columns=pd.Index(self.layers, name="layer"))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["jaccard"] = [[None if not np.isfinite(v) else v for v in row] for row in self.jaccard]
        return data


def checkpoint_label(path: str) -> str:
    """A short label: the folder name (``step500``, ``final``), or the HF ``id@revision``'s revision."""
    if "@" in path:
        return path.rsplit("@", 1)[1]
    return Path(path).name or path


def _split(spec: str) -> tuple[str, str | None]:
    """``name@revision`` -> (name, revision) for hub checkpoints (e.g. Pythia's ``step1000`` branches)."""
    if "@" in spec and not Path(spec).exists():
        name, rev = spec.rsplit("@", 1)
        return name, rev
    return spec, None


def checkpoint_convergence(checkpoints: Sequence[str], config: ConvergenceConfig | None = None,
                           corpus: Any = None, loaded: Sequence[Any] | None = None) -> ConvergenceResult:
    """Jaccard of each checkpoint's dictionaries against the last checkpoint's (the final model), per layer.
    ``checkpoints`` are model folders, HF ids or ``id@revision``; ``loaded`` may give the models already
    loaded (same order, e.g. in tests). All checkpoints must have the same depth and tokenizer."""
    from itda_core.models import load_model
    from itda_core.similarity.jaccard import atom_set, shared_count
    from itda_core.similarity.layer_matching import LayerMatchingConfig
    from itda_core.similarity.layer_runs import benchmark_corpus as _corpus
    from itda_core.trainer import TrainConfig, Trainer

    config = config or ConvergenceConfig()
    if len(checkpoints) < 2:
        raise ITDAError("give at least two checkpoints (the last one is the final model)")
    if loaded is not None and len(loaded) != len(checkpoints):
        raise ITDAError("loaded models and checkpoints differ in number")
    if config.tokens < 1:
        raise ITDAError(f"tokens must be positive (got {config.tokens})")
    if config.split not in SPLITS:
        raise ITDAError(f"split must be {', '.join(SPLITS)} (got {config.split!r})")
    start = time.perf_counter()
    if corpus is None:
        corpus = _corpus(LayerMatchingConfig(corpus=config.corpus, split=config.split))

    def dictionaries(i: int) -> dict[int, Any]:
        if loaded is not None:
            model = loaded[i]
        else:
            name, rev = _split(checkpoints[i])
            model = load_model(name, device=config.device, revision=rev)
        if model.n_layers != depth:
            raise ITDAError(f"{checkpoints[i]} has {model.n_layers} layers but the final checkpoint has {depth}")
        cfg = TrainConfig(layers=layers, k=config.k, threshold=config.threshold, max_tokens=config.tokens,
                          seq_len=config.seq_len, batch_size=config.batch_size, progress=config.progress)
        with torch.no_grad():
            return Trainer(model, corpus, cfg).run()

    # the final checkpoint first: its depth fixes the layers
    final_name, final_rev = _split(checkpoints[-1])
    final_model = loaded[-1] if loaded is not None else load_model(final_name, device=config.device,
                                                                     revision=final_rev)
    depth = final_model.n_layers
    if isinstance(config.layers, str):  # a spec such as '0-5', read against the final checkpoint's depth
        from itda_core.layers import parse_layers

        chosen = parse_layers(config.layers, depth)
    else:
        chosen = list(config.layers) if config.layers is not None else list(range(depth))
    layers = final_model.check_layers(chosen)
    cfg = TrainConfig(layers=layers, k=config.k, threshold=config.threshold, max_tokens=config.tokens,
                      seq_len=config.seq_len, batch_size=config.batch_size, progress=config.progress)
    with torch.no_grad():
        final = Trainer(final_model, corpus, cfg).run()
    del final_model
    final_sets = {layer: atom_set(final[layer]) for layer in layers}
    values: list[list[float]] = []
    sizes: list[list[int]] = []
    for i in range(len(checkpoints) - 1):
        dicts = dictionaries(i)
        row, size = [], []
        for layer in layers:
            shared, n_a, n_b, _ = shared_count(atom_set(dicts[layer]), final_sets[layer])
            union = n_a + n_b - shared
            row.append(shared / union if union else float("nan"))
            size.append(len(dicts[layer]))
        values.append(row)
        sizes.append(size)
    values.append([1.0] * len(layers))
    sizes.append([len(final[layer]) for layer in layers])
    labels = [checkpoint_label(c) for c in checkpoints]
    labels = [f"{lab}#{i}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]
    return ConvergenceResult(
        checkpoints=[str(c) for c in checkpoints], labels=labels, layers=layers, jaccard=values, atoms=sizes,
        tokens=int(final[layers[0]].config.tokens_seen), seconds=time.perf_counter() - start, config=asdict(config),
    )


def _step(label: str) -> int | None:
    match = re.search(r"(\d+)$", label)
    return int(match.group(1)) if match else None


def convergence_figure(result: ConvergenceResult, title: str | None = None,
                       steps: Sequence[int] | None = None):  # -> plotly Figure
    """Jaccard vs the final checkpoint, one line per layer; x is ``steps`` (one training step per checkpoint)
    when given, else the step read from labels like ``step500`` (the final checkpoint placed after the last
    one when its label has no number), else the checkpoint order."""
    import plotly.graph_objects as go

    if steps is not None and len(steps) != len(result.labels):
        raise ITDAError(f"{len(steps)} steps for {len(result.labels)} checkpoints")
    found = [_step(lab) for lab in result.labels[:-1]]
    numeric = steps is not None or all(s is not None for s in found)
    if steps is not None:
        x: list[Any] = list(steps)
    elif numeric:
        steps_ = [s for s in found if s is not None]
        last, top = _step(result.labels[-1]), max(steps_, default=0)
        x = [*steps_, last if last is not None and last > top else top + max(1, top // 4)]
    else:
        x = list(result.labels)
    fig = go.Figure()
    for j, layer in enumerate(result.layers):
        fig.add_trace(go.Scatter(x=x, y=[row[j] for row in result.jaccard], mode="lines+markers",
                                 name=f"layer {layer}", text=result.labels,
                                 hovertemplate="%{text}: Jaccard %{y:.3f}<extra>layer " + str(layer) + "</extra>"))
    fig.update_layout(
        title=title or "Jaccard of each checkpoint's ITDA vs the final checkpoint's",
        xaxis_title="training step" if steps is not None else
        "training step (last point: final checkpoint)" if numeric else "checkpoint",
        yaxis_title="Jaccard vs final", yaxis_range=[0, 1.02], template="plotly_white", height=480,
    )
    return fig
