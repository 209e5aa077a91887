"""The store's tables (one DuckDB file) and its schema version, checked every time the file is opened.

Big tables have no primary keys or ART indexes: rows are appended in (dict_id, atom) order, so DuckDB's
min/max zone maps already skip everything but the few row groups a query needs, bulk inserts stay fast,
and deleting then re-inserting a dictionary inside one transaction never trips a constraint. The code,
not the database, keeps keys unique (every write runs in one transaction under DuckDB's file lock).
See docs/store.md for what each column means.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import duckdb

from itda_core.errors import ITDAError

SCHEMA_VERSION = 3

TABLES: dict[str, str] = {
    "meta": """
        key VARCHAR PRIMARY KEY,
        value VARCHAR""",
    "corpora": """
        corpus_id VARCHAR PRIMARY KEY,
        name VARCHAR,
        sha256 VARCHAR,
        n_documents INTEGER,
        n_chars BIGINT,
        held_out_fraction DOUBLE,
        split_seed INTEGER,
        added TIMESTAMP""",
    "documents": """
        corpus_id VARCHAR,
        doc_id INTEGER,
        split VARCHAR,
        source VARCHAR,
        text VARCHAR""",
    "tokenizations": """
        tokenizer_id VARCHAR,
        seq_len INTEGER,
        corpus_id VARCHAR,
        tokenizer_name VARCHAR,
        n_tokens BIGINT,
        added TIMESTAMP""",
    "tokens": """
        tokenizer_id VARCHAR,
        seq_len INTEGER,
        corpus_id VARCHAR,
        doc_id INTEGER,
        position INTEGER,
        token_id INTEGER,
        token_str VARCHAR,
        char_start INTEGER,
        char_end INTEGER,
        special BOOLEAN""",
    "models": """
        model_id VARCHAR PRIMARY KEY,
        name VARCHAR,
        family VARCHAR,
        architecture VARCHAR,
        n_layers INTEGER,
        d_model INTEGER,
        tokenizer_id VARCHAR,
        source VARCHAR,
        added TIMESTAMP""",
    "dictionaries": """
        dict_id INTEGER,
        model_id VARCHAR,
        model_name VARCHAR,
        layer INTEGER,
        site VARCHAR,
        corpus_id VARCHAR,
        train_corpus_id VARCHAR,
        tokenizer_id VARCHAR,
        seq_len INTEGER,
        skip_special_tokens BOOLEAN,
        k INTEGER,
        threshold DOUBLE,
        n_atoms INTEGER,
        d_model INTEGER,
        tokens_seen BIGINT,
        init_atoms INTEGER,
        options_key VARCHAR,
        config JSON,
        stats JSON,
        created VARCHAR,
        written TIMESTAMP,
        data_key VARCHAR""",
    "atoms": """
        dict_id INTEGER,
        atom INTEGER,
        doc_id INTEGER,
        position INTEGER,
        token_id INTEGER,
        token_str VARCHAR,
        token_text VARCHAR,
        char_start INTEGER,
        char_end INTEGER,
        add_error FLOAT,
        vector FLOAT[],
        init_count INTEGER""",
    "index_runs": """
        dict_id INTEGER,
        corpus_id VARCHAR,
        split VARCHAR,
        n_documents INTEGER,
        n_tokens BIGINT,
        k INTEGER,
        top_n INTEGER,
        n_quantiles INTEGER,
        per_quantile INTEGER,
        hist_bins INTEGER,
        codes_kept BOOLEAN,
        seconds DOUBLE,
        dict_written TIMESTAMP,
        created TIMESTAMP""",
    "codes": """
        dict_id INTEGER,
        doc_id INTEGER,
        position INTEGER,
        atom INTEGER,
        coef FLOAT""",
    "atom_stats": """
        dict_id INTEGER,
        atom INTEGER,
        n_active BIGINT,
        density DOUBLE,
        mean_coef DOUBLE,
        min_coef FLOAT,
        max_coef FLOAT,
        mean_abs DOUBLE,
        n_negative BIGINT""",
    "atom_top_contexts": """
        dict_id INTEGER,
        atom INTEGER,
        rank INTEGER,
        doc_id INTEGER,
        position INTEGER,
        coef FLOAT""",
    "atom_quantiles": """
        dict_id INTEGER,
        atom INTEGER,
        bin INTEGER,
        q_lo DOUBLE,
        q_hi DOUBLE,
        bin_lo FLOAT,
        bin_hi FLOAT,
        bin_count BIGINT,
        sample INTEGER,
        doc_id INTEGER,
        position INTEGER,
        coef FLOAT""",
    "atom_histograms": """
        dict_id INTEGER,
        atom INTEGER,
        bin INTEGER,
        lo DOUBLE,
        hi DOUBLE,
        count BIGINT""",
    "evaluations": """
        dict_id INTEGER,
        metric VARCHAR,
        value DOUBLE,
        corpus_id VARCHAR,
        n_tokens BIGINT,
        details JSON,
        created TIMESTAMP""",
    "similarities": """
        dict_a INTEGER,
        dict_b INTEGER,
        method VARCHAR,
        value DOUBLE,
        details JSON,
        created TIMESTAMP""",
}

# Tables a store gets from the first write that needs them, not from create_schema (so no schema version
# change): a store written before one existed still reads, and readers check for the table first.
LAZY_TABLES: dict[str, str] = {
    "atom_umap": """
    dict_id INTEGER,
    atom INTEGER,
    x FLOAT,
    y FLOAT,
    umap_params VARCHAR""",  # one row per atom of a stored map; rows of one map share umap_params (JSON)
}

# Tables whose rows belong to one dictionary (deleted with it when it is replaced).
PER_DICTIONARY = (
    "atoms",
    "index_runs",
    "codes",
    "atom_stats",
    "atom_top_contexts",
    "atom_quantiles",
    "atom_histograms",
    "evaluations",
)
# Tables written by `itda index` (replaced together when a dictionary is re-indexed).
INDEX_TABLES = ("index_runs", "codes", "atom_stats", "atom_top_contexts", "atom_quantiles", "atom_histograms")

def _add_init_count(con: duckdb.DuckDBPyConnection) -> None:
    """v1 -> v2: ``atoms.init_count`` (how often an initial atom's activation occurred in its batch). v1 did
    not record it: initial atoms (no add error) get -1, unknown, which similarity treats as an arbitrary pick."""
    con.execute("ALTER TABLE atoms ADD COLUMN init_count INTEGER")
    con.execute("UPDATE atoms SET init_count = CASE WHEN add_error IS NULL OR isnan(add_error) THEN -1 ELSE 0 END")


# An atom's init_count in SQL over ``atoms a``: never NULL once migrated; the fallback is the v1 -> v2 rule above.
INIT_COUNT_SQL = "COALESCE(a.init_count, CASE WHEN a.add_error IS NULL OR isnan(a.add_error) THEN -1 ELSE 0 END)"

DATA_FIELDS = ("tokens_seen", "documents_seen", "documents_sha256")


def data_key(config: Mapping[str, Any]) -> str:
    """What a dictionary was trained on (token count, whole documents, which documents), from its config: two
    dictionaries with equal options but another key saw other data and are kept side by side."""
    defaults: dict[str, Any] = {"tokens_seen": 0, "documents_seen": 0, "documents_sha256": ""}
    return json.dumps({f: config.get(f, defaults[f]) for f in DATA_FIELDS}, sort_keys=True)


def _add_data_key(con: duckdb.DuckDBPyConnection) -> None:
    """v2 -> v3: ``dictionaries.data_key`` (what the dictionary was trained on), computed from each stored
    config, so that a dictionary of another token budget no longer replaces one of the same options."""
    con.execute("ALTER TABLE dictionaries ADD COLUMN IF NOT EXISTS data_key VARCHAR")
    for dict_id, config in con.execute("SELECT dict_id, config FROM dictionaries").fetchall():
        con.execute("UPDATE dictionaries SET data_key = ? WHERE dict_id = ?", [data_key(json.loads(config)), dict_id])


# Trivial migrations: MIGRATIONS[v] takes a store from version v to v + 1 (run by any writer, or by
# `itda store-info --upgrade`).
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {1: _add_init_count, 2: _add_data_key}

REBUILD_HINT = (
    "rebuild it with `itda demo-build --rebuild` (or delete the file and rerun `itda train --store`)"
)


class SchemaMismatch(ITDAError):
    """The file is a store of another schema version (or not a store at all)."""


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table and record the schema version (on an empty database)."""
    for name, columns in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    from itda_core import __version__

    con.execute("INSERT OR IGNORE INTO meta VALUES ('created_by', ?)", [f"itda {__version__}"])
    con.execute("INSERT OR IGNORE INTO meta VALUES ('created', CAST(now() AS VARCHAR))")


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple | None:
    """The first row of a query, fetching the whole result (DuckDB refuses new work on a half-read one)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def records(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Rows of a query as dicts keyed by column name."""
    cur = con.execute(sql, params or [])
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def first_record(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> dict[str, Any] | None:
    """The first row of a query as a dict, or None."""
    rows = records(con, sql, params)
    return rows[0] if rows else None


def table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the tables in the main schema (every open runs this: ``duckdb_tables()`` answers in about a third
    of the time of the ``information_schema.tables`` view, which also assembles views and constraints)."""
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}


def stored_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version recorded in ``meta``; None for an empty database."""
    names = table_names(con)
    if not names:
        return None
    if "meta" not in names:
        return -1
    row = first_row(con, "SELECT value FROM meta WHERE key = 'schema_version'")
    try:
        return int(row[0]) if row else -1
    except ValueError:
        return -1


def check_schema(con: duckdb.DuckDBPyConnection, path: str, *, writable: bool) -> None:
    """Create the schema in a new file, migrate a trivially older one (writers only), or refuse clearly."""
    version = stored_version(con)
    if version is None:
        if not writable:
            raise SchemaMismatch(
                f"{path} is an empty database, not an ITDA store; build one with `itda demo-build`"
            )
        con.execute("BEGIN TRANSACTION")
        try:
            create_schema(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return
    if version == SCHEMA_VERSION:
        return
    if version == -1:
        raise SchemaMismatch(
            f"{path} is a DuckDB file but not an ITDA store (no schema version); use another path"
        )
    if writable and version < SCHEMA_VERSION and all(v in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
        con.execute("BEGIN TRANSACTION")
        try:
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v](con)
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return
    newer = version > SCHEMA_VERSION
    migratable = 0 < version < SCHEMA_VERSION and all(v in MIGRATIONS for v in range(version, SCHEMA_VERSION))
    if newer:
        what = "a newer itda (upgrade itda to read it)"
    elif migratable:
        what = f"upgrade it in place with `itda store-info --store {path} --upgrade`"
    else:
        what = REBUILD_HINT
    raise SchemaMismatch(
        f"store {path} has schema version {version} but this itda reads version {SCHEMA_VERSION}: {what}"
    )
