"""Greedy ITDA construction (Leask et al. 2025), several layers from one forward pass.

Per batch and layer: while the dictionary has fewer than d_model atoms, add the batch's most frequent
identical activation rows; then encode every activation with matching pursuit (k steps) and append, as
new unit-norm atoms with their provenance, all rows whose error on unit-normalised vectors
mean((x/|x| - x_hat/|x_hat|)^2) exceeds the threshold. See docs/method.md for the deliberate choices.

Early stop (same dictionaries, less MP): the error is (2 - 2 cos(x, x_hat)) / d, and once a token's
residual r has |r|^2 <= rho^2 |x|^2, every later reconstruction x - r' (|r'| <= |r|) has cos >= sqrt(1 -
rho^2). So MP stops a token as soon as that bound puts it below the threshold with a margin: it cannot
become an atom, and its partial reconstruction already shows an error below the threshold.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from itda_core.config.train import TrainConfig
from itda_core.corpus import Corpus
from itda_core.dictionary import ITDA, ITDAConfig, library_versions
from itda_core.errors import ITDAError
from itda_core.extraction import ActivationBatch, extract
from itda_core.layer_builder import (
    ERROR_SAMPLE,
    INIT_RULES,
    LayerBuilder,
    default_threshold,
    stop_fraction,
)
from itda_core.models import LoadedModel, dtype_name
from itda_core.mp import available_ram
from itda_core.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    """What a training run did, printed at the end of ``itda train``."""

    tokens: int = 0
    documents: int = 0
    wall_seconds: float = 0.0
    forward_seconds: float = 0.0
    trainer_seconds: float = 0.0
    atoms: dict[int, int] = field(default_factory=dict)
    recent_error: dict[int, float] = field(default_factory=dict)
    error_sample: int = 1  # the mean errors are over every error_sample-th token of a batch
    interrupted: bool = False
    complete_documents: list[int] = field(default_factory=list)  # ids of the documents seen whole, in order
    partial_document: tuple[int, int] | None = None  # (id, tokens seen) of the one a token budget cut short

    def documents_sha256(self) -> str:
        """Fingerprint of exactly which text the run saw: the whole documents in order, and the cut one."""
        text = ",".join(map(str, self.complete_documents))
        if self.partial_document is not None:
            text += f";partial:{self.partial_document[0]}:{self.partial_document[1]}"
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"tokens seen: {self.tokens:,} from {self.documents:,} documents in {self.wall_seconds:.1f} s "
            f"({self.tokens_per_second:,.0f} tokens/s)",
            f"time: forward pass {self.forward_seconds:.1f} s, ITDA (MP + bookkeeping) {self.trainer_seconds:.1f} s "
            f"(ratio {self.trainer_seconds / max(self.forward_seconds, 1e-9):.2f})",
        ]
        if self.interrupted:
            lines.append("interrupted: dictionaries hold what was built so far")
        sampled = f", every {self.error_sample}th token" if self.error_sample > 1 else ""
        lines.append(f"layer  atoms  mean error (last batches{sampled})")
        for layer in sorted(self.atoms):
            lines.append(f"{layer:>5}  {self.atoms[layer]:>5}  {self.recent_error.get(layer, float('nan')):.3e}")
        return "\n".join(lines)


class Trainer:
    """Runs the greedy construction for several layers of one model over a corpus."""

    def __init__(self, model: LoadedModel, corpus: Corpus, config: TrainConfig) -> None:
        if config.k < 1:
            raise ITDAError(f"k must be at least 1 (got {config.k})")
        if config.threshold is not None and config.threshold < 0:
            raise ITDAError(f"threshold must be non-negative (got {config.threshold})")
        if config.max_documents is not None and config.max_documents < 1:
            raise ITDAError(f"max_documents must be at least 1 (got {config.max_documents})")
        if config.max_size is not None and config.max_size < 1:
            raise ITDAError(f"max_size must be at least 1 (got {config.max_size})")
        if config.init_rule not in INIT_RULES:
            raise ITDAError(f"unknown init_rule {config.init_rule!r}; use one of {', '.join(INIT_RULES)}")
        if not config.gram_memory_gib > 0:
            raise ITDAError(f"gram_memory_gib must be positive (got {config.gram_memory_gib})")
        self.model = model
        self.corpus = corpus
        self.config = config
        self.layers = model.check_layers(list(config.layers))
        self.threshold = config.threshold if config.threshold is not None else default_threshold(model.d_model)
        gram_bytes = int(config.gram_memory_gib * 2**30 / len(self.layers))
        available = available_ram() / 2**30
        if torch.device(model.device).type == "cpu" and config.gram_memory_gib > available:
            log.warning("gram_memory_gib %.1f is more than the %.1f GiB of memory available: large dictionaries "
                        "may exhaust it; lower it (MP then moves to float16, then to the textbook loop)",
                        config.gram_memory_gib, available)
        self.builders = {
            layer: LayerBuilder(
                model.d_model, config.k, self.threshold, config.max_size, config.dedupe, model.device, gram_bytes,
                config.early_stop, config.init_rule,
            )
            for layer in self.layers
        }
        self.seen_dtype = ""  # the activations' precision as they arrive (a cache's model says its own)
        stops = config.early_stop and stop_fraction(self.threshold, model.d_model) is not None
        self.report = TrainReport(error_sample=ERROR_SAMPLE if stops else 1)

    def run(self, on_batch: Callable[[ActivationBatch], None] | None = None,
            source: Iterable[ActivationBatch] | None = None) -> dict[int, ITDA]:
        """Stream the corpus once, grow every layer's dictionary, return {layer: ITDA}. ``on_batch`` sees every
        extracted batch first (e.g. to keep activations for similarity baselines without a second pass).
        ``source`` gives the batches instead of running the model (e.g. an activation cache's)."""
        cfg = self.config
        stream = iter(source) if source is not None else extract(
            self.model,
            self.corpus,
            self.layers,
            cfg.seq_len,
            cfg.batch_size,
            skip_special_tokens=cfg.skip_special_tokens,
            max_tokens=cfg.max_tokens,
            progress=False,
            max_documents=cfg.max_documents,
        )
        n_docs = min(len(self.corpus.documents), cfg.max_documents or len(self.corpus.documents))
        total = min(cfg.max_tokens or n_docs * cfg.seq_len, n_docs * cfg.seq_len)
        bar = Progress(total=total, unit="tok", desc=f"itda {self.model.name}", enabled=cfg.progress)
        start = time.perf_counter()
        report = self.report
        try:
            while True:
                t0 = time.perf_counter()
                batch = next(stream, None)
                t1 = time.perf_counter()
                if batch is None:
                    break
                report.forward_seconds += t1 - t0
                if on_batch is not None:
                    on_batch(batch)
                self.seen_dtype = self.seen_dtype or dtype_name(batch.acts[self.layers[0]].dtype)
                for layer in self.layers:
                    self.builders[layer].step(batch.acts[layer].float(), batch.provenance)
                report.trainer_seconds += time.perf_counter() - t1
                report.tokens += len(batch)
                report.documents += batch.documents
                report.complete_documents.extend(batch.complete)
                report.partial_document = batch.partial
                sizes = [b.size for b in self.builders.values()]
                bar.update(len(batch), atoms=f"{min(sizes)}-{max(sizes)}" if len(sizes) > 1 else sizes[0])
        except KeyboardInterrupt:
            if not cfg.save_on_interrupt:
                raise
            report.interrupted = True
            log.warning("interrupted: keeping the %d tokens processed so far", report.tokens)
        finally:
            bar.close()
            if hasattr(stream, "close"):
                stream.close()
        report.wall_seconds = time.perf_counter() - start
        if report.tokens == 0:
            raise ITDAError("no activations were processed; is the corpus empty?")
        return self._finish()

    def _finish(self) -> dict[int, ITDA]:
        cfg, model, report = self.config, self.model, self.report
        versions = library_versions()
        cache_dtype = getattr(model, "cache_dtype", None)  # a cache's batches arrive as float32 whatever it stores
        activation_dtype = self.seen_dtype if cache_dtype is None else model.activation_dtype
        out: dict[int, ITDA] = {}
        for layer, builder in self.builders.items():
            recent = [e for e in builder.recent_error if e == e]
            report.atoms[layer] = builder.size
            report.recent_error[layer] = sum(recent) / len(recent) if recent else float("nan")
            config = ITDAConfig(
                model_id=model.model_id,
                model_name=model.name,
                layer=layer,
                d_model=model.d_model,
                architecture=model.architecture,
                family=model.family,
                k=cfg.k,
                threshold=self.threshold,
                corpus_id=self.corpus.corpus_id,
                corpus_sha256=self.corpus.sha256,
                tokenizer=str(getattr(model.tokenizer, "name_or_path", "")) or model.model_id,
                seq_len=cfg.seq_len,
                skip_special_tokens=cfg.skip_special_tokens,
                activation_dtype=activation_dtype,
                cache_dtype=cache_dtype or "",
                tokens_seen=report.tokens,
                documents_seen=len(report.complete_documents),
                documents_sha256=report.documents_sha256(),
                max_size=cfg.max_size,
                dedupe=cfg.dedupe,
                seed=cfg.seed,
                interrupted=report.interrupted,
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                versions=versions,
                stats={
                    "wall_seconds": round(report.wall_seconds, 3),
                    "documents": report.documents,
                    "recent_error": report.recent_error[layer],
                    "layers_in_run": len(self.layers),
                },
            )
            out[layer] = builder.build(config)
        return out


def train(model: LoadedModel, corpus: Corpus, layers: list[int] | None = None, **options) -> dict[int, ITDA]:
    """Build one ITDA per layer from a single pass over ``corpus``; options are :class:`TrainConfig` fields."""
    config = TrainConfig(layers=list(layers) if layers is not None else [model.n_layers // 2], **options)
    return Trainer(model, corpus, config).run()
