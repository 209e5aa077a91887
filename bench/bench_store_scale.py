"""The store at scale (issue 18): every store read the dashboard makes, timed on a synthetic store of 10 M codes
and 100 k atoms (target: each per-page query under 100 ms).

    .venv/bin/python bench/bench_store_scale.py                        # build once under /tmp, then time
    .venv/bin/python bench/bench_store_scale.py --out /tmp/s --atoms 100000 --codes 10000000 --repeats 15
    .venv/bin/python bench/bench_store_scale.py --store data/itda.duckdb --no-reference   # another store

The store is built once (bench/store_scale_build.py: real corpus, writer-shaped tables, the index written by
``held_out.write_index``) and kept in ``--out`` with the parameters it was built with; a rerun with the same
parameters reuses it. Each query runs ``--repeats`` times over random active atoms (and once more on the
busiest atom, the worst case for the reads of ``codes``): "cold" opens a fresh read-only connection per call
(connect and schema check included, as the dashboard does per page), "warm" reuses one open connection.
Prints a markdown table: query, cold median / p90, warm median / p90 (ms), rows returned. "Bulk" rows are
whole-dictionary or whole-store loads that the dashboard caches per store version (not per page). With
``--previous`` it also times the reads issue 18 rewrote against their previous SQL (bench/store_scale_previous.py),
interleaved call by call. Figures: docs/benchmarks.md; what they mean: docs/store.md "At scale".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)
from store_scale_build import build

from itda_core.store import queries as Q
from itda_core.store.atom_maps import read_atom_map
from itda_core.store.connection import connect_readonly
from itda_core.store.reader import read_atom_sources, read_dictionary

TARGET_MS = 100.0
Query = Callable[[Any, int], Any]


def ensure_store(out: Path, atoms: int, codes: int, seed: int) -> Path:
    """The synthetic store in ``out``, built unless one built with the same parameters is there."""
    out.mkdir(parents=True, exist_ok=True)
    store, marker = out / "scale.duckdb", out / "scale.json"
    params = {"atoms": atoms, "codes": codes, "seed": seed, "builder": 2}
    if store.is_file() and marker.is_file() and json.loads(marker.read_text()) == params:
        print(f"reusing {store} (built with {params})", flush=True)
        return store
    marker.unlink(missing_ok=True)
    print(f"building a synthetic store at {store}: {atoms:,} atoms, {codes:,} codes ...", flush=True)
    t0 = time.perf_counter()
    build(store, atoms, codes, seed)
    marker.write_text(json.dumps(params))
    print(f"built in {time.perf_counter() - t0:.0f} s ({store.stat().st_size / 2**30:.2f} GiB)", flush=True)
    return store


def _rows(result: Any) -> int:
    """How many rows a query returned (a frame's length, a record is 1, a tuple of dicts: the first's)."""
    if result is None:
        return 0
    if isinstance(result, (pd.DataFrame, np.ndarray, list, dict)):
        return len(result)
    if isinstance(result, tuple):
        return sum(len(x) for x in result[1].values()) if len(result) == 2 else len(result)
    if hasattr(result, "provenance"):  # AtomSources / ITDA
        prov = result.provenance
        return sum(len(p) for p in prov.values()) if isinstance(prov, dict) else len(prov)
    return 1


def atom_page(con: Any, dict_id: int, atom: int) -> int:
    """Every read of the dashboard's atom page (atom_data._atom_page) on one connection; rows read."""
    row = Q.atom_page_row(con, dict_id, atom)
    top = Q.top_hits(con, dict_id, atom, 20)
    quant = Q.quantile_hits(con, dict_id, atom)
    docs = {int(row["doc_id"]), *map(int, top["doc_id"]), *map(int, quant["doc_id"])}
    keys = Q.dictionary_keys(con, dict_id)
    _, tokens = Q.documents_with_tokens(con, *keys, docs)
    coefs = Q.codes_at(con, dict_id, atom, docs)
    hist = Q.coefficient_histogram(con, dict_id, atom)
    Q.coefficient_scale(con, dict_id, atom, 0.98)
    shared = Q.shared_provenance(con, dict_id, atom)
    return 1 + len(top) + len(quant) + sum(map(len, tokens.values())) + len(coefs) + len(hist) + len(shared)


class Picks:
    """What the queries are asked about: random active atoms, the busiest atom, words, dictionaries."""

    def __init__(self, con: Any, n: int, seed: int) -> None:
        rnd = random.Random(seed)
        sql = "SELECT dict_id, atom FROM atom_stats WHERE n_active > 0 ORDER BY dict_id, atom"
        active = con.execute(sql).fetchall()
        self.atoms = [tuple(map(int, rnd.choice(active))) for _ in range(n)]
        busiest = con.execute("SELECT dict_id, atom FROM atom_stats ORDER BY n_active DESC LIMIT 1").fetchall()[0]
        self.busiest = (int(busiest[0]), int(busiest[1]))
        sql = "SELECT dict_id FROM dictionaries ORDER BY n_atoms DESC LIMIT 1"
        self.largest = int(con.execute(sql).fetchall()[0][0])
        words = [r[0].strip() for r in con.execute("SELECT token_text FROM atoms ORDER BY dict_id, atom").fetchall()]
        words = [w for w in words if len(w) > 2]  # as often as atoms have them: common words come up more
        self.words = [rnd.choice(words) for _ in range(n)]
        self.models = [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id").fetchall()]
        docs = con.execute("SELECT DISTINCT doc_id FROM codes WHERE dict_id = ? AND atom = ? ORDER BY doc_id",
                           list(self.busiest)).fetchall()
        self.busiest_docs = [int(r[0]) for r in docs[:40]]

    def atom(self, i: int) -> tuple[int, int]:
        """The i-th random active atom (dict_id, atom)."""
        return self.atoms[i % len(self.atoms)]

    def brief(self, con: Any, i: int) -> pd.DataFrame:
        """atoms_info's read: 10 atoms of a dictionary and their source contexts."""
        d, a = self.atom(i)
        df = Q.atoms_brief(con, d, list(range(max(0, a - 5), a + 5)))
        Q.documents_with_tokens(con, *Q.dictionary_keys(con, d), df["doc_id"])
        return df


def queries(p: Picks) -> list[tuple[str, str, Query]]:
    """(page, query, call) for every store read of the dashboard (and the busiest-atom worst cases)."""
    a = p.atom
    return [
        ("all", "connect + schema check only", lambda con, i: None),
        ("overview", "store_summary (row counts)", lambda con, i: Q.store_summary(con)),
        ("overview", "list_models", lambda con, i: Q.list_models(con)),
        ("overview", "list_dictionaries", lambda con, i: Q.list_dictionaries(con)),
        ("overview", "dictionary_details", lambda con, i: Q.dictionary_details(con)),
        ("overview", "evaluation_values", lambda con, i: Q.evaluation_values(con)),
        ("overview", "density_by_layer", lambda con, i: Q.density_by_layer(con)),
        ("overview", "density_by_layer(model)", lambda con, i: Q.density_by_layer(con, p.models[i % len(p.models)])),
        ("overview", "get_dictionary", lambda con, i: Q.get_dictionary(con, a(i)[0])),
        ("atom page", "atom_page_row", lambda con, i: Q.atom_page_row(con, *a(i))),
        ("atom page", "top_hits (20)", lambda con, i: Q.top_hits(con, *a(i), 20)),
        ("atom page", "quantile_hits (10 x 5)", lambda con, i: Q.quantile_hits(con, *a(i))),
        ("atom page", "documents_with_tokens (top docs)", lambda con, i: Q.documents_with_tokens(
            con, *Q.dictionary_keys(con, a(i)[0]), Q.top_hits(con, *a(i), 20)["doc_id"])),
        ("atom page", "codes_at (top docs)",
         lambda con, i: Q.codes_at(con, *a(i), Q.top_hits(con, *a(i), 20)["doc_id"])),
        ("atom page", "codes_at (busiest atom, 40 docs)", lambda con, i: Q.codes_at(con, *p.busiest, p.busiest_docs)),
        ("atom page", "coefficient_histogram", lambda con, i: Q.coefficient_histogram(con, *a(i))),
        ("atom page", "coefficient_scale", lambda con, i: Q.coefficient_scale(con, *a(i))),
        ("atom page", "coefficient_scale (busiest atom)", lambda con, i: Q.coefficient_scale(con, *p.busiest)),
        ("atom page", "shared_provenance", lambda con, i: Q.shared_provenance(con, *a(i))),
        ("atom page", "get_atom (with source context)", lambda con, i: Q.get_atom(con, *a(i))),
        ("atom page", "whole atom page (all reads above)", lambda con, i: atom_page(con, *a(i))),
        ("atom page", "whole atom page (busiest atom)", lambda con, i: atom_page(con, *p.busiest)),
        ("atoms", "atom_list (largest dictionary)", lambda con, i: Q.atom_list(con, p.largest)),
        ("atoms", "atom_list", lambda con, i: Q.atom_list(con, a(i)[0])),
        ("atoms", "atoms_by_token (substring, all, 500)",
         lambda con, i: Q.atoms_by_token(con, p.words[i % len(p.words)], limit=500)),
        ("atoms", "atoms_by_token (exact, all, 500)",
         lambda con, i: Q.atoms_by_token(con, p.words[i % len(p.words)], exact=True, limit=500)),
        ("atoms", "atoms_by_token (substring, one dictionary)",
         lambda con, i: Q.atoms_by_token(con, p.words[i % len(p.words)], dict_id=a(i)[0], limit=500)),
        ("live", "atoms_brief + contexts (10 atoms)", lambda con, i: p.brief(con, i)),
        ("atom map", "read_atom_map (one dictionary)", lambda con, i: read_atom_map(con, [a(i)[0]])),
        ("similarity", "stored_similarities", lambda con, i: Q.stored_similarities(con)),
        ("similarity", "shared_atoms (layer L vs L+1)", lambda con, i: Q.shared_atoms(con, a(i)[0], a(i)[0] + 1)),
        ("bulk", "atom_vectors (largest dictionary)", lambda con, i: Q.atom_vectors(con, p.largest)),
        ("bulk", "read_dictionary (largest, live page)", lambda con, i: read_dictionary(con, p.largest)),
        ("bulk", "read_atom_sources (every atom)", lambda con, i: read_atom_sources(con)),
    ]


def _ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call in ms, and its result."""
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


def _p90(xs: list[float]) -> float:
    """The 90th percentile (nearest rank)."""
    return sorted(xs)[max(0, round(0.9 * len(xs)) - 1)]


def _timed(store: Path, query: Query, n: int) -> tuple[list[float], list[float], int]:
    """Cold and warm times (ms) of ``n`` calls of ``query`` on ``store``, and the most rows one returned."""
    cold, rows = [], 0
    for i in range(n):

        def once(i: int = i) -> Any:
            """The query on its own short read-only connection."""
            with connect_readonly(store) as con:
                return query(con, i)

        ms, result = _ms(once)
        cold.append(ms)
        rows = max(rows, result if isinstance(result, int) and not isinstance(result, bool) else _rows(result))
    warm = []
    with connect_readonly(store) as con:
        query(con, 0)
        for i in range(n):
            warm.append(_ms(lambda i=i, con=con: query(con, i))[0])
    return cold, warm, rows


def run(stores: list[Path], repeats: int, seed: int, only: str | None = None) -> list[dict[str, Any]]:
    """Time every query cold and warm on each store in turn (the same load for all); one dict per query with
    per-store medians, p90s and rows (keys suffixed by the store's index)."""
    lists = []
    for store in stores:
        with connect_readonly(store) as con:
            lists.append(queries(Picks(con, repeats, seed)))
    out = []
    for j, (page, name, _) in enumerate(lists[0]):
        if only and only not in name:
            continue
        n = 3 if page == "bulk" else repeats
        row: dict[str, Any] = {"page": page, "query": name, "n": n}
        for s, store in enumerate(stores):
            cold, warm, rows = _timed(store, lists[s][j][2], n)
            row.update({f"cold_median{s}": statistics.median(cold), f"cold_p90{s}": _p90(cold),
                        f"warm_median{s}": statistics.median(warm), f"warm_p90{s}": _p90(warm), f"rows{s}": rows})
        out.append(row)
        print(f"  {name}: cold {row['cold_median0']:.1f} ms, warm {row['warm_median0']:.1f} ms", flush=True)
    return out


def table(results: list[dict[str, Any]], reference: bool) -> str:
    """The markdown table (an over-target p90 is marked), with the reference store's warm median and the
    warm ratio scale / reference when there is one."""
    head = "| page | query | rows | cold median ms | cold p90 ms | warm median ms | warm p90 ms |"
    rule = "|---|---|---|---|---|---|---|"
    if reference:
        head += " reference warm median ms | warm ratio |"
        rule += "---|---|"
    lines = [head, rule]
    for r in results:
        bulk = r["page"] == "bulk"
        over = lambda x, bulk=bulk: "" if bulk or x <= TARGET_MS else " **over**"  # noqa: E731
        line = (f"| {r['page']} | {r['query']} | {r['rows0']:,} | {r['cold_median0']:.1f} | "
                f"{r['cold_p900']:.1f}{over(r['cold_p900'])} | {r['warm_median0']:.1f} | "
                f"{r['warm_p900']:.1f}{over(r['warm_p900'])} |")
        if reference:
            ratio = r["warm_median0"] / max(r["warm_median1"], 1e-3)
            line += f" {r['warm_median1']:.1f} | {ratio:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def describe(store: Path) -> str:
    """Size and row counts of a store."""
    with connect_readonly(store) as con:
        counts = Q.store_summary(con)["counts"]
        extra = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchall()[0][0]
                 for t in ("atom_top_contexts", "atom_quantiles", "atom_histograms")}
    return (f"{store} ({store.stat().st_size / 2**30:.2f} GiB): {counts['dictionaries']} dictionaries, "
            f"{counts['atoms']:,} atoms, {counts['tokens']:,} tokens, {counts['codes']:,} codes, "
            + ", ".join(f"{v:,} {k}" for k, v in extra.items()))


def main() -> None:
    """Build (or reuse) the stores, time every query, print the table (and write it as JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/itda-store-scale"), help="folder of the built stores")
    parser.add_argument("--store", type=Path, default=None, help="time this store instead of building one")
    parser.add_argument("--atoms", type=int, default=100_000)
    parser.add_argument("--codes", type=int, default=10_000_000)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the reference store (1/20 the atoms, 1/50 the codes) timed in the same run")
    parser.add_argument("--repeats", type=int, default=15, help="random atoms per query (3 for bulk loads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="time only the queries whose name contains this")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--previous", action="store_true",
                        help="also time the reads this pass rewrote, before and after, in one run")
    args = parser.parse_args()
    if not (1_000 <= args.atoms <= 10_000_000 and 1_000 <= args.codes <= 1_000_000_000 and 1 <= args.repeats <= 1000):
        parser.error("--atoms 1e3..1e7, --codes 1e3..1e9, --repeats 1..1000")
    stores = [args.store or ensure_store(args.out, args.atoms, args.codes, args.seed)]
    if not args.no_reference:
        small = (max(1_000, args.atoms // 20), max(1_000, args.codes // 50))
        stores.append(ensure_store(args.out / "reference", *small, args.seed))
    results = run(stores, args.repeats, args.seed, args.only)
    print(f"\n# store at scale, {time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f} after the run")
    for s in stores:
        print(f"# {describe(s)}")
    print(table(results, len(stores) > 1))
    over = [r["query"] for r in results if r["page"] != "bulk" and r["warm_p900"] > TARGET_MS]
    print(f"\nover {TARGET_MS:.0f} ms (warm p90, per-page queries): {', '.join(over) or 'none'}")
    previous = []
    if args.previous:
        from store_scale_previous import compare

        with connect_readonly(stores[0]) as con:
            previous = compare(stores[0], Picks(con, args.repeats, args.seed + 1).atoms)
        print("\n| read (warm, interleaved) | previous median ms | now median ms | ratio |\n|---|---|---|---|")
        for name, before, after in previous:
            print(f"| {name} | {before:.1f} | {after:.1f} | {before / max(after, 1e-3):.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"stores": [describe(s) for s in stores], "results": results,
                                         "previous": previous}, indent=1))


if __name__ == "__main__":
    main()
