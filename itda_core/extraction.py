"""Activation extraction: the residual stream after chosen blocks, streamed in batches with provenance.

One forward pass serves every requested layer (a hook on each block), and the pass is cut short after
the deepest requested block, so early layers cost a fraction of a full forward. Padding never reaches
the output: only real token positions are returned, each with its document, position and characters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from itda_core.corpus import Corpus, Document
from itda_core.errors import ITDAError
from itda_core.models import LoadedModel
from itda_core.progress import Progress
from itda_core.provenance import Provenance


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


class _StopForward(Exception):
    """Raised from the deepest hook to end the forward pass early."""


@dataclass
class TokenizedBatch:
    """Right-padded input ids for a batch of documents, with the provenance of every real position."""

    input_ids: Tensor  # [b, t]
    attention_mask: Tensor  # [b, t]
    keep: Tensor  # [b, t] bool: positions returned as activations
    provenance: Provenance  # rows follow keep.nonzero() order (document-major)


# A document is tokenised from a prefix of this many characters per kept token (a generous bound: tokens average
# about 4 characters), so a 25 MB document costs what a short one does; see _encode_prefixes.
CHARS_PER_TOKEN = 32


def _settled(ids: list[int], offsets: list[tuple[int, int]], special: list[int], seq_len: int, cut: int) -> bool:
    """Whether the encoding of a text's first ``cut`` characters is that of the whole text: it was truncated to
    ``seq_len`` tokens and every kept token ends in the first half of the prefix, so the cut lies past the
    pre-tokens (words) that the kept tokens come from."""
    if len(ids) < seq_len:
        return False
    return all(end <= cut // 2 for (_, end), is_special in zip(offsets, special, strict=True) if not is_special)


def _encode_prefixes(tok: Any, texts: list[str], seq_len: int) -> Any:
    """Tokenise (truncated to ``seq_len``, with offsets and special-token masks) only a prefix of each long text:
    ``seq_len * CHARS_PER_TOKEN`` characters, four times more while the result is not :func:`_settled` (a text
    of spaces or one huge word), the whole text at worst. The ids and offsets equal those of tokenising the whole
    text and truncating, for every tokenizer that splits text into words first and none longer than half the
    prefix (tests/test_extract.py compares them on long, blank and word-less documents)."""
    kwargs = {"truncation": True, "max_length": seq_len, "add_special_tokens": True,
              "return_offsets_mapping": True, "return_special_tokens_mask": True}  # fmt: skip
    limit = seq_len * CHARS_PER_TOKEN
    enc = tok([t[:limit] for t in texts], **kwargs)
    for i, text in enumerate(texts):
        cut = limit
        while len(text) > cut and not _settled(
            enc["input_ids"][i], enc["offset_mapping"][i], enc["special_tokens_mask"][i], seq_len, cut
        ):
            cut *= 4
            again = tok([text[:cut]], **kwargs)
            for key in again:
                enc[key][i] = again[key][0]
    return enc


def tokenize_documents(
    model: LoadedModel, documents: Sequence[Document], seq_len: int, skip_special_tokens: bool = False
) -> TokenizedBatch:
    """Tokenise with offsets, truncate to ``seq_len`` and right-pad by hand (so the tokenizer's own padding
    side and pad token, which differ between models, cannot move positions). Long documents are cut before
    tokenising (:func:`_encode_prefixes`), with the same result."""
    tok = model.tokenizer
    n_special = int(tok.num_special_tokens_to_add(pair=False))
    if seq_len < n_special:  # the tokenizer would then not truncate at all, and return whole documents
        raise ITDAError(f"seq_len {seq_len} is shorter than the {n_special} special tokens this tokenizer adds; "
                        f"use a seq_len of at least {n_special + 1}")
    enc = _encode_prefixes(tok, [d.text for d in documents], seq_len)
    lengths = [len(ids) for ids in enc["input_ids"]]
    width = max(lengths) if lengths else 0
    b = len(documents)
    input_ids = torch.zeros((b, width), dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    keep = torch.zeros((b, width), dtype=torch.bool)
    doc_col: list[int] = []
    pos_col: list[int] = []
    tid_col: list[int] = []
    start_col: list[int] = []
    end_col: list[int] = []
    strs: list[str] = []
    for i, (doc, ids) in enumerate(zip(documents, enc["input_ids"], strict=True)):
        n = len(ids)
        if n == 0:
            continue
        input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
        attention[i, :n] = 1
        special = enc["special_tokens_mask"][i]
        offsets = enc["offset_mapping"][i]
        token_strs = tok.convert_ids_to_tokens(ids)
        for p in range(n):
            if skip_special_tokens and special[p]:
                continue
            keep[i, p] = True
            doc_col.append(doc.doc_id)
            pos_col.append(p)
            tid_col.append(ids[p])
            s, e = offsets[p]
            if special[p]:
                s = e = 0
            start_col.append(int(s))
            end_col.append(int(e))
            strs.append(token_strs[p])
    prov = Provenance(
        torch.tensor(doc_col, dtype=torch.long),
        torch.tensor(pos_col, dtype=torch.long),
        torch.tensor(tid_col, dtype=torch.long),
        torch.tensor(start_col, dtype=torch.long),
        torch.tensor(end_col, dtype=torch.long),
        token_str=strs,
    )
    return TokenizedBatch(input_ids, attention, keep, prov)


def residual_stream(
    model: LoadedModel, input_ids: Tensor, attention_mask: Tensor, layers: Sequence[int]
) -> dict[int, Tensor]:
    """Residual stream after each block in ``layers`` ([b, t, d] each), from one forward pass of the base
    model that stops after the deepest of them. Never computes logits."""
    wanted = sorted(set(layers))
    if not wanted:
        return {}
    captured: dict[int, Tensor] = {}
    deepest = wanted[-1]

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[layer] = hidden.detach()
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
) -> Iterator[ActivationBatch]:
    """Stream :class:`ActivationBatch` es over ``corpus`` for ``layers`` (block indices, 0-based).

    Memory stays bounded by one batch however large the corpus; ``max_tokens`` stops early (possibly inside a
    document), ``max_documents`` after that many whole documents (what comparisons across tokenizers need:
    the same text for every model). Activations are float32 on CPU (the model's dtype on CUDA) and stay on
    the model's device.
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
            hidden = residual_stream(model, tb.input_ids, tb.attention_mask, wanted)
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
