"""``itda index``: encode held-out text with each stored dictionary and store per-atom summaries.

Design (bounded memory, short locks, exact summaries):

1. One forward pass per model over the held-out documents (read from the store, so indexing needs no
   corpus file; in a fixed pseudo-random order, so that a token budget samples the whole corpus)
   captures every layer that has a dictionary to index; each layer's activations are appended batch by
   batch to a float32 file in a temporary folder beside the store (memory: one batch), named after this
   process so that the next run removes it if this one is killed (:mod:`itda_core.leftovers`).
2. Then, one dictionary at a time: load it from the store, encode its layer's activations in chunks with
   MP (the dictionary's own k, through :meth:`ITDA.encode`; one Gram matrix in memory at a time), sum the
   coefficients of an atom chosen at several MP steps for the same token, drop zeros, and append the
   sparse codes (doc_id, position, atom, coef) to a Parquet file. The same pass sums the reconstruction's
   FVU and cosine over the non-special tokens (:mod:`itda_core.jobs.index_quality`), written to the
   ``evaluations`` table after the index: ``itda eval``'s figures on these tokens, for free.
3. In ONE transaction per dictionary (:mod:`itda_core.store.held_out`), DuckDB reads that file and
   computes every summary with window functions (:mod:`itda_core.store.quantiles`): density, top contexts,
   quantile samples, a signed histogram. The raw codes are kept too (``codes`` table, optional) so
   researchers can ask questions the summaries do not answer. Only step 3 holds the store's write lock, for
   about a second per dictionary.

Computing in SQL rather than with per-atom heaps in Python keeps the summaries exact (true quantiles,
not reservoir estimates), tested through the very same SQL, and spills to disk if ever larger than RAM.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from itda_core.config.index import IndexConfig
from itda_core.corpus import Document
from itda_core.dictionary import ITDA
from itda_core.evaluation.accumulate import QualityAccumulator
from itda_core.jobs.index_codes import sparse_codes
from itda_core.jobs.index_codes import spill_folder as _spill_folder
from itda_core.jobs.index_codes import write_target_index as _write_index
from itda_core.jobs.index_quality import counted_rows, write_quality
from itda_core.leftovers import remove_stale_spills
from itda_core.models import LoadedModel
from itda_core.progress import Progress
from itda_core.store.connection import StoreError, connect_readonly
from itda_core.store.held_out import held_out_documents, pending
from itda_core.store.reader import read_dictionary

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What an index run did."""

    indexed: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    tokens: int = 0
    forward_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0

    def summary(self) -> str:
        """One line for the CLI."""
        line = (
            f"indexed {len(self.indexed)} dictionaries on {self.tokens:,} held-out tokens "
            f"(forward {self.forward_seconds:.1f} s, MP {self.encode_seconds:.1f} s, "
            f"store {self.write_seconds:.1f} s)"
        )
        if self.skipped:
            line += f"; skipped {len(self.skipped)}: " + "; ".join(
                f"{k}: {v}" for k, v in self.skipped.items()
            )
        return line


@dataclass
class _Target:
    """A dictionary to index, with the ``written`` stamp that detects a concurrent rewrite."""

    dict_id: int
    layer: int
    k: int
    n_atoms: int
    written: object


def spread(documents: list[Document], salt: str = "itda-order") -> list[Document]:
    """The documents in a fixed pseudo-random order (sha256 of salt and doc_id): any prefix of it samples
    the whole corpus (the default corpus runs article by article), the same on every machine."""

    def key(doc: Document) -> tuple[bytes, int]:
        """Sort key: hash first, doc_id to break (impossible) ties."""
        return hashlib.sha256(f"{salt}:{doc.doc_id}".encode()).digest(), doc.doc_id

    return sorted(documents, key=key)


def _held_out_documents(store: str | Path, corpus_id: str) -> list[Document]:
    """The held-out documents, spread (so that a token budget samples every part of the corpus)."""
    return spread(held_out_documents(store, corpus_id))


def index_model(
    store: str | Path,
    model: LoadedModel,
    config: IndexConfig | None = None,
    dict_ids: list[int] | None = None,
    loader=None,
) -> IndexReport:
    """Index the store's dictionaries of ``model`` (those without an index, or ``dict_ids``); with
    ``config.engine == "ray"`` on Ray Data (:mod:`itda_core.jobs.index_ray`), whose workers load the model with
    ``loader(name)`` (default ``load_model``)."""
    config = config or IndexConfig()
    store = Path(store)
    remove_stale_spills(store)
    report = IndexReport()
    rows = pending(store, model.model_id, reindex=config.reindex or dict_ids is not None)
    if dict_ids is not None:
        rows = [r for r in rows if r["dict_id"] in set(dict_ids)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["corpus_id"], int(r["seq_len"]), bool(r["skip_special_tokens"])), []).append(r)
    for (corpus_id, seq_len, skip_special), group in groups.items():
        docs = _held_out_documents(store, corpus_id)
        if not docs:
            for r in group:
                report.skipped[int(r["dict_id"])] = f"corpus {corpus_id} has no held-out documents"
            continue
        targets = [
            _Target(int(r["dict_id"]), int(r["layer"]), int(r["k"]), int(r["n_atoms"]), r["written"])
            for r in group
        ]
        if config.engine == "ray":
            from itda_core.jobs.index_ray import index_group_ray

            index_group_ray(store, model, docs, seq_len, skip_special, corpus_id, targets, config, report, loader)
        else:
            _index_group(store, model, docs, seq_len, skip_special, corpus_id, targets, config, report)
    return report


def _index_group(
    store: Path,
    model: LoadedModel,
    docs: list[Document],
    seq_len: int,
    skip_special: bool,
    corpus_id: str,
    targets: list[_Target],
    config: IndexConfig,
    report: IndexReport,
) -> None:
    """One forward pass for all layers of ``targets``, then encode and store each dictionary in turn."""
    from itda_core.extraction import extract

    layers = sorted({t.layer for t in targets})
    with _spill_folder(store) as tmp:
        files = {layer: open(tmp / f"layer{layer}.f32", "wb") for layer in layers}  # noqa: SIM115
        doc_col: list[np.ndarray] = []
        pos_col: list[np.ndarray] = []
        tok_col: list[np.ndarray] = []  # token ids: which rows count in the quality figures
        t0 = time.perf_counter()
        try:
            for batch in extract(
                model,
                docs,
                layers,
                seq_len,
                config.batch_size,
                skip_special_tokens=skip_special,
                max_tokens=config.max_tokens,
                progress=config.progress,
            ):
                for layer in layers:
                    files[layer].write(batch.acts[layer].float().cpu().numpy().tobytes())
                doc_col.append(batch.provenance.doc_id.numpy().astype(np.int32))
                pos_col.append(batch.provenance.position.numpy().astype(np.int32))
                tok_col.append(batch.provenance.token_id.numpy())
        finally:
            for f in files.values():
                f.close()
        report.forward_seconds += time.perf_counter() - t0
        doc_ids = np.concatenate(doc_col) if doc_col else np.zeros(0, np.int32)
        positions = np.concatenate(pos_col) if pos_col else np.zeros(0, np.int32)
        n_tokens = len(doc_ids)
        report.tokens = max(report.tokens, n_tokens)
        if n_tokens == 0:
            for t in targets:
                report.skipped[t.dict_id] = "no held-out tokens"
            return
        n_docs = len(np.unique(doc_ids))
        counted = counted_rows(model, np.concatenate(tok_col), positions)
        bar = Progress(total=len(targets), unit="dict", desc=f"index {model.name}", enabled=config.progress)
        try:
            for target in targets:
                acts = np.memmap(
                    tmp / f"layer{target.layer}.f32",
                    dtype=np.float32,
                    mode="r",
                    shape=(n_tokens, model.d_model),
                )
                codes_path = tmp / f"codes{target.dict_id}.parquet"
                t1 = time.perf_counter()
                quality = _encode_to_parquet(store, target, acts, doc_ids, positions, codes_path, config, counted)
                t2 = time.perf_counter()
                report.encode_seconds += t2 - t1
                status = _write_index(
                    store, target, codes_path, corpus_id, n_docs, n_tokens, config, seconds=t2 - t1
                )
                if not status:
                    status = write_quality(store, target.dict_id, quality, corpus_id, target.k, n_tokens,
                                           config.max_tokens, target.written, timeout=config.timeout)
                report.write_seconds += time.perf_counter() - t2
                if status:
                    report.skipped[target.dict_id] = status
                else:
                    report.indexed.append(target.dict_id)
                codes_path.unlink(missing_ok=True)
                del acts
                bar.update(1, layer=target.layer)
        finally:
            bar.close()


def _encode_to_parquet(
    store: Path,
    target: _Target,
    acts: np.ndarray,
    doc_ids: np.ndarray,
    positions: np.ndarray,
    path: Path,
    config: IndexConfig,
    counted: np.ndarray | None = None,
) -> QualityAccumulator:
    """MP-encode one dictionary's layer activations chunk by chunk into a Parquet file of sparse codes; returns
    the reconstruction sums (FVU, cosine) of the ``counted`` rows (all rows when None)."""
    with connect_readonly(store, timeout=config.timeout) as con:
        itda: ITDA = read_dictionary(con, target.dict_id)
    schema = pa.schema(
        [("atom", pa.int32()), ("doc_id", pa.int32()), ("position", pa.int32()), ("coef", pa.float32())]
    )
    quality = QualityAccumulator()
    with pq.ParquetWriter(str(path), schema) as writer:
        for start in range(0, len(doc_ids), config.encode_chunk):
            stop = min(start + config.encode_chunk, len(doc_ids))
            x = torch.from_numpy(np.array(acts[start:stop]))
            idx, coef = itda.encode(x, target.k)
            keep = slice(None) if counted is None else torch.from_numpy(counted[start:stop])
            quality.add(x[keep], itda.decode(idx, coef)[keep])
            rows, atoms, sums = sparse_codes(idx, coef, len(itda))
            writer.write_table(
                pa.table(
                    {
                        "atom": atoms,
                        "doc_id": doc_ids[start:stop][rows],
                        "position": positions[start:stop][rows],
                        "coef": sums,
                    },
                    schema=schema,
                )
            )
    del itda
    return quality


def index_store(
    store: str | Path, loader=None, config: IndexConfig | None = None, models: list[str] | None = None
) -> IndexReport:
    """Index every model's pending dictionaries; ``loader(name) -> LoadedModel`` (default ``load_model``)."""
    from itda_core.models import load_model

    loader = loader or load_model
    config = config or IndexConfig()
    remove_stale_spills(Path(store))
    total = IndexReport()
    todo = pending(store, reindex=config.reindex)
    names = {}
    for r in todo:
        names.setdefault(r["model_id"], r["model_name"])
    for model_id, name in names.items():
        if models and name not in models and model_id not in models:
            continue
        model = loader(name)
        if model.model_id != model_id:
            for r in todo:
                if r["model_id"] == model_id:
                    total.skipped[int(r["dict_id"])] = f"{name} now loads as {model.model_id}, not {model_id}"
            continue
        part = index_model(store, model, config, loader=loader)
        total.indexed += part.indexed
        total.skipped.update(part.skipped)
        total.tokens = max(total.tokens, part.tokens)
        total.forward_seconds += part.forward_seconds
        total.encode_seconds += part.encode_seconds
        total.write_seconds += part.write_seconds
    if not names:
        log.info("nothing to index")
    return total


__all__ = [
    "IndexConfig",
    "IndexReport",
    "StoreError",
    "index_model",
    "index_store",
    "pending",
    "sparse_codes",
]
