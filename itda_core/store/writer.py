"""Writing dictionaries (with their model, corpus documents and tokens) into the store, replacing and deleting them.

:func:`write_dictionary` is what ``itda train --store`` calls. Everything one dictionary needs is written
in ONE transaction, through Arrow tables (never row by row): an interrupted or killed write leaves the
store exactly as it was before that dictionary. The slow preparation (tokenising the corpus, building the
Arrow tables) happens before the store is opened, so the file lock is held only for the inserts. Reading
back is :mod:`itda_core.store.reader`; what identifies a dictionary, :mod:`itda_core.store.identity`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import torch

from itda_core.corpus import Corpus
from itda_core.dictionary import ITDA
from itda_core.provenance import Provenance
from itda_core.store.connection import StoreError, connect_readonly, connect_write, transaction
from itda_core.store.identity import SplitInfo, dictionary_data_key, options_key, split_info, tokenizer_id
from itda_core.store.reader import StoredDictionary, find_dictionary, stored_dictionary
from itda_core.store.schema import PER_DICTIONARY, SchemaMismatch, first_row
from itda_core.tokenize import tokenize_documents

if TYPE_CHECKING:
    from itda_core.models import LoadedModel

TOKENIZE_CHUNK = 256  # documents per tokenizer call when storing a corpus's tokens


class DictionaryExists(StoreError):
    """The store already holds this dictionary (same model, layer, corpus, options and data)."""


@dataclass(frozen=True)
class WriteResult:
    """What :func:`store_dictionary` did: the dict_id written, and the stored dictionary it replaced (if any)."""

    dict_id: int
    replaced: StoredDictionary | None = None

    def summary(self) -> str:
        """One line for the CLI: what was replaced (and that its index was dropped), or what was added."""
        if self.replaced is None:
            return f"added dictionary {self.dict_id}"
        dropped = "; its index was dropped: run `itda index`" if self.replaced.indexed else ""
        return f"replaced {self.replaced.describe()}{dropped}"


# ---- Arrow tables ----------------------------------------------------------------------------------------


def documents_table(corpus: Corpus, info: SplitInfo) -> pa.Table:
    """One row per document of the full corpus, with its part of the split ('train' / 'held_out')."""
    held: set[int] = set()
    if info.held_out_fraction is not None:
        _, held_part = corpus.split(info.held_out_fraction, info.seed or 0)
        held = {d.doc_id for d in held_part.documents}
    docs = corpus.documents
    return pa.table(
        {
            "corpus_id": pa.array([corpus.corpus_id] * len(docs), pa.string()),
            "doc_id": pa.array([d.doc_id for d in docs], pa.int32()),
            "split": pa.array(["held_out" if d.doc_id in held else "train" for d in docs], pa.string()),
            "source": pa.array([d.source for d in docs], pa.string()),
            "text": pa.array([d.text for d in docs], pa.string()),
        }
    )


def tokens_table(model: LoadedModel, corpus: Corpus, seq_len: int, tok_id: str) -> pa.Table:
    """Every token position < ``seq_len`` of every document, tokenised exactly as extraction does."""
    special_ids = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    parts: list[Provenance] = []
    docs = corpus.documents
    for i in range(0, len(docs), TOKENIZE_CHUNK):
        parts.append(tokenize_documents(model, docs[i : i + TOKENIZE_CHUNK], seq_len).provenance)
    prov = Provenance.concat(parts)
    n = len(prov)
    token_ids = prov.token_id.numpy()
    return pa.table(
        {
            "tokenizer_id": pa.array([tok_id] * n, pa.string()),
            "seq_len": pa.array(np.full(n, seq_len, dtype=np.int32)),
            "corpus_id": pa.array([corpus.corpus_id] * n, pa.string()),
            "doc_id": pa.array(prov.doc_id.numpy().astype(np.int32)),
            "position": pa.array(prov.position.numpy().astype(np.int32)),
            "token_id": pa.array(token_ids.astype(np.int32)),
            "token_str": pa.array(prov.token_str, pa.string()),
            "char_start": pa.array(prov.char_start.numpy().astype(np.int32)),
            "char_end": pa.array(prov.char_end.numpy().astype(np.int32)),
            "special": pa.array(
                np.isin(token_ids, list(special_ids)) if special_ids else np.zeros(n, dtype=bool)
            ),
        }
    )


def token_text(text: str, start: int, end: int, token_str: str) -> str:
    """What a token covers in its document; special tokens (empty span) show their own string."""
    return text[start:end] if end > start else token_str


def atoms_table(itda: ITDA, corpus: Corpus, dict_id: int) -> pa.Table:
    """One row per atom: insertion index, provenance, source text, add-error and the unit vector."""
    prov = itda.provenance
    m, d = itda.atoms.shape
    vectors = itda.atoms.detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1)
    starts, ends = prov.char_start.tolist(), prov.char_end.tolist()
    texts = []
    for doc_id, s, e, ts in zip(prov.doc_id.tolist(), starts, ends, prov.token_str, strict=True):
        try:
            texts.append(token_text(corpus.by_id(doc_id).text, s, e, ts))
        except KeyError:
            raise StoreError(f"atom source document {doc_id} is not in corpus {corpus.corpus_id}") from None
    return pa.table(
        {
            "dict_id": pa.array(np.full(m, dict_id, dtype=np.int32)),
            "atom": pa.array(np.arange(m, dtype=np.int32)),
            "doc_id": pa.array(prov.doc_id.numpy().astype(np.int32)),
            "position": pa.array(prov.position.numpy().astype(np.int32)),
            "token_id": pa.array(prov.token_id.numpy().astype(np.int32)),
            "token_str": pa.array(prov.token_str, pa.string()),
            "token_text": pa.array(texts, pa.string()),
            "char_start": pa.array(np.asarray(starts, dtype=np.int32)),
            "char_end": pa.array(np.asarray(ends, dtype=np.int32)),
            "add_error": pa.array(itda.add_error.numpy().astype(np.float32)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors, pa.float32()), d).cast(
                pa.list_(pa.float32())
            ),
            "init_count": pa.array(itda.init_count.numpy().astype(np.int32)),
        }
    )


# ---- writing ---------------------------------------------------------------------------------------------


def _has(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> bool:
    """Whether a query returns any row."""
    return first_row(con, sql, params) is not None


def _tokens_missing(store: Path, corpus_id: str, tok_id: str, seq_len: int, timeout: float) -> bool:
    """Whether the store lacks this tokenizer's tokens of the corpus (a short read-only look)."""
    if not store.is_file():
        return True
    try:
        with connect_readonly(store, timeout=timeout) as con:
            return not _has(
                con,
                "SELECT 1 FROM tokenizations WHERE tokenizer_id = ? AND seq_len = ? AND corpus_id = ?",
                [tok_id, seq_len, corpus_id],
            )
    except SchemaMismatch:  # an older store: the write migrates it, then looks again under the lock
        return True


def _insert_corpus(con: duckdb.DuckDBPyConnection, corpus: Corpus, info: SplitInfo, docs: pa.Table) -> None:
    """Store the corpus and its documents once; check a stored one is the same corpus and split."""
    row = first_row(
        con,
        "SELECT sha256, held_out_fraction, split_seed FROM corpora WHERE corpus_id = ?",
        [corpus.corpus_id],
    )
    if row is not None:
        sha, frac, seed = row
        if sha != corpus.sha256:
            raise StoreError(
                f"the store already holds a different corpus named {corpus.corpus_id} "
                "(sha256 differs); use another store path"
            )
        if (
            info.held_out_fraction is not None
            and frac is not None
            and (frac, seed) != (info.held_out_fraction, info.seed)
        ):
            raise StoreError(
                f"the store's documents of {corpus.corpus_id} are split with held-out fraction {frac:g}, "
                f"seed "
                f"{seed}; this dictionary used {info.held_out_fraction:g}, seed {info.seed}. Train with the "
                "same split or use another store path"
            )
        if info.held_out_fraction is not None and frac is None:  # first split dictionary labels the documents
            con.register("_docs_in", docs)
            con.execute(
                "UPDATE documents SET split = d.split FROM _docs_in d "
                "WHERE documents.corpus_id = d.corpus_id AND documents.doc_id = d.doc_id"
            )
            con.execute(
                "UPDATE corpora SET held_out_fraction = ?, split_seed = ? WHERE corpus_id = ?",
                [info.held_out_fraction, info.seed, corpus.corpus_id],
            )
            con.unregister("_docs_in")
        return
    con.execute(
        "INSERT INTO corpora VALUES (?, ?, ?, ?, ?, ?, ?, now())",
        [
            corpus.corpus_id,
            corpus.name,
            corpus.sha256,
            len(corpus),
            sum(len(d.text) for d in corpus.documents),
            info.held_out_fraction,
            info.seed,
        ],
    )
    con.register("_docs_in", docs)
    con.execute("INSERT INTO documents SELECT * FROM _docs_in ORDER BY doc_id")
    con.unregister("_docs_in")


def _insert_tokens(
    con: duckdb.DuckDBPyConnection,
    model: LoadedModel,
    tok_id: str,
    seq_len: int,
    corpus_id: str,
    tokens: pa.Table,
) -> None:
    """Store a tokenizer's tokens of the corpus unless they are already there."""
    if _has(
        con,
        "SELECT 1 FROM tokenizations WHERE tokenizer_id = ? AND seq_len = ? AND corpus_id = ?",
        [tok_id, seq_len, corpus_id],
    ):
        return
    con.register("_tokens_in", tokens)
    con.execute("INSERT INTO tokens SELECT * FROM _tokens_in ORDER BY doc_id, position")
    con.unregister("_tokens_in")
    name = str(getattr(model.tokenizer, "name_or_path", "")) or model.name
    con.execute(
        "INSERT INTO tokenizations VALUES (?, ?, ?, ?, ?, now())",
        [tok_id, seq_len, corpus_id, name, tokens.num_rows],
    )


def _insert_model(con: duckdb.DuckDBPyConnection, model: LoadedModel, tok_id: str) -> None:
    """Store the model's row unless it is already there."""
    con.execute(
        "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
        [
            model.model_id,
            model.name,
            model.family,
            model.architecture,
            model.n_layers,
            model.d_model,
            tok_id,
            model.source,
        ],
    )


def exists_message(store: str | Path, existing: list[StoredDictionary]) -> str:
    """The one-line refusal to overwrite ``existing`` without being asked to."""
    what = existing[0].describe() + (f" and {len(existing) - 1} more" if len(existing) > 1 else "")
    return (f"{store} already holds {what} trained with the same options on the same data; pass --replace "
            f"(replace=True) to replace it, or use another store")


def delete_dictionary(con: duckdb.DuckDBPyConnection, dict_id: int) -> None:
    """Remove a dictionary and everything derived from it (call inside a transaction)."""
    for table in PER_DICTIONARY:
        con.execute(f"DELETE FROM {table} WHERE dict_id = ?", [dict_id])
    con.execute("DELETE FROM similarities WHERE dict_a = ? OR dict_b = ?", [dict_id, dict_id])
    con.execute("DELETE FROM dictionaries WHERE dict_id = ?", [dict_id])


def store_dictionary(
    store: str | Path,
    itda: ITDA,
    model: LoadedModel,
    corpus: Corpus,
    *,
    replace: bool = False,
    timeout: float = 600.0,
) -> WriteResult:
    """Write ``itda`` into the store at ``store`` in one transaction; returns its ``dict_id`` and what it replaced.

    ``model`` is the LoadedModel it was trained on (its row and tokenizer are stored once); ``corpus`` is the
    FULL corpus the training split came from (``load_corpus(...)``, not the ``.split()`` part): its documents
    are stored once, labelled train / held_out by the split recorded in ``itda.config.corpus_id``, together
    with the tokens of this model's tokenizer. A dictionary is identified by its model, layer, training
    corpus, options (:func:`options_key`) and data (:func:`dictionary_data_key`: tokens and documents seen),
    so another budget is another dictionary, kept beside the first. Writing one that is already stored
    raises :class:`DictionaryExists` unless ``replace``; then it keeps its ``dict_id``, its index is dropped
    (run ``itda index`` again) and :attr:`WriteResult.replaced` says what was replaced. ``timeout`` bounds the
    wait while other processes hold the store.
    """
    store = Path(store)
    itda.check_model(model)
    config = itda.config
    info = split_info(config, corpus)
    tok_id = tokenizer_id(model.tokenizer)
    tokens_missing = _tokens_missing(store, corpus.corpus_id, tok_id, config.seq_len, timeout)
    docs = documents_table(corpus, info)
    tokens = tokens_table(model, corpus, config.seq_len, tok_id) if tokens_missing else None
    atoms = atoms_table(itda, corpus, -1)
    key = options_key(config)
    replaced = None
    with connect_write(store, timeout=timeout) as con, transaction(con):
        dict_id = find_dictionary(con, config)
        if dict_id is not None:
            replaced = stored_dictionary(con, dict_id)
            if not replace:
                raise DictionaryExists(exists_message(store, [replaced]))
        _insert_corpus(con, corpus, info, docs)
        if tokens is None:
            tokens_present = _has(
                con,
                "SELECT 1 FROM tokenizations WHERE tokenizer_id = ? AND seq_len = ? AND corpus_id = ?",
                [tok_id, config.seq_len, corpus.corpus_id],
            )
            if not tokens_present:  # removed since we looked: tokenise now, under the lock (rare)
                tokens = tokens_table(model, corpus, config.seq_len, tok_id)
        if tokens is not None:
            _insert_tokens(con, model, tok_id, config.seq_len, corpus.corpus_id, tokens)
        _insert_model(con, model, tok_id)
        if dict_id is not None:
            delete_dictionary(con, dict_id)
        else:
            dict_id = int(
                con.execute("SELECT COALESCE(MAX(dict_id) + 1, 1) FROM dictionaries").fetchall()[0][0]
            )
        con.execute(
            f"INSERT INTO dictionaries VALUES ({', '.join(['?'] * 20)}, now(), ?)",
            [
                dict_id,
                config.model_id,
                config.model_name,
                config.layer,
                config.site,
                info.corpus_id,
                config.corpus_id,
                tok_id,
                config.seq_len,
                config.skip_special_tokens,
                config.k,
                config.threshold,
                len(itda),
                itda.d_model,
                config.tokens_seen,
                config.init_atoms,
                key,
                config.to_json(),
                json.dumps(config.stats, default=str),
                config.created,
                dictionary_data_key(config),
            ],
        )
        atoms = atoms.set_column(0, "dict_id", pa.array(np.full(len(itda), dict_id, dtype=np.int32)))
        con.register("_atoms_in", atoms)
        con.execute("INSERT INTO atoms SELECT * FROM _atoms_in")
        con.unregister("_atoms_in")
    return WriteResult(dict_id, replaced)


def write_dictionary(
    store: str | Path,
    itda: ITDA,
    model: LoadedModel,
    corpus: Corpus,
    *,
    replace: bool = False,
    timeout: float = 600.0,
) -> int:
    """:func:`store_dictionary`, returning only the ``dict_id`` (refuses to replace unless ``replace``)."""
    return store_dictionary(store, itda, model, corpus, replace=replace, timeout=timeout).dict_id
