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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from itda_core.config.train import TrainConfig
from itda_core.corpus import Corpus
from itda_core.dictionary import ITDA, ITDAConfig, library_versions
from itda_core.errors import ITDAError
from itda_core.extraction import ActivationBatch, extract
from itda_core.models import LoadedModel
from itda_core.mp import GramCache, available_ram, matching_pursuit, reconstruct
from itda_core.progress import Progress
from itda_core.provenance import Provenance

log = logging.getLogger(__name__)



def default_threshold(d_model: int) -> float:
    """Default threshold: add an activation when cos(x, x_hat) < 0.85, i.e. err = (2 - 2*0.85) / d."""
    return 0.3 / d_model


def normalised_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """mean over dims of (x/|x| - x_hat/|x_hat|)^2 per row, computed as (2 - 2 cos(x, x_hat)) / d; a zero
    reconstruction (or activation) counts as cos = 0, the largest error an orthogonal guess would get."""
    dot = (x * x_hat).sum(dim=-1)
    norms = x.norm(dim=-1) * x_hat.norm(dim=-1)
    cos = torch.where(norms > 0, dot / norms.clamp_min(1e-30), torch.zeros_like(dot)).clamp(-1.0, 1.0)
    return (2.0 - 2.0 * cos) / x.shape[-1]


# Every ERROR_SAMPLE-th token of a batch is encoded with all k steps, for the reported mean error. A prime
# stride: with documents of 128 tokens, 8 would sample position 0 (an attention sink in SmolLM2) in every one.
ERROR_SAMPLE = 7
# Residual energy (fraction of |x|^2) kept below the stop bound: the float rounding of the energy identity
# |r|^2 = |x|^2 - sum coef^2 and of the error itself is orders of magnitude smaller.
STOP_MARGIN = 0.01


def stop_fraction(threshold: float, d_model: int) -> float | None:
    """Residual energy fraction |r|^2 / |x|^2 at which a token provably stays under ``threshold`` (with
    the margin), or None when no residual is small enough to be sure (threshold 0)."""
    cos_needed = max(0.0, 1.0 - threshold * d_model / 2.0)
    frac = 1.0 - cos_needed**2 - STOP_MARGIN
    return frac if frac > 0 else None


INIT_RULES = ("first", "value")


def _first_unique_rows(x: Tensor, rule: str = "first") -> tuple[Tensor, Tensor]:
    """(first-occurrence index, count) of every distinct row of x, most frequent first; ties (rows seen
    equally often) by ``rule``: "first" by first occurrence, "value" in torch.unique's lexicographic order
    of the rows' values (the authors' code: unique, then a stable sort on counts)."""
    if rule not in INIT_RULES:
        raise ITDAError(f"unknown init_rule {rule!r}; use one of {', '.join(INIT_RULES)}")
    _, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    n = x.shape[0]
    first = torch.full((counts.shape[0],), n, dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=x.device), reduce="amin")
    # sort by count desc, then the tie key asc (stable sort on the secondary key first); unique's own order is
    # already by value
    order = torch.argsort(first, stable=True) if rule == "first" else torch.arange(len(counts), device=x.device)
    order = order[torch.argsort(counts[order], descending=True, stable=True)]
    return first[order], counts[order]


class LayerBuilder:
    """The growing dictionary of one layer: atoms, provenance and the bookkeeping for MP."""

    def __init__(
        self,
        d_model: int,
        k: int,
        threshold: float,
        max_size: int | None,
        dedupe: bool,
        device: torch.device,
        gram_bytes: int,
        early_stop: bool = True,
        init_rule: str = "first",
    ) -> None:
        self.d_model = d_model
        self.k = k
        self.threshold = threshold
        self.max_size = max_size
        self.dedupe = dedupe
        self.stop = stop_fraction(threshold, d_model) if early_stop else None
        self.init_rule = init_rule
        self.capacity = 0
        self.size = 0
        self.buffer = torch.empty((0, d_model), device=device)
        self.prov: list[Provenance] = []
        self.errors: list[Tensor] = []
        self.init_counts: list[Tensor] = []  # per atom: how often its activation occurred in its batch (init), else 0
        self.gram = GramCache(device, torch.float32, max_bytes=gram_bytes)
        self.recent_error: deque[float] = deque(maxlen=10)
        self.init_atoms = 0
        self._seen: set[bytes] = set()  # raw bytes of every activation that became an atom (for dedupe)

    @property
    def atoms(self) -> Tensor:
        return self.buffer[: self.size]

    def _full(self) -> bool:
        return self.max_size is not None and self.size >= self.max_size

    def _append(self, rows: Tensor, prov: Provenance, errors: Tensor, init_counts: Tensor | None = None) -> None:
        if init_counts is None:
            init_counts = torch.zeros(rows.shape[0], dtype=torch.int32)
        if self.max_size is not None:
            room = self.max_size - self.size
            if rows.shape[0] > room:
                rows, errors, init_counts = rows[:room], errors[:room], init_counts[:room]
                prov = prov.select(torch.arange(room))
        n = rows.shape[0]
        if n == 0:
            return
        if self.size + n > self.capacity:  # grow with doubling so appends stay amortised O(1)
            self.capacity = max(2 * self.capacity, self.size + n, 1024)
            grown = torch.empty((self.capacity, self.d_model), device=self.buffer.device)
            grown[: self.size] = self.atoms
            self.buffer = grown
        self.buffer[self.size : self.size + n] = rows / rows.norm(dim=-1, keepdim=True)
        self.size += n
        self.prov.append(prov)
        self.errors.append(errors.float().cpu())
        self.init_counts.append(init_counts.to(device="cpu", dtype=torch.int32))

    def _unseen(self, x: Tensor, rows: Tensor) -> Tensor:
        """Positions in ``rows`` (in order) whose activation is not bit-identical to an atom or an earlier
        row; marks them seen. Exact duplicates of atoms reconstruct with error ~0, but float noise can still
        put them over a tiny threshold, so they are filtered explicitly."""
        data = x[rows].detach().cpu().numpy()
        keep = []
        for i in range(data.shape[0]):
            key = data[i].tobytes()
            if key not in self._seen:
                self._seen.add(key)
                keep.append(i)
        return torch.tensor(keep, dtype=torch.long, device=rows.device)

    def initialise(self, x: Tensor, prov: Provenance) -> None:
        """Add the most frequent identical rows of ``x`` until the dictionary has d_model atoms."""
        nonzero = x.norm(dim=-1) > 0
        idx = nonzero.nonzero().flatten()
        if idx.numel() == 0:
            return
        first, counts = _first_unique_rows(x[idx], self.init_rule)
        room = self.d_model - self.size
        take, counts = idx[first[:room]], counts[:room]
        if self.dedupe:
            keep = self._unseen(x, take)
            take, counts = take[keep], counts[keep.to(counts.device)]
        before = self.size
        self._append(x[take], prov.select(take.cpu()), torch.full((take.numel(),), float("nan")), counts)
        self.init_atoms += self.size - before

    def step(self, x: Tensor, prov: Provenance) -> tuple[int, float]:
        """Encode a batch, add the rows above the threshold; returns (atoms added, mean error)."""
        if self.size < self.d_model and not self._full():
            self.initialise(x, prov)
        if self.size == 0:
            return 0, float("nan")
        # the layer's Gram matrix within its share of the memory; past it, the textbook loop (which needs none)
        gram = self.gram.update(self.atoms)
        method = "auto" if gram is not None else "textbook"
        n = x.shape[0]
        energy = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64).square()
        stop = None
        if self.stop is not None:  # the sampled tokens run all k steps: their errors give the mean
            stop = torch.full((n,), self.stop, dtype=torch.float64, device=x.device)
            stop[::ERROR_SAMPLE] = -1.0
        indices, coefs = matching_pursuit(x, self.atoms, self.k, gram=gram, method=method, stop_residual=stop)
        if stop is None:
            rows = torch.arange(n, device=x.device)
            err = normalised_error(x, reconstruct(indices, coefs, self.atoms))
            mean_err = float(err.mean())
        else:
            # a row whose residual energy proves it stays under the threshold needs no reconstruction; the
            # others ran all k steps (or stopped at the bound: then their error is below the threshold too)
            left = energy - coefs.double().square().sum(dim=1)
            rows = ((left > stop * energy) | (stop < 0)).nonzero().flatten()
            err = normalised_error(x[rows], reconstruct(indices[rows], coefs[rows], self.atoms))
            mean_err = float(err[rows % ERROR_SAMPLE == 0].mean())
        self.recent_error.append(mean_err)
        if self._full():
            return 0, mean_err
        over = (err > self.threshold) & (energy[rows] > 0)
        add, add_err = rows[over], err[over]
        if add.numel() and self.dedupe:
            keep = self._unseen(x, add)
            add, add_err = add[keep], add_err[keep.to(add_err.device)]
        before = self.size
        if add.numel():
            self._append(x[add], prov.select(add.cpu()), add_err)
        return self.size - before, mean_err

    def build(self, config: ITDAConfig) -> ITDA:
        prov = Provenance.concat(self.prov)
        errors = torch.cat(self.errors) if self.errors else torch.zeros(0)
        counts = torch.cat(self.init_counts) if self.init_counts else torch.zeros(0, dtype=torch.int32)
        config.init_atoms = self.init_atoms
        config.init_rule = self.init_rule
        return ITDA(self.atoms.detach().clone().cpu(), prov, config, errors, init_count=counts)


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
        stops = config.early_stop and stop_fraction(self.threshold, model.d_model) is not None
        self.report = TrainReport(error_sample=ERROR_SAMPLE if stops else 1)

    def run(self, on_batch: Callable[[ActivationBatch], None] | None = None) -> dict[int, ITDA]:
        """Stream the corpus once, grow every layer's dictionary, return {layer: ITDA}. ``on_batch`` sees every
        extracted batch first (e.g. to keep activations for similarity baselines without a second pass)."""
        cfg = self.config
        stream = extract(
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
            stream.close()
        report.wall_seconds = time.perf_counter() - start
        if report.tokens == 0:
            raise ITDAError("no activations were processed; is the corpus empty?")
        return self._finish()

    def _finish(self) -> dict[int, ITDA]:
        cfg, model, report = self.config, self.model, self.report
        versions = library_versions()
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
