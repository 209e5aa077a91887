"""``load_corpus``: one entry point for every corpus source, and the reading of local ``.txt``/``.jsonl`` files.

``"default"`` is the embedded corpus (:mod:`itda_core.corpus.embedded`), a Hugging Face dataset id or folder goes
to :mod:`itda_core.corpus.hub`; every source comes back as a :class:`~itda_core.corpus.documents.Corpus`.
"""

from __future__ import annotations

import json
from pathlib import Path

from itda_core.corpus.documents import Corpus, make_corpus, text_of
from itda_core.corpus.hub import load_hub
from itda_core.errors import ITDAError

_FILE_EXTENSIONS = (".txt", ".jsonl")
# Suffixes that mark a spec as a (wrong kind of) file rather than a Hugging Face dataset id.
_OTHER_FILE_EXTENSIONS = {
    ".csv", ".tsv", ".json", ".parquet", ".arrow", ".gz", ".bz2", ".xz", ".zip", ".tar", ".xml", ".html",
    ".md", ".pdf", ".doc", ".docx", ".text", ".cor", ".py",
}  # fmt: skip


def load_corpus(
    spec: str = "default",
    *,
    split: str = "train",
    text_field: str = "text",
    config: str | None = None,
    max_documents: int | None = None,
    cache_dir: str | Path | None = None,
) -> Corpus:
    """Load a corpus.

    ``spec`` is ``"default"`` (the embedded Wikipedia + news corpus), a ``.txt`` file (blank-line-separated
    blocks if it has blank lines, else one document per line), a ``.jsonl`` file (one object per line, text in
    ``text_field``), or a Hugging Face dataset id / local dataset folder (needs ``datasets``; ``split`` and
    ``config`` apply only there). Empty documents are dropped before ids are assigned. ``max_documents`` keeps
    the first n documents. ``cache_dir`` is the folder for the built default corpus (default
    ``$ITDA_CACHE_DIR/corpus``, else ``~/.cache/itda/corpus``) and, under ``hf/``, the datasets cache."""
    if max_documents is not None and max_documents <= 0:
        raise ITDAError(f"max_documents must be a positive number, got {max_documents}")
    spec = str(spec)
    path = Path(spec).expanduser()
    is_file_spec = spec.lower().endswith(_FILE_EXTENSIONS)
    if spec == "default" or is_file_spec:
        _reject_hub_options(spec, split, config)
    if spec == "default":
        from itda_core.corpus.embedded import CORPUS_ID, load_default_documents

        pairs = load_default_documents(cache_dir)
        corpus = make_corpus("default", CORPUS_ID, pairs, max_documents)
    elif is_file_spec:
        if not path.is_file():
            raise ITDAError(f"corpus file not found: {spec} (check the path)")
        pairs = _read_txt(path) if spec.lower().endswith(".txt") else _read_jsonl(path, text_field)
        corpus = make_corpus(spec, f"file:{path.name}", pairs, max_documents)
    elif path.is_dir():
        corpus = load_hub(spec, str(path), split, text_field, config, max_documents, cache_dir)
    elif path.exists() or path.suffix.lower() in _OTHER_FILE_EXTENSIONS:
        raise ITDAError(
            f"unsupported corpus file type {path.suffix or '(none)'!r} for {spec}: "
            "use a .txt or .jsonl file, 'default', or a Hugging Face dataset id"
        )
    elif spec.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        raise ITDAError(f"corpus path not found: {spec} (check the path)")
    else:
        corpus = load_hub(spec, spec, split, text_field, config, max_documents, cache_dir)
    if len(corpus) == 0:
        raise ITDAError(f"corpus {spec} contains no (non-empty) documents: give it some text")
    return corpus


def _reject_hub_options(spec: str, split: str, config: str | None) -> None:
    """``split``/``config`` select a Hugging Face split; silently ignoring them elsewhere would mislead."""
    if split != "train" or config is not None:
        raise ITDAError(
            f"split/config only apply to Hugging Face datasets, not to {spec!r}: "
            "use Corpus.split() for a held-out part"
        )


def _read_text_file(path: Path) -> str:
    """File contents as UTF-8 (with or without BOM), or a one-line ITDAError."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ITDAError(f"{path} is not UTF-8 text (byte {exc.start}): convert it to UTF-8") from exc
    except OSError as exc:
        raise ITDAError(f"cannot read corpus file {path}: {exc.strerror or exc}") from exc


def _read_txt(path: Path) -> list[tuple[str, str]]:
    """Blank-line-separated blocks if the file has a blank line between text, else one document per line;
    documents are stripped and empty ones dropped. Sources are ``<file name>:<first line number>``."""
    lines = _read_text_file(path).splitlines()
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    blocks_mode = bool(nonblank) and any(not lines[i].strip() for i in range(nonblank[0], nonblank[-1]))
    pairs: list[tuple[str, str]] = []
    if not blocks_mode:
        for i in nonblank:
            pairs.append((f"{path.name}:{i + 1}", lines[i].strip()))
        return pairs
    block: list[str] = []
    start = 0
    for i, line in enumerate([*lines, ""]):
        if line.strip():
            if not block:
                start = i
            block.append(line.rstrip())
        elif block:
            pairs.append((f"{path.name}:{start + 1}", "\n".join(block).strip()))
            block = []
    return pairs


def _read_jsonl(path: Path, text_field: str) -> list[tuple[str, str]]:
    """One JSON object per line with the text under ``text_field``; blank lines are skipped, empty texts
    dropped. Any bad line raises ITDAError naming the line."""
    pairs: list[tuple[str, str]] = []
    for line_no, line in enumerate(_read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ITDAError(
                f"{path.name} line {line_no} is not valid JSON ({exc.msg}): fix or remove it"
            ) from exc
        if not isinstance(record, dict):
            raise ITDAError(f"{path.name} line {line_no} is not a JSON object: each line must be {{...}}")
        text = text_of(record, text_field, f"{path.name} line {line_no}")
        if text.strip():
            pairs.append((f"{path.name}:{line_no}", text.strip()))
    return pairs
