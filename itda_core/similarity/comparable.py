"""Whether two dictionaries' atoms can be compared: the same corpus and documents, and for position keys the
same tokenizer, ``seq_len`` and special-token handling; which method (``keys`` or ``spans``) a pair takes."""

from __future__ import annotations

from itda_core.dictionary import ITDAConfig
from itda_core.errors import ITDAError

__all__ = ["METHODS", "check_comparable", "choose_method", "dictionary_label", "same_tokenizer"]

METHODS = ("auto", "keys", "spans")


def dictionary_label(config: ITDAConfig) -> str:
    """How a dictionary is named in messages and atom-set labels: model and layer."""
    return f"{config.model_name} L{config.layer}"


def _tokenizer_fingerprint(c: ITDAConfig) -> str:
    return str(getattr(c, "tokenizer_sha256", "") or c.stats.get("tokenizer_sha256", "") or "")


def same_tokenizer(a: ITDAConfig, b: ITDAConfig) -> bool:
    """Whether two configs record the same tokenizer: the same tokenizer fingerprint when both record one
    (``tokenizer_sha256``, in the config or its stats), else the same ``model_id`` or the same non-empty
    ``tokenizer`` string (a Hugging Face name or path). Conservative: when this says no, spans are used,
    which give the same answer for identical tokenizers."""
    fa, fb = _tokenizer_fingerprint(a), _tokenizer_fingerprint(b)
    if fa and fb:
        return fa == fb
    if a.model_id and a.model_id == b.model_id:
        return True
    return bool(a.tokenizer) and a.tokenizer.strip().rstrip("/") == b.tokenizer.strip().rstrip("/")


def _corpus_text(c: ITDAConfig) -> str:
    sha = f" (sha256 {c.corpus_sha256[:12]})" if c.corpus_sha256 else ""
    return f"{c.corpus_id or '?'}{sha}"


def _check_same_documents(a: ITDAConfig, b: ITDAConfig, la: str, lb: str) -> None:
    """Refuse two dictionaries trained on different documents of one corpus (e.g. token budgets that end in
    different documents for different tokenizers): their atoms were drawn from different text."""
    if a.documents_sha256 and b.documents_sha256:
        if a.documents_sha256 != b.documents_sha256:
            raise ITDAError(f"{la} and {lb} were trained on different documents of the corpus ({a.documents_seen:,} "
                            f"and {b.documents_seen:,} whole documents); Jaccard needs the same text for both: train "
                            "both with the same --max-documents")
        return
    if a.tokens_seen == b.tokens_seen and same_tokenizer(a, b):
        return  # the same budget with the same tokenizer: the same documents
    raise ITDAError(f"cannot tell whether {la} and {lb} saw the same documents (one was built before itda recorded "
                    f"them; {a.tokens_seen:,} and {b.tokens_seen:,} tokens); retrain both with the same "
                    "--max-documents (or rebuild the store)")


def check_comparable(a: ITDAConfig, b: ITDAConfig, method: str = "keys") -> None:
    """Raise :class:`ITDAError` (one line) unless provenance of ``a`` and ``b`` can be compared by ``method``.

    Both: the same corpus (sha256 when both record one, else corpus_id) and the same training documents
    (``documents_sha256``; for dictionaries that do not record it, the same tokenizer and token count). ``keys``
    also needs the same tokenizer, ``seq_len`` and ``skip_special_tokens``."""
    la, lb = dictionary_label(a), dictionary_label(b)
    if a.corpus_sha256 and b.corpus_sha256:
        same_corpus = a.corpus_sha256 == b.corpus_sha256
    elif a.corpus_id and b.corpus_id:
        same_corpus = a.corpus_id == b.corpus_id
    else:
        raise ITDAError(f"cannot tell whether {la} and {lb} were built on the same corpus: a config records "
                        "neither corpus_sha256 nor corpus_id")
    if not same_corpus:
        raise ITDAError(f"{la} was built on corpus {_corpus_text(a)} but {lb} on {_corpus_text(b)}; "
                        "Jaccard needs the same documents (the same corpus and split) for both")
    _check_same_documents(a, b, la, lb)
    if method == "spans":
        return
    if method != "keys":
        raise ValueError(f"method must be 'keys' or 'spans', not {method!r}")
    if not same_tokenizer(a, b):
        raise ITDAError(f"{la} (tokenizer {a.tokenizer or a.model_id}) and {lb} (tokenizer "
                        f"{b.tokenizer or b.model_id}) use different tokenizers, so token positions differ; "
                        "use jaccard_by_span (method 'spans')")
    if a.seq_len != b.seq_len:
        raise ITDAError(f"{la} used seq_len {a.seq_len} but {lb} used {b.seq_len}; position keys are only "
                        "comparable with the same truncation (or use jaccard_by_span)")
    if a.skip_special_tokens != b.skip_special_tokens:
        raise ITDAError(f"{la} has skip_special_tokens={a.skip_special_tokens} but {lb} has "
                        f"{b.skip_special_tokens}; build both the same way (or use jaccard_by_span)")


def choose_method(a: ITDAConfig, b: ITDAConfig, method: str = "auto") -> str:
    """``keys`` or ``spans`` for a pair: ``auto`` picks keys when the configs say the tokenizer, seq_len and
    special-token handling are the same, spans otherwise."""
    if method not in METHODS:
        raise ITDAError(f"unknown Jaccard method {method!r}; use one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    same = same_tokenizer(a, b) and a.seq_len == b.seq_len and a.skip_special_tokens == b.skip_special_tokens
    return "keys" if same else "spans"
