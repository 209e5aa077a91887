"""Exports of a stored dictionary, checked: write the SAELens, Neuronpedia and delphi exports of one dictionary of
a store, load the SAELens folder with sae-lens and compare its codes with ours on held-out tokens.

Usage: ``.venv/bin/python bench/export_check.py [STORE] [--model smollm2] [--layer 15] [--tokens 1000]
[--out DIR] [--json results.json]`` (needs the interop extra: sae-lens).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from itda_core.corpus import load_corpus
from itda_core.export.delphi import export_delphi
from itda_core.export.neuronpedia import export_neuronpedia
from itda_core.export.saelens import export_saelens, fold_saelens_codes, itda_codes_to_saelens
from itda_core.extraction import extract
from itda_core.models import load_model
from itda_core.store.connection import connect_readonly
from itda_core.store.reader import read_dictionary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default="data/itda.duckdb")
    parser.add_argument("--model", default="smollm2", help="part of the stored model's name")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=1000, help="held-out tokens to compare codes on")
    parser.add_argument("--out", default="/tmp/itda-export-check")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import sae_lens

    with connect_readonly(args.store) as con:
        rows = con.execute("SELECT dict_id, model_name, held_out_fraction FROM dictionaries JOIN corpora "
                           "USING (corpus_id) WHERE layer = ?", [args.layer]).fetchall()
        dict_id, model_name, held_out = next(r for r in rows if args.model in r[1].lower())
        itda = read_dictionary(con, dict_id)
    out, figures = Path(args.out), {"store": args.store, "dict_id": dict_id, "model": model_name,
                                    "layer": args.layer, "atoms": len(itda), "k": itda.config.k}
    lm = load_model(model_name, device="cpu")
    for name, write in (("saelens", lambda o: export_saelens(itda, o, overwrite=True)),
                        ("neuronpedia", lambda o: export_neuronpedia(args.store, dict_id, o, model=lm, overwrite=True)),
                        ("delphi", lambda o: export_delphi(args.store, dict_id, o, overwrite=True))):
        start = time.perf_counter()
        written = write(out / name)
        size = sum(p.stat().st_size for p in Path(written).rglob("*") if p.is_file())
        figures[f"{name}_seconds"], figures[f"{name}_bytes"] = round(time.perf_counter() - start, 2), size
    sae = sae_lens.SAE.load_from_disk(str(out / "saelens"), device="cpu")
    _train, held = load_corpus("default").split(held_out)
    x = torch.cat([b.acts[args.layer] for b in extract(lm, held, [args.layer], itda.config.seq_len,
                                                                 max_tokens=args.tokens, progress=False)])
    x = x[: args.tokens].float()
    idx, coef = itda.encode(x)
    ours = fold_saelens_codes(itda_codes_to_saelens(idx, coef, len(itda)))
    with torch.no_grad():
        acts = sae.encode(x)
        theirs = fold_saelens_codes(acts)
        recon_theirs = sae.decode(acts)
    recon_ours = itda.decode(idx, coef)
    scale = x.norm(dim=1)
    same_support = ((ours != 0) == (theirs != 0)).all(dim=1)
    figures.update({
        "tokens": len(x),
        "same_atoms_fraction": float(same_support.float().mean()),
        "max_code_difference_over_norm": float(((ours - theirs).abs().amax(dim=1) / scale)[same_support].max()),
        "max_reconstruction_difference_over_norm": float(((recon_ours - recon_theirs).norm(dim=1) / scale).max()),
        "max_reconstruction_difference_over_norm_same_atoms":
            float(((recon_ours - recon_theirs).norm(dim=1) / scale)[same_support].max()),
    })
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
