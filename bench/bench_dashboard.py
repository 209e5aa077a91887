"""Dashboard latency: page runs and interactions on a store, and live decomposition time.

Run by hand: ``.venv/bin/python bench/bench_dashboard.py [--store data/itda.duckdb] [--model smollm2-135m]``.

Interactions are timed with Streamlit's AppTest, which runs a page's script exactly as the server does
(store reads, caching, rendering to protobuf) minus the network and the browser: the server-side part of
what a user waits for. "cold" is a page's first run on a new store version (caches empty), "warm" a
rerun, and "new atom" opening atoms not seen before (the realistic click). Model work (loading a model,
a logit effect's first load) is excluded from those figures and timed on its own. Live decomposition is
timed on 100 tokens at the middle layer of --model once the model is loaded (median of --repeats).
Prints a markdown table for docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ms(values: list[float]) -> str:
    """Median (max) in milliseconds."""
    return f"{statistics.median(values) * 1000:.0f} ({max(values) * 1000:.0f})"


def bench_pages(store: Path, repeats: int, n_atoms: int) -> list[tuple[str, str, str]]:
    """(what, cold, warm) rows for every page and the main interactions."""
    from streamlit.testing.v1 import AppTest

    from itda_core.store.connection import connect_readonly
    from itda_dashboard import data, live

    os.environ["ITDA_STORE"] = str(store)
    app = str(ROOT / "dashboard" / "app.py")
    with connect_readonly(store) as con:
        dicts = con.execute(
            "SELECT d.dict_id, d.model_name, d.layer, d.n_atoms, m.family FROM dictionaries d "
            "JOIN models m USING (model_id) ORDER BY m.added, d.layer"
        ).fetchall()
    first_model = dicts[0][1]
    layers = [d for d in dicts if d[1] == first_model]
    middle = layers[len(layers) // 2]
    dict_id, n_atoms_mid = int(middle[0]), int(middle[3])
    # the model for logit effects is loaded once, outside the timings (model work)
    if middle[4] == "decoder":
        live.get_model(first_model)

    def fresh(page: str | None = None, query: dict | None = None) -> AppTest:
        at = AppTest.from_file(app, default_timeout=600)
        at.run()
        if page:
            at.switch_page(page)
        for k, v in (query or {}).items():
            at.query_params[k] = v
        return at

    rows = []

    def page_row(name: str, page: str | None, query: dict | None = None) -> AppTest:
        at = fresh(page, query)
        data.clear_caches()  # store reads only; the loaded model stays
        cold = timed(at.run)
        warm = [timed(at.run) for _ in range(repeats)]
        rows.append((name, f"{cold * 1000:.0f}", ms(warm)))
        return at

    page_row("Overview", None)
    at = page_row("Atom page (dictionary of the middle layer)", "views/atom_browser.py",
                  {"dict": str(dict_id), "atom": "1"})  # fmt: skip
    # opening new atoms: each one is uncached
    step = max(1, n_atoms_mid // (n_atoms + 1))
    new_atoms = []
    for i in range(n_atoms):
        at.query_params["atom"] = str((i + 2) * step % n_atoms_mid)
        new_atoms.append(timed(at.run))
    rows.append((f"Open a new atom (x{n_atoms}, incl. nearest atoms, contexts, logit effect)", "", ms(new_atoms)))
    search = []
    for text in ("the", "Paris", "ing", "1", "a"):
        at.text_input(key="ab_search").input(text)
        search.append(timed(at.run))
    rows.append(("Search atoms by token text (x5)", "", ms(search)))
    page_row("Dictionary atom list", "views/atom_browser.py", {"dict": str(dict_id)})
    at = page_row("Similarity (layer x layer + model x model)", "views/similarity.py")
    picks = []
    options = at.selectbox(key=next(k for k in at.session_state if str(k).endswith("_row"))).options
    for option in options[: min(5, len(options))]:
        at.selectbox(key=next(k for k in at.session_state if str(k).endswith("_row"))).select(option)
        picks.append(timed(at.run))
    rows.append(("Pick another cell: list its shared atoms (x5)", "", ms(picks)))
    at = fresh("views/atom_map.py")
    data.clear_caches()
    cold = timed(at.run)
    warm = [timed(at.run) for _ in range(repeats)]
    stored = not at.info
    rows.append((f"Atom map ({'stored map' if stored else 'no stored map: message only'})",
                 f"{cold * 1000:.0f}", ms(warm)))  # fmt: skip
    at = fresh("views/live_decomposition.py")
    at.run()
    at.button(key="live_go").click()
    at.run()  # the decomposition itself (model work) is timed separately below
    colour = next(k for k in at.session_state if str(k).startswith("live_colour_"))
    recolour = []
    for i in range(1, min(6, len(at.selectbox(key=colour).options))):
        at.selectbox(key=colour).select_index(i)
        recolour.append(timed(at.run))
    rows.append(("Live page: colour by another atom (x5, cached decomposition)", "", ms(recolour)))
    return rows


def bench_live(model_name: str, store: Path | None, repeats: int, n_tokens: int) -> dict:
    """Median seconds of live decomposition of ``n_tokens`` tokens at the middle layer, model loaded."""
    import torch

    from itda_core.corpus import load_corpus
    from itda_core.decompose import decompose
    from itda_core.models import load_model

    start = time.perf_counter()
    model = load_model(model_name, device="cpu")
    load_s = time.perf_counter() - start
    layer = model.n_layers // 2
    itda = None
    if store is not None and store.is_file():
        from itda_core.store.connection import connect_readonly
        from itda_core.store.reader import read_dictionary

        with connect_readonly(store) as con:
            rows = con.execute(
                "SELECT dict_id FROM dictionaries WHERE model_id = ? AND layer = ? ORDER BY dict_id",
                [model.model_id, layer],
            ).fetchall()
            if rows:
                itda = read_dictionary(con, int(rows[0][0]))
    source = "store"
    if itda is None:  # no stored dictionary: train a small one (a few thousand tokens) for the timing
        from itda_core.trainer import TrainConfig, Trainer

        train, _ = load_corpus("default").split(0.1)
        itda = Trainer(model, train, TrainConfig(layers=[layer], max_tokens=8000, progress=False)).run()[layer]
        source = "trained for the benchmark (8,000 tokens)"
    itda.gram()
    docs = load_corpus("default").documents
    text = " ".join(d.text for d in docs[:20])
    ids = model.tokenizer(text, add_special_tokens=True)["input_ids"]
    # the longest prefix whose tokenisation (special tokens included) has n_tokens tokens
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    specials = len(ids) - len(enc["input_ids"])
    cut = enc["offset_mapping"][n_tokens - specials - 1][1]
    text = text[:cut]
    got = len(model.tokenizer(text, add_special_tokens=True)["input_ids"])
    decompose(model, itda, text)  # warm-up
    runs = [decompose(model, itda, text).seconds for _ in range(repeats)]
    return {
        "model": model_name,
        "layer": layer,
        "atoms": len(itda),
        "k": itda.config.k,
        "tokens": got,
        "dictionary": source,
        "load_s": load_s,
        "threads": torch.get_num_threads(),
        "total": statistics.median(r["total"] for r in runs),
        "forward": statistics.median(r["forward"] for r in runs),
        "encode": statistics.median(r["encode"] for r in runs),
        "max_total": max(r["total"] for r in runs),
    }


def main() -> None:
    """Run both benchmarks and print markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT / "data" / "itda.duckdb")
    parser.add_argument("--model", default="smollm2-135m", help="model for the live decomposition timing")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--atoms", type=int, default=10, help="new atoms opened for the interaction timing")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--skip-pages", action="store_true")
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# dashboard, {time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} CPUs, load {load:.1f}")
    if not args.skip_pages:
        if not args.store.is_file():
            print(f"no store at {args.store}: build one (itda demo-build) or pass --store; pages skipped")
        else:
            print(f"\nstore {args.store} ({args.store.stat().st_size / 2**20:,.0f} MiB); milliseconds, median (max)")
            print("\n| page / interaction | cold | warm |\n|---|---|---|")
            for what, cold, warm in bench_pages(args.store, args.repeats, args.atoms):
                print(f"| {what} | {cold} | {warm} |")
    if not args.skip_live:
        r = bench_live(args.model, args.store, args.repeats, args.tokens)
        print(
            f"\nlive decomposition: {r['model']} layer {r['layer']} ({r['atoms']:,} atoms, {r['dictionary']}), "
            f"k={r['k']}, {r['tokens']} tokens, {r['threads']} torch threads; model load {r['load_s']:.1f} s"
        )
        print("\n| step | median ms |\n|---|---|")
        print(f"| forward pass to layer {r['layer']} | {r['forward'] * 1000:.0f} |")
        print(f"| matching pursuit (k={r['k']}) + reconstruction | {r['encode'] * 1000:.0f} |")
        print(f"| total | {r['total'] * 1000:.0f} (max {r['max_total'] * 1000:.0f}) |")


if __name__ == "__main__":
    main()
