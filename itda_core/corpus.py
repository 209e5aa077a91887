"""Text corpora: the embedded default corpus, local ``.txt``/``.jsonl`` files, and Hugging Face datasets.

A :class:`Corpus` is an ordered list of :class:`Document` objects with a stable ``doc_id`` (the index in the
full corpus order, never renumbered by :meth:`Corpus.split` or :meth:`Corpus.head`), a ``corpus_id`` naming
the source and its version, and a ``sha256`` identifying the exact content, so that dictionaries and
activations built from a corpus can record precisely what they were built from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itda_core.errors import ITDAError

__all__ = ["Corpus", "Document", "corpus_sha256", "load_corpus"]

_FILE_EXTENSIONS = (".txt", ".jsonl")
# Suffixes that mark a spec as a (wrong kind of) file rather than a Hugging Face dataset id.
_OTHER_FILE_EXTENSIONS = {
    ".csv", ".tsv", ".json", ".parquet", ".arrow", ".gz", ".bz2", ".xz", ".zip", ".tar", ".xml", ".html",
    ".md", ".pdf", ".doc", ".docx", ".text", ".cor", ".py",
}  # fmt: skip
_HUB_HINT = "pip install 'itda[hub]' (or: pip install datasets)"


@dataclass(frozen=True)
class Document:
    """One document: ``doc_id`` is its index in the full corpus order (stable across splits and filters),
    ``source`` a human-readable origin such as ``enwiki:Anarchism#3`` or ``notes.txt:12``."""

    doc_id: int
    text: str
    source: str


def corpus_sha256(documents: Iterable[Document]) -> str:
    """sha256 over ``(doc_id, text)`` of all documents in order (length-prefixed, so it is unambiguous)."""
    digest = hashlib.sha256()
    for doc in documents:
        data = doc.text.encode("utf-8")
        digest.update(f"{doc.doc_id}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


@dataclass
class Corpus:
    """An ordered collection of documents. ``corpus[i]`` is the i-th document by position; use
    :meth:`by_id` to look one up by ``doc_id``. ``sha256`` is computed from the documents when left empty."""

    name: str
    documents: list[Document]
    corpus_id: str
    sha256: str = ""
    _index: dict[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = corpus_sha256(self.documents)

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def __getitem__(self, i: int) -> Document:
        return self.documents[i]

    @property
    def texts(self) -> list[str]:
        """The document texts in order."""
        return [doc.text for doc in self.documents]

    def by_id(self, doc_id: int) -> Document:
        """The document with this ``doc_id`` (KeyError if it is not here, e.g. it is in the other split)."""
        if self._index is None or len(self._index) != len(self.documents):
            self._index = {doc.doc_id: i for i, doc in enumerate(self.documents)}
        try:
            return self.documents[self._index[doc_id]]
        except KeyError:
            raise KeyError(f"no document with doc_id {doc_id} in corpus {self.corpus_id!r}") from None

    def head(self, n: int) -> Corpus:
        """The first ``n`` documents (all of them if ``n >= len(self)``, keeping this corpus's identity)."""
        if n < 0:
            raise ITDAError(f"head(n) needs n >= 0, got {n}")
        if n >= len(self.documents):
            return Corpus(self.name, list(self.documents), self.corpus_id, self.sha256)
        return Corpus(f"{self.name}[:{n}]", self.documents[:n], f"{self.corpus_id}:head:{n}")

    def split(self, held_out_fraction: float = 0.1, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Deterministic ``(train, held_out)`` split. Documents keep their ``doc_id`` and their order.

        Each document gets the key sha256(seed, doc_id); the ``round(n * held_out_fraction)`` documents with
        the smallest keys (at least one, and at least one left for training) are held out. The result is the
        same on every machine and Python version (no ``hash()``, no RNG stream), and a document's key does not
        depend on the rest of the corpus."""
        if not 0.0 < held_out_fraction < 1.0:
            raise ITDAError(f"held_out_fraction must be strictly between 0 and 1, got {held_out_fraction}")
        n = len(self.documents)
        if n < 2:
            raise ITDAError(f"corpus {self.corpus_id!r} has {n} document(s): need at least 2 to split")
        n_held = min(n - 1, max(1, round(n * held_out_fraction)))

        def key(doc: Document) -> tuple[bytes, int]:
            return hashlib.sha256(f"itda-split:{seed}:{doc.doc_id}".encode()).digest(), doc.doc_id

        held_ids = {doc.doc_id for doc in sorted(self.documents, key=key)[:n_held]}
        train_docs = [doc for doc in self.documents if doc.doc_id not in held_ids]
        held_docs = [doc for doc in self.documents if doc.doc_id in held_ids]
        tag = f"{held_out_fraction:g}:{seed}"
        return (
            Corpus(f"{self.name}:train", train_docs, f"{self.corpus_id}:train:{tag}"),
            Corpus(f"{self.name}:held_out", held_docs, f"{self.corpus_id}:held_out:{tag}"),
        )


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
        from itda_core.embedded_corpus import CORPUS_ID, load_default_documents

        pairs = load_default_documents(cache_dir)
        corpus = _make_corpus("default", CORPUS_ID, pairs, max_documents)
    elif is_file_spec:
        if not path.is_file():
            raise ITDAError(f"corpus file not found: {spec} (check the path)")
        pairs = _read_txt(path) if spec.lower().endswith(".txt") else _read_jsonl(path, text_field)
        corpus = _make_corpus(spec, f"file:{path.name}", pairs, max_documents)
    elif path.is_dir():
        corpus = _load_hub(spec, str(path), split, text_field, config, max_documents, cache_dir)
    elif path.exists() or path.suffix.lower() in _OTHER_FILE_EXTENSIONS:
        raise ITDAError(
            f"unsupported corpus file type {path.suffix or '(none)'!r} for {spec}: "
            "use a .txt or .jsonl file, 'default', or a Hugging Face dataset id"
        )
    elif spec.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        raise ITDAError(f"corpus path not found: {spec} (check the path)")
    else:
        corpus = _load_hub(spec, spec, split, text_field, config, max_documents, cache_dir)
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


def _make_corpus(
    name: str, corpus_id: str, pairs: list[tuple[str, str]], max_documents: int | None
) -> Corpus:
    """Number the ``(source, text)`` pairs 0..n-1 and wrap them in a Corpus; if ``max_documents`` cuts the
    list, the id gets ``:head:<n>`` so that it never collides with the full corpus's id."""
    if max_documents is not None and len(pairs) > max_documents:
        pairs = pairs[:max_documents]
        corpus_id = f"{corpus_id}:head:{max_documents}"
    docs = [Document(doc_id=i, text=text, source=source) for i, (source, text) in enumerate(pairs)]
    return Corpus(name=name, documents=docs, corpus_id=corpus_id)


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
        text = _text_of(record, text_field, f"{path.name} line {line_no}")
        if text.strip():
            pairs.append((f"{path.name}:{line_no}", text.strip()))
    return pairs


def _text_of(record: dict[str, Any], text_field: str, where: str) -> str:
    """``record[text_field]`` as a string (None counts as empty), or a one-line ITDAError."""
    if text_field not in record:
        keys = ", ".join(sorted(map(str, record))[:10]) or "none"
        raise ITDAError(
            f"{where} has no {text_field!r} field (fields: {keys}): pass text_field=... (--text-field)"
        )
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ITDAError(
            f"{where}: field {text_field!r} is {type(text).__name__}, not text: pick a text field"
        )
    return text


def _load_hub(
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
            text = _text_of(record, text_field, f"dataset {label} row {row_index}")
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
    return _make_corpus(f"hf:{spec}", corpus_id, pairs, max_documents)


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
