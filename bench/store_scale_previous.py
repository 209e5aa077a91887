"""The store reads as they were before issue 18's scale pass, timed beside today's in one run (warm, interleaved,
so a loaded machine slows both alike): ``bench_store_scale.py --previous``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from itda_core.store import queries as Q
from itda_core.store.atom_maps import CONTEXT_CHARS
from itda_core.store.connection import connect_readonly


def density_by_layer(con: duckdb.DuckDBPyConnection) -> Any:
    """The previous density_by_layer: join first, two quantile sorts per dictionary."""
    return con.execute("""
        SELECT d.dict_id, d.model_name, d.layer, d.n_atoms,
               COUNT(*) FILTER (WHERE s.n_active > 0) AS active_atoms,
               AVG(s.density) AS mean_density, quantile_cont(s.density, 0.5) AS median_density,
               quantile_cont(s.density, 0.9) AS p90_density, MAX(s.density) AS max_density
        FROM dictionaries d JOIN atom_stats s USING (dict_id)
        GROUP BY ALL ORDER BY d.model_name, d.layer""").df()


def documents_with_tokens(con: duckdb.DuckDBPyConnection, corpus_id: str, tokenizer_id: str, seq_len: int,
                          doc_ids: Iterable[int]) -> tuple[dict[int, str], list[tuple]]:
    """The previous documents_with_tokens reads: ``doc_id BETWEEN .. AND doc_id IN (...)`` on both tables."""
    ids = sorted({int(d) for d in doc_ids})
    in_list = ", ".join(str(d) for d in ids)
    texts = dict(con.execute(
        f"SELECT doc_id, text FROM documents WHERE corpus_id = ? AND doc_id BETWEEN {ids[0]} AND {ids[-1]} "
        f"AND doc_id IN ({in_list})", [corpus_id]).fetchall())
    rows = con.execute(
        f"SELECT doc_id, position, token_str, char_start, char_end FROM tokens WHERE tokenizer_id = ? AND "
        f"seq_len = ? AND corpus_id = ? AND doc_id BETWEEN {ids[0]} AND {ids[-1]} AND doc_id IN ({in_list}) "
        "ORDER BY doc_id, position", [tokenizer_id, seq_len, corpus_id]).fetchall()
    return texts, rows


def table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The previous table_names (every open's schema check): the information_schema view."""
    rows = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()
    return {r[0] for r in rows}


def describe(con: duckdb.DuckDBPyConnection, coords: pd.DataFrame) -> pd.DataFrame:
    """The previous atom_maps.describe: every source document's whole text to Python, snippets cut there."""
    ids = ", ".join(str(int(d)) for d in sorted(set(coords["dict_id"])))
    info = con.execute(f"""
        SELECT a.dict_id, a.atom, d.model_name AS model, d.layer, a.token_text, a.char_start, a.char_end,
               a.doc_id, d.corpus_id, s.density
        FROM atoms a JOIN dictionaries d USING (dict_id)
        LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom
        WHERE a.dict_id IN ({ids})""").df()
    docs = con.execute(f"""
        SELECT doc.corpus_id, doc.doc_id, doc.text FROM documents doc
        JOIN (SELECT DISTINCT d.corpus_id, a.doc_id FROM atoms a JOIN dictionaries d USING (dict_id)
              WHERE a.dict_id IN ({ids})) w
        ON w.corpus_id = doc.corpus_id AND w.doc_id = doc.doc_id""").fetchall()
    texts = {(c, int(d)): t for c, d, t in docs}
    before, after = [], []
    for corpus, doc_id, start, end in zip(info["corpus_id"], info["doc_id"], info["char_start"], info["char_end"],
                                          strict=True):
        text = texts.get((corpus, int(doc_id)), "")
        before.append(text[max(0, int(start) - CONTEXT_CHARS) : int(start)])
        after.append(text[int(end) : int(end) + CONTEXT_CHARS])
    info["before"], info["after"] = before, after
    info = info.drop(columns=["char_start", "char_end", "doc_id", "corpus_id"])
    return coords.merge(info, on=["dict_id", "atom"], how="left")


def _page_docs(con: duckdb.DuckDBPyConnection, dict_id: int, atom: int) -> list[int]:
    """The documents an atom page renders: its top and quantile hits' documents."""
    top, quantiles = Q.top_hits(con, dict_id, atom, 20), Q.quantile_hits(con, dict_id, atom)
    return sorted({*map(int, top["doc_id"]), *map(int, quantiles["doc_id"])})


def compare(store: Path, atoms: list[tuple[int, int]]) -> list[tuple[str, float, float]]:
    """(read, previous warm median ms, current warm median ms) over ``atoms``, interleaved call by call."""
    from itda_core.store.atom_maps import describe as current_describe
    from itda_core.store.schema import table_names as current_names

    with connect_readonly(store) as con:
        pages = [(d, Q.dictionary_keys(con, d), _page_docs(con, d, a)) for d, a in atoms]
        maps = Q.has_table(con, "atom_umap")
        coords = [con.execute("SELECT dict_id, atom, x, y FROM atom_umap WHERE dict_id = ? ORDER BY atom", [d]).df()
                  for d, _ in atoms] if maps else []
        pairs: list[tuple[str, Callable[[int], Any], Callable[[int], Any]]] = [
            ("density_by_layer", lambda i: density_by_layer(con), lambda i: Q.density_by_layer(con)),
            ("documents_with_tokens (an atom page's documents)",
             lambda i: documents_with_tokens(con, *pages[i][1], pages[i][2]),
             lambda i: Q.documents_with_tokens(con, *pages[i][1], pages[i][2])),
            ("table_names (schema check)", lambda i: table_names(con), lambda i: current_names(con)),
        ]
        if maps:
            pairs.append(("atom map describe (one dictionary)", lambda i: describe(con, coords[i]),
                          lambda i: current_describe(con, coords[i])))
        out = []
        for name, old, new in pairs:
            before, after = [], []
            old(0), new(0)
            for i in range(len(pages)):
                for fn, xs in ((old, before), (new, after)):
                    t0 = time.perf_counter()
                    fn(i)
                    xs.append((time.perf_counter() - t0) * 1000)
            out.append((name, statistics.median(before), statistics.median(after)))
    return out
