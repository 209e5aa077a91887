"""Atom maps of a whole store, old settings against new, in one run: time and map quality.

Run by hand: ``.venv/bin/python bench/bench_atom_maps.py --store /tmp/demo_first/itda.duckdb``.

The store is copied to a temporary folder (never written). Measured, in this order:

1. **all maps, new**: ``compute_atom_maps`` over every dictionary of the copy (``--workers`` processes;
   reading vectors, exact neighbours, UMAP, writing each map), wall seconds from a process that has not run
   UMAP yet, so the one-off compilation of umap-learn's kernels is included, and CPU seconds of this process
   and of the workers (on a loaded machine the wall time mostly measures the others' load).
2. **sample, old vs new**: every ``--every``-th dictionary (all with 1) laid out in this process with the old
   settings (umap-learn's own neighbours, 500 epochs, seed 0: the code before issue 19) and with the new ones
   (exact torch neighbours, ``--epochs``, seed 0), CPU and wall seconds each; the old time of all
   dictionaries is the sample's old/new ratio applied to the new one-process time, unless ``--every 1``.
3. **quality** of each sampled map: trustworthiness (scikit-learn, cosine, 15 neighbours) and kNN
   preservation (the share of an atom's 15 nearest atoms by cosine that are among its 15 nearest on the
   map), for old and new, and for new with seed 1 (the spread between seeds, for scale).
4. with ``--sweep 500,300,200``: the same quality for those epoch counts, ``--seeds`` seeds each (mean and
   the spread between seeds), exact neighbours, on the sample.

Figures on a shared machine vary with its load: compare ratios measured in one run. Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
K = 15  # neighbours for both quality figures (the maps' own n_neighbors)


def old_embed(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """The map as the code before issue 19 made it: umap-learn's own neighbours, its default epochs."""
    import umap

    n = len(vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_neighbors=max(2, min(K, n - 1)), min_dist=0.1, metric="cosine", random_state=seed,
                            init="spectral" if n > 64 else "random")  # fmt: skip
        return np.asarray(reducer.fit_transform(np.asarray(vectors, dtype=np.float32)), dtype=np.float32)


def knn_preservation(vectors: np.ndarray, coords: np.ndarray, k: int = K) -> float:
    """Mean share of each row's k nearest rows by cosine that are among its k nearest on the map."""
    import torch

    from itda_core.jobs.umap_layout import cosine_knn

    high = cosine_knn(vectors, k + 1)[0][:, 1:]
    c = torch.as_tensor(coords, dtype=torch.float32)
    d = torch.cdist(c, c)
    d.fill_diagonal_(float("inf"))
    low = d.topk(k, largest=False).indices.numpy()
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(high.tolist(), low.tolist(), strict=True)]))


def quality(vectors: np.ndarray, coords: np.ndarray) -> tuple[float, float]:
    """(trustworthiness, kNN preservation) of a map."""
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(vectors, coords, n_neighbors=K, metric="cosine")), knn_preservation(vectors, coords)


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    """Run the benchmark and print markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT / "data" / "itda.duckdb")
    parser.add_argument("--workers", type=int, default=0, help="processes for all maps (0: one per core)")
    parser.add_argument("--every", type=int, default=6, help="sample every n-th dictionary for old vs new")
    parser.add_argument("--epochs", type=int, default=None, help="new settings' epochs (default: UmapParams)")
    parser.add_argument("--sweep", default="", help="epoch counts to compare on the sample, e.g. 500,300,200")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per epoch count in --sweep")
    args = parser.parse_args()

    from itda_core.config.atom_maps import UmapParams
    from itda_core.jobs.atom_maps import compute_atom_maps
    from itda_core.jobs.umap_layout import default_workers, embed
    from itda_core.store.connection import connect_readonly
    from itda_core.store.queries import atom_vectors

    params = UmapParams() if args.epochs is None else UmapParams(n_epochs=args.epochs)
    load = os.getloadavg()[0]
    print(f"# atom maps, {time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} CPUs, load {load:.1f}; "
          f"new: exact neighbours, {params.n_epochs} epochs; old: umap-learn neighbours, 500 epochs")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "copy.duckdb"
        shutil.copy(args.store, store)
        with connect_readonly(store) as con:
            dicts = con.execute(
                "SELECT dict_id, model_name, layer, n_atoms FROM dictionaries ORDER BY model_name, layer"
            ).fetchall()
        n_atoms = sum(int(d[3]) for d in dicts)
        workers = args.workers or default_workers(len(dicts), n_atoms)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        _, all_wall, all_cpu = timed(lambda: compute_atom_maps(store, params=params, recompute=True, workers=workers))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, ended and waited for
        workers_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        print(f"\nall {len(dicts)} dictionaries ({n_atoms:,} atoms), new settings, {workers} worker processes, "
              f"compilation included: **{all_wall:.1f} s** wall, CPU {all_cpu:.1f} s here + {workers_cpu:.1f} s in "
              f"the workers (load {os.getloadavg()[0]:.1f} after)")  # fmt: skip

        sample = dicts[:: max(1, args.every)]
        print(f"\nsample: {len(sample)} of {len(dicts)} dictionaries, one process; seconds wall (CPU)\n")
        print("| model | layer | atoms | old | new | old/new CPU | T old | T new | T new seed 1 "
              "| kNN old | kNN new | kNN new seed 1 |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
        totals = {"old_wall": 0.0, "old_cpu": 0.0, "new_wall": 0.0, "new_cpu": 0.0}
        vectors_of = {}
        old_embed(np.random.default_rng(0).standard_normal((96, 8)).astype(np.float32))  # compile, not timed
        for dict_id, model, layer, n in sample:
            with connect_readonly(store) as con:
                v = atom_vectors(con, int(dict_id)).astype(np.float32)
            vectors_of[dict_id] = v
            old, ow, oc = timed(old_embed, v)
            new, nw, nc = timed(embed, v, params)
            seed1 = embed(v, UmapParams(n_epochs=params.n_epochs, seed=1))
            (to, ko), (tn, kn), (t1, k1) = quality(v, old), quality(v, new), quality(v, seed1)
            for key, value in (("old_wall", ow), ("old_cpu", oc), ("new_wall", nw), ("new_cpu", nc)):
                totals[key] += value
            print(f"| {model} | {layer} | {n:,} | {ow:.1f} ({oc:.1f}) | {nw:.1f} ({nc:.1f}) | {oc / nc:.1f} "
                  f"| {to:.4f} | {tn:.4f} | {t1:.4f} | {ko:.4f} | {kn:.4f} | {k1:.4f} |", flush=True)  # fmt: skip
        print(f"| **sample** | | | {totals['old_wall']:.1f} ({totals['old_cpu']:.1f}) | {totals['new_wall']:.1f} "
              f"({totals['new_cpu']:.1f}) | {totals['old_cpu'] / totals['new_cpu']:.1f} | | | | | | |")  # fmt: skip

        if args.sweep:
            epochs = [int(e) for e in args.sweep.split(",")]
            print(f"\nepochs sweep on the sample (exact neighbours), mean over {args.seeds} seeds ± their spread "
                  "(max - min), CPU seconds per map summed\n")  # fmt: skip
            print("| model | layer | " + " | ".join(f"T {e} | kNN {e} | CPU {e}" for e in epochs) + " |")
            print("|---|---|" + "---|---|---|" * len(epochs))
            for dict_id, model, layer, _n in sample:
                v, cells = vectors_of[dict_id], []
                for e in epochs:
                    runs = [timed(embed, v, UmapParams(n_epochs=e, seed=s)) for s in range(args.seeds)]
                    qs = [quality(v, coords) for coords, _, _ in runs]
                    ts, ks = [q[0] for q in qs], [q[1] for q in qs]
                    cpu = sum(c for _, _, c in runs) / len(runs)
                    cells.append(f"{statistics.mean(ts):.4f} ± {max(ts) - min(ts):.4f} | "
                                 f"{statistics.mean(ks):.4f} ± {max(ks) - min(ks):.4f} | {cpu:.2f}")  # fmt: skip
                print(f"| {model} | {layer} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
