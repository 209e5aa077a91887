"""Hugging Face datasets as corpora (hub ids or local dataset folders), with one-line errors and advice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from itda_core.corpus.documents import Corpus, make_corpus, text_of
from itda_core.errors import ITDAError

_HUB_HINT = "pip install 'itda[hub]' (or: pip install datasets)"


def load_hub(
    spec: str,
    source: str,
    split: str,
    text_field: str,
    config: str | None,
    max_documents: int | None,
    cache_dir: str | Path | None,
) -> Corpus:
    """A Hugging Face dataset (hub id or local folder) via ``datasets.load_dataset``; streams when only the
    first ``max_documents`` rows are needed. Library errors become one-line ITDAErrors."""
    try:
        import datasets
    except ImportError as exc:
        raise ITDAError(f"loading the dataset {spec!r} needs the 'datasets' package: {_HUB_HINT}") from exc
    kwargs: dict[str, Any] = {"split": split}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(Path(cache_dir).expanduser() / "hf")
    if max_documents is not None:
        kwargs["streaming"] = True
    label = spec + (f" (config {config})" if config else "") + f" split {split!r}"
    try:
        dataset = datasets.load_dataset(source, config, **kwargs)
        pairs: list[tuple[str, str]] = []
        for row_index, record in enumerate(dataset):
            text = text_of(record, text_field, f"dataset {label} row {row_index}")
            if text.strip():
                pairs.append((f"hf:{spec}:{split}:{row_index}", text.strip()))
                if max_documents is not None and len(pairs) > max_documents:
                    break
    except ITDAError:
        raise
    except Exception as exc:  # datasets raises many types (hub, network, config, split, file errors)
        raise ITDAError(
            f"could not load Hugging Face dataset {label}: {_one_line(exc)}. {_hub_advice(exc)}"
        ) from exc
    corpus_id = f"hf:{spec}" + (f":{config}" if config else "") + f":{split}"
    return make_corpus(f"hf:{spec}", corpus_id, pairs, max_documents)


def _one_line(exc: BaseException) -> str:
    """The first line of an exception message, shortened: user-facing errors are one line."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip().rstrip(".") if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _hub_advice(exc: BaseException) -> str:
    """What to do about a failed ``load_dataset``: network problems differ from a wrong name/config/split."""
    text = f"{type(exc).__name__} {exc}".lower()
    if any(word in text for word in ("connection", "offline", "network", "resolve", "timed out", "timeout")):
        return "Check your network connection to huggingface.co, or use a local .txt/.jsonl file"
    return "Check the dataset name, config and split (and network access), or use a local .txt/.jsonl file"
