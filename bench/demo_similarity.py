"""Does a store's cross-model heatmap measure the models or the initialisation? For each Jaccard variant (which
atoms count x raw / chance-corrected, every pair valued; and the default, which leaves sets under min_atoms
empty): the correlation of each SmolLM2 row's mean against Gemma with the share of initial atoms in that
SmolLM2 dictionary, the rows' range, and a few SmolLM2 layer x layer cells.

Usage: ``.venv/bin/python bench/demo_similarity.py [STORE] [--out results.json]`` (default data/itda.duckdb).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from itda_core.similarity.jaccard import JaccardOptions
from itda_core.similarity.matrices import jaccard_matrix
from itda_core.store.connection import connect_readonly
from itda_core.store.reader import read_dictionary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default="data/itda.duckdb")
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    with connect_readonly(args.store) as con:
        rows = con.execute("SELECT dict_id, model_name, layer FROM dictionaries ORDER BY model_name, layer").fetchall()
        dicts: dict[str, dict] = {}
        for dict_id, name, layer in rows:
            dicts.setdefault(name, {})[layer] = read_dictionary(con, dict_id)
    smol = dicts[next(n for n in dicts if "smol" in n.lower())]
    gemma = dicts[next(n for n in dicts if "gemma" in n.lower())]
    share = np.array([float((smol[layer].init_count != 0).float().mean()) for layer in sorted(smol)])
    for label, model in (("smollm2", smol), ("gemma", gemma)):
        print(label, "atoms per layer", [len(model[layer]) for layer in sorted(model)])
        print(label, "evidence atoms per layer", [int(model[layer].evidence.sum()) for layer in sorted(model)])
    print(f"SmolLM2 initial-atom share {share.min():.2f}-{share.max():.2f}")
    out = {}
    variants = [(atoms, index, 0) for atoms in ("all", "evidence") for index in ("raw", "corrected")]
    variants.append(("evidence", "raw", JaccardOptions().min_atoms))  # the default, small sets left empty
    for atoms, index, min_atoms in variants:
        options = JaccardOptions(atoms=atoms, index=index, min_atoms=min_atoms)
        cross = jaccard_matrix(smol, gemma, options=options).to_numpy()
        row_mean = np.nanmean(cross, axis=1)
        within = jaccard_matrix(smol, options=options)
        off = within.to_numpy()[~np.eye(len(within), dtype=bool)]
        key = f"{atoms}/{index}/min{min_atoms}"
        out[key] = {
            "corr_row_mean_vs_init_share": round(float(np.corrcoef(row_mean, share)[0, 1]), 3),
            "row_means": [round(float(np.nanmin(row_mean)), 4), round(float(np.nanmax(row_mean)), 4)],
            "smollm2_15_vs_28": round(float(within.loc[15, 28]), 3),
            "smollm2_15_vs_16": round(float(within.loc[15, 16]), 3),
            "smollm2_off_diagonal_min_median": [round(float(np.nanmin(off)), 4), round(float(np.nanmedian(off)), 4)],
        }
        print(options.label, f"min_atoms {min_atoms}", out[key])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
