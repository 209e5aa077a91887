"""Activation extraction: the residual stream after chosen blocks, streamed in batches with provenance.

One forward pass serves every requested layer (a hook on each block), and the pass is cut short after
the deepest requested block, so early layers cost a fraction of a full forward. Padding never reaches
the output: only real token positions are returned, each with its document, position and characters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from itda_core.corpus import Corpus, Document
from itda_core.errors import ITDAError
from itda_core.models import LoadedModel
from itda_core.progress import Progress
from itda_core.provenance import Provenance
from itda_core.tokenize import CHARS_PER_TOKEN as CHARS_PER_TOKEN  # re-exported: tokenisation lives there
from itda_core.tokenize import TokenizedBatch as TokenizedBatch
from itda_core.tokenize import _encode_prefixes as _encode_prefixes
from itda_core.tokenize import tokenize_documents


@dataclass
class ExtractConfig:
    """How activations are read from a corpus."""

    seq_len: int = 128  # tokens per document, as in the paper (longer documents are truncated)
    batch_size: int = 32  # documents per forward pass
    skip_special_tokens: bool = False  # drop BOS/CLS/SEP positions (the paper keeps them)
    max_tokens: int | None = None  # stop after this many activations
    progress: bool = True  # show tokens, tokens/s and ETA on stderr


@dataclass
class ActivationBatch:
    """Activations of one batch: ``acts[layer]`` is [n, d_model] on the model's device; row i of every
    layer belongs to ``provenance`` row i."""

    acts: dict[int, Tensor]
    provenance: Provenance
    documents: int = 0  # documents consumed by this batch
    extra: dict[str, Tensor] = field(default_factory=dict)
    complete: list[int] = field(default_factory=list)  # ids of the documents all of whose tokens are here
    partial: tuple[int, int] | None = None  # (doc id, tokens kept) of a document a token budget cut short

    def __len__(self) -> int:
        return len(self.provenance)


# What computes the residual stream of a tokenised batch: (model, input_ids, attention_mask, layers) -> {layer:
# [b, t, d]}. In process it is residual_stream; itda_core.models.remote gives one that runs through nnsight (NDIF).
Forward = Callable[[LoadedModel, Tensor, Tensor, Sequence[int]], dict[int, Tensor]]


class _StopForward(Exception):
    """Raised from the deepest hook to end the forward pass early."""


def residual_stream(
    model: LoadedModel, input_ids: Tensor, attention_mask: Tensor, layers: Sequence[int]
) -> dict[int, Tensor]:
    """Residual stream after each block in ``layers`` ([b, t, d] each, on ``model.device`` even when a device map
    spreads the blocks over devices or offloads them), from one forward pass of the base model that stops after
    the deepest of them. Never computes logits."""
    wanted = sorted(set(layers))
    if not wanted:
        return {}
    captured: dict[int, Tensor] = {}
    deepest = wanted[-1]

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[layer] = hidden.detach().to(model.device)
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [model.blocks[layer].register_forward_hook(make_hook(layer)) for layer in wanted]
    try:
        kwargs = {"input_ids": input_ids.to(model.device), "attention_mask": attention_mask.to(model.device)}
        if model.family == "decoder":
            kwargs["use_cache"] = False
        with torch.inference_mode():
            model.base(**kwargs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer for layer in wanted if layer not in captured]
    if missing:  # pragma: no cover - would mean the blocks were not all called
        raise RuntimeError(f"layers {missing} were not reached in the forward pass")
    return captured


def _complete_before(doc_ids: Tensor, order: list[int], cut: int) -> tuple[list[int], tuple[int, int] | None]:
    """The documents (ids, in ``order``) whose tokens all lie in the first ``cut`` rows of a doc-major batch,
    and (id, tokens kept) of the one the cut falls inside, if any."""
    ids, n_tokens = torch.unique(doc_ids, return_counts=True)
    counts = dict(zip(ids.tolist(), n_tokens.tolist(), strict=True))
    complete, start = [], 0
    for doc in order:
        n = counts.get(doc, 0)
        if start + n <= cut:
            complete.append(doc)
            start += n
            continue
        return complete, ((doc, cut - start) if cut > start else None)
    return complete, None


def _batches(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def extract(
    model: LoadedModel,
    corpus: Corpus | Sequence[Document],
    layers: Sequence[int],
    seq_len: int = 128,
    batch_size: int = 32,
    *,
    skip_special_tokens: bool = False,
    max_tokens: int | None = None,
    progress: bool = True,
    max_documents: int | None = None,
    forward: Forward | None = None,
) -> Iterator[ActivationBatch]:
    """Stream :class:`ActivationBatch` es over ``corpus`` for ``layers`` (block indices, 0-based).

    Memory stays bounded by one batch however large the corpus; ``max_tokens`` stops early (possibly inside a
    document), ``max_documents`` after that many whole documents (what comparisons across tokenizers need:
    the same text for every model). Activations are float32 on CPU (the model's dtype on CUDA) and stay on
    the model's device. ``forward`` replaces the in-process forward pass (:func:`residual_stream`), e.g. by a
    remote one: tokenisation, batching and provenance stay the same.
    """
    if seq_len < 1:
        raise ITDAError(f"seq_len must be at least 1 (got {seq_len})")
    if batch_size < 1:
        raise ITDAError(f"batch_size must be at least 1 (got {batch_size})")
    if max_tokens is not None and max_tokens < 1:
        raise ITDAError(f"max_tokens must be positive (got {max_tokens})")
    if max_documents is not None and max_documents < 1:
        raise ITDAError(f"max_documents must be positive (got {max_documents})")
    wanted = model.check_layers(list(layers))
    documents = list(corpus.documents) if isinstance(corpus, Corpus) else list(corpus)
    if not documents:
        raise ITDAError("the corpus has no documents")
    if max_documents is not None:
        documents = documents[:max_documents]
    # An estimate for the ETA: documents times the truncation length, capped by max_tokens.
    estimate = len(documents) * seq_len
    total = min(estimate, max_tokens) if max_tokens else estimate
    bar = Progress(total=total, unit="tok", desc=f"{model.name} L{wanted[0]}-{wanted[-1]}", enabled=progress)
    done = 0
    try:
        for docs in _batches(documents, batch_size):
            tb = tokenize_documents(model, docs, seq_len, skip_special_tokens)
            if len(tb.provenance) == 0:
                continue
            hidden = (forward or residual_stream)(model, tb.input_ids, tb.attention_mask, wanted)
            keep = tb.keep.to(model.device)
            acts = {layer: h[keep] for layer, h in hidden.items()}
            prov = tb.provenance
            complete, partial = [doc.doc_id for doc in docs], None
            if max_tokens is not None and done + len(prov) > max_tokens:
                cut = max_tokens - done
                complete, partial = _complete_before(prov.doc_id, [doc.doc_id for doc in docs], cut)
                acts = {layer: a[:cut] for layer, a in acts.items()}
                prov = prov.select(torch.arange(cut))
            done += len(prov)
            bar.update(len(prov))
            yield ActivationBatch(acts=acts, provenance=prov, documents=len(docs), complete=complete,
                                  partial=partial)
            if max_tokens is not None and done >= max_tokens:
                break
    finally:
        bar.close()
