"""Tokenising documents exactly as extraction numbers positions (truncated, right-padded by hand, with offsets),
and the text each token of a span shows. No model runs here: only its tokenizer, so the store can use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from itda_core.errors import ITDAError
from itda_core.provenance import Provenance

if TYPE_CHECKING:
    from itda_core.corpus import Document
    from itda_core.models import LoadedModel


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


def token_pieces(
    text: str, spans: Sequence[tuple[int, int]], token_strs: Sequence[str]
) -> list[tuple[str, str, bool]]:
    """What each token of a window shows, as (gap, text, special): ``gap`` is the text between the previous
    token and this one (a space a tokenizer leaves out of its offsets), ``text`` the characters from there to
    the token's end (so the pieces of one split character, e.g. an emoji, show it once), and a token that
    covers no characters (BOS, CLS) shows its own token string with ``special`` set."""
    out: list[tuple[str, str, bool]] = []
    covered: int | None = None
    for (start, end), token in zip(spans, token_strs, strict=True):
        if end <= start:
            out.append(("", token, True))
            continue
        gap = text[covered:start] if covered is not None and covered < start else ""
        lo = max(start, covered) if covered is not None else start
        out.append((gap, text[lo:end] if end > lo else "", False))
        covered = end if covered is None else max(covered, end)
    return out
