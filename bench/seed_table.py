"""The 5-seed layer-matching table of issue 14: every measure x (initial-atom tie rule, which atoms count, raw or
chance-corrected Jaccard), on the committed seed models, with the authors' scoring and the cross-pairs score.

Dictionaries are built once per (model, tie rule); the Jaccard variants are scored from the same dictionaries and
the baselines from the same activations. Usage (one thread per process on a shared CPU):

    OMP_NUM_THREADS=1 .venv/bin/python bench/seed_table.py [--seeds 1 2 3 4 5] [--tokens 50000] [--out table.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from itda_core.models import load_model
from itda_core.similarity.layer_matching import (
    LAYER_MATCHING_MEASURES,
    LayerMatchingConfig,
    default_layers,
    run_model,
    score_runs,
)
from itda_core.similarity.layer_runs import benchmark_corpus as _corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--dir", type=Path, default=Path("data/seed_models"))
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--cos", type=float, default=0.95, help="add an activation when cos(x, x_hat) < this")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    models = [load_model(str(args.dir / f"seed{s}" / "final"), device="cpu") for s in args.seeds]
    layers = default_layers(models[0].n_layers)
    threshold = (2 - 2 * args.cos) / models[0].d_model
    rows: dict[str, dict[str, float]] = {}
    atoms: dict[str, dict] = {}
    for rule in ("value", "first"):
        measures = LAYER_MATCHING_MEASURES if rule == "value" else ("jaccard",)
        config = LayerMatchingConfig(tokens=args.tokens, k=args.k, threshold=threshold, init_rule=rule,
                                     measures=measures, device="cpu")
        corpus = _corpus(config)
        with torch.no_grad():
            runs = [run_model(m, corpus, layers, config) for m in models]
        atoms[rule] = {r.name: {layer: len(r.dictionaries[layer]) for layer in layers} for r in runs}
        for variant in ({"atoms": "all", "index": "raw"}, {"atoms": "evidence", "index": "raw"},
                        {"atoms": "all", "index": "corrected"}, {"atoms": "evidence", "index": "corrected"}):
            config.jaccard_options = variant
            config.measures = measures
            result = score_runs(runs, layers, config)
            for measure in result.accuracy:
                name = (f"Jaccard ({variant['index']}, {variant['atoms']} atoms), init {rule}"
                        if measure == "jaccard" else result.labels[measure])
                rows[name] = {"authors": result.accuracy_authors[measure], "cross": result.accuracy_cross[measure],
                              "ties": result.ties[measure]}
            measures = ("jaccard",)  # the baselines do not depend on the dictionaries: once is enough
        print(f"init {rule}: {time.perf_counter() - start:.0f} s", flush=True)
    print("\n| measure | authors' score (M x M pairs) | cross pairs only | tied rows |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['authors']:.3f} | {r['cross']:.3f} | {r['ties']} |")
    print(f"\nseeds {args.seeds}, {args.tokens:,} tokens, k {args.k}, add below cos {args.cos}, layers {layers}; "
          f"{time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "atoms": atoms, "seeds": args.seeds, "tokens": args.tokens,
                                        "k": args.k, "cos": args.cos, "layers": layers}, indent=1))


if __name__ == "__main__":
    main()
