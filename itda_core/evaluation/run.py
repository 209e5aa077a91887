"""Evaluate ITDA dictionaries on held-out text: CE loss score, KL, FVU, MSE, cosine, L0 and atom usage.

One pass over the documents serves any number of (dictionary, k) settings of the same layer: each batch
is run clean once (capturing the activations), zero-ablated once, and spliced once per setting.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from itda_core.config.evaluation import (  # declared with the options
    DEFAULT_BATCH_SIZE,
    DEFAULT_CE_RULE,
    DEFAULT_MAX_TOKENS,
    LEGACY_CE_RULES,
    check_ce_rule,
)
from itda_core.corpus import Corpus, Document
from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.evaluation.ce_score import (
    cross_entropy,
    kl_divergence,
    next_token_logprobs,
    position_masks,
    splice_forward,
)
from itda_core.evaluation.metrics import LossStats, ReconstructionStats, ce_loss_score
from itda_core.extraction import residual_stream, tokenize_documents
from itda_core.models import LoadedModel
from itda_core.progress import Progress

ENCODER_NOTE = "encoder model: no next-token prediction, so no CE loss score; reconstruction metrics only"


@dataclass
class EvalResult:
    """Metrics of one dictionary at one k on one set of documents; every field is a scalar (or None),
    so a result is one row of a table (JSON, pandas, DuckDB)."""

    model_name: str
    model_id: str
    family: str
    layer: int
    site: str
    k: int
    dictionary_size: int  # atoms used for encoding (after cropping)
    dictionary_full_size: int  # atoms in the dictionary as saved
    corpus_id: str  # the documents evaluated on
    corpus_sha256: str
    dictionary_corpus_id: str  # the documents the dictionary was built from
    dictionary_corpus_sha256: str
    seq_len: int
    documents: int  # documents with at least one counted token
    tokens: int  # tokens in the reconstruction metrics (real, non-special)
    ce_positions: int | None  # positions in the loss metrics (None for encoders)
    special_positions: int  # special-token positions (excluded) in the evaluated documents
    ce_rule: str  # which positions were spliced, zero-ablated and counted (CE_RULES; docs/evaluation.md)
    exclude_first: bool  # whether each document's first position was left out of the counts
    ce_clean: float | None  # H_orig, nats per token
    ce_spliced: float | None  # H*
    ce_zero: float | None  # H0
    ce_loss_score: float | None  # (H* - H0) / (H_orig - H0)
    kl_div: float | None  # mean KL(clean || spliced), nats
    kl_zero: float | None  # mean KL(clean || zero-ablated), nats
    fvu: float | None
    mse: float | None
    cosine: float | None
    l0: float | None  # MP steps per token (= k)
    l0_distinct: float | None  # distinct atoms per token
    atoms_used: int | None  # atoms picked at least once over the evaluated tokens
    dead_fraction: float | None  # fraction of the dictionary never picked
    note: str
    wall_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A flat dict of scalars."""
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> Path:
        """Write the result as a JSON object; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """Rebuild a result from :meth:`to_dict` output (unknown keys are ignored). A result written before
        the CE rule was recorded gets the rule its ``splice_special`` flag stands for."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "ce_rule" not in values:
            values["ce_rule"] = LEGACY_CE_RULES[bool(data.get("splice_special", True))]
        return cls(**values)

    def summary(self) -> str:
        """A few human-readable lines."""

        def f(value: float | None, spec: str = ".4f") -> str:
            return "n/a" if value is None else format(value, spec)

        lines = [
            f"{self.model_name} {self.site}: {self.dictionary_size:,} atoms, k={self.k}, "
            f"{self.tokens:,} tokens from {self.documents:,} documents of {self.corpus_id}",
        ]
        if self.ce_loss_score is not None or self.ce_clean is not None:
            lines.append(
                f"CE loss score {f(self.ce_loss_score)}  (H_orig {f(self.ce_clean)}, "
                f"H* {f(self.ce_spliced)}, "
                f"H0 {f(self.ce_zero)} nats over {self.ce_positions:,} positions, rule {self.ce_rule})  "
                f"KL {f(self.kl_div)}"
            )
        lines.append(
            f"FVU {f(self.fvu)}  MSE {f(self.mse, '.4g')}  cosine {f(self.cosine)}  L0 {f(self.l0, '.0f')} "
            f"(distinct {f(self.l0_distinct, '.1f')})  dead atoms {f(self.dead_fraction, '.1%')}"
        )
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def _documents(corpus: Corpus | Sequence[Document]) -> list[Document]:
    return list(corpus.documents) if isinstance(corpus, Corpus) else list(corpus)


def _batches(documents: list[Document], size: int) -> Iterator[list[Document]]:
    for start in range(0, len(documents), size):
        yield documents[start : start + size]


def evaluate_many(
    model: LoadedModel,
    settings: Sequence[tuple[ITDA, int]],
    corpus: Corpus | Sequence[Document],
    *,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    seq_len: int = 128,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ce_rule: str = DEFAULT_CE_RULE,
    exclude_first: bool = False,
    full_size: int | None = None,
    check_model: bool = True,
    progress: bool = False,
) -> list[EvalResult]:
    """Evaluate several (dictionary, k) settings of one layer in one pass, sharing the clean and zero runs.
    ``ce_rule`` chooses the positions spliced, zero-ablated and counted (docs/evaluation.md)."""
    check_ce_rule(ce_rule)
    if not settings:
        raise ITDAError("nothing to evaluate: no (dictionary, k) settings given")
    if seq_len < 2:
        raise ITDAError(f"seq_len must be at least 2 (got {seq_len})")
    if batch_size < 1:
        raise ITDAError(f"batch_size must be at least 1 (got {batch_size})")
    if max_tokens is not None and max_tokens < 1:
        raise ITDAError(f"max_tokens must be positive (got {max_tokens})")
    layers = {itda.config.layer for itda, _ in settings}
    if len(layers) != 1:
        raise ITDAError(f"settings mix layers {sorted(layers)}; evaluate one layer at a time")
    layer = layers.pop()
    for itda, k in settings:
        if k < 1:
            raise ITDAError(f"k must be at least 1 (got {k})")
        if check_model:
            itda.check_model(model)
        elif itda.d_model != model.d_model:
            raise ITDAError(
                f"dictionary width {itda.d_model} does not match {model.name} (d_model {model.d_model})"
            )
    documents = _documents(corpus)
    if not documents:
        raise ITDAError("no documents to evaluate on")
    dictionaries = {}
    for itda, _ in settings:  # one device copy per distinct dictionary, so its Gram matrix is built once
        if id(itda) not in dictionaries:
            dictionaries[id(itda)] = itda if itda.atoms.device == model.device else itda.to(model.device)
    decoder = model.family == "decoder"
    recon = [ReconstructionStats(n_atoms=len(itda)) for itda, _ in settings]
    spliced = [LossStats() for _ in settings]
    clean, zero = LossStats(), LossStats()
    n_docs = n_special = 0
    remaining = max_tokens
    start = time.perf_counter()
    total = max_tokens or len(documents) * seq_len
    bar = Progress(total=total, unit="tok", desc=f"eval {model.name} L{layer}", enabled=progress)
    try:
        for docs in _batches(documents, batch_size):
            if remaining is not None and remaining <= 0:
                break
            tb = tokenize_documents(model, docs, seq_len, skip_special_tokens=True)
            if tb.input_ids.numel() == 0:
                continue
            masks = position_masks(
                model, tb, rule=ce_rule, exclude_first=exclude_first, budget=remaining
            )
            n_tokens = int(masks.tokens.sum())
            if remaining is not None:
                remaining -= n_tokens
            n_docs += int(masks.tokens.any(dim=1).sum())
            n_special += int((masks.special & masks.tokens.any(dim=1, keepdim=True)).sum())
            ids, att = tb.input_ids, tb.attention_mask
            if decoder:
                logits, hidden = splice_forward(model, ids, att, layer, capture=True)
                clean_logp, targets = next_token_logprobs(logits, ids, masks.predict)
                del logits
                clean.update(cross_entropy(clean_logp, targets))
                logits, _ = splice_forward(model, ids, att, layer, torch.zeros_like, masks.zero)
                logp, _ = next_token_logprobs(logits, ids, masks.predict)
                del logits
                zero.update(cross_entropy(logp, targets), kl_divergence(clean_logp, logp))
                del logp
            else:
                hidden = residual_stream(model, ids, att, [layer])[layer]
            assert hidden is not None
            splice_mask = masks.splice.to(hidden.device)
            x = hidden[splice_mask].float()
            counted = masks.tokens[masks.splice].to(hidden.device)  # which spliced rows are counted tokens
            for i, (itda, k) in enumerate(settings):
                indices, coefficients = dictionaries[id(itda)].encode(x, k)
                x_hat = dictionaries[id(itda)].decode(indices, coefficients)
                recon[i].update(x[counted], x_hat[counted], indices[counted])
                if decoder:
                    logits, _ = splice_forward(model, ids, att, layer, lambda _x, xh=x_hat: xh, masks.splice)
                    logp, _ = next_token_logprobs(logits, ids, masks.predict)
                    del logits
                    spliced[i].update(cross_entropy(logp, targets), kl_divergence(clean_logp, logp))
                    del logp
            bar.update(n_tokens)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    corpus_id = corpus.corpus_id if isinstance(corpus, Corpus) else ""
    corpus_sha = corpus.sha256 if isinstance(corpus, Corpus) else ""
    results = []
    for i, (itda, k) in enumerate(settings):
        metrics = recon[i].result()
        cfg = itda.config
        results.append(
            EvalResult(
                model_name=model.name,
                model_id=model.model_id,
                family=model.family,
                layer=layer,
                site=cfg.site,
                k=k,
                dictionary_size=len(itda),
                dictionary_full_size=full_size or int(cfg.stats.get("cropped_from", len(itda))),
                corpus_id=corpus_id,
                corpus_sha256=corpus_sha,
                dictionary_corpus_id=cfg.corpus_id,
                dictionary_corpus_sha256=cfg.corpus_sha256,
                seq_len=seq_len,
                documents=n_docs,
                tokens=recon[i].tokens,
                ce_positions=clean.positions if decoder else None,
                special_positions=n_special,
                ce_rule=ce_rule,
                exclude_first=exclude_first,
                ce_clean=clean.ce if decoder else None,
                ce_spliced=spliced[i].ce if decoder else None,
                ce_zero=zero.ce if decoder else None,
                ce_loss_score=ce_loss_score(clean.ce, spliced[i].ce, zero.ce) if decoder else None,
                kl_div=spliced[i].kl if decoder else None,
                kl_zero=zero.kl if decoder else None,
                fvu=metrics["fvu"],
                mse=metrics["mse"],
                cosine=metrics["cosine"],
                l0=metrics["l0"],
                l0_distinct=metrics["l0_distinct"],
                atoms_used=metrics["atoms_used"],
                dead_fraction=metrics["dead_fraction"],
                note="" if decoder else ENCODER_NOTE,
                wall_seconds=round(wall, 3),
            )
        )
    return results


def evaluate(
    model: LoadedModel,
    itda: ITDA,
    corpus: Corpus | Sequence[Document],
    *,
    k: int | None = None,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    seq_len: int = 128,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ce_rule: str = DEFAULT_CE_RULE,
    exclude_first: bool = False,
    check_model: bool = True,
    progress: bool = False,
) -> EvalResult:
    """Evaluate one dictionary at L0 ``k`` (default: its config's k) on ``corpus`` (pass held-out text)."""
    return evaluate_many(
        model,
        [(itda, k or itda.config.k)],
        corpus,
        max_tokens=max_tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        ce_rule=ce_rule,
        exclude_first=exclude_first,
        check_model=check_model,
        progress=progress,
    )[0]
