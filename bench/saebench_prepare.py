"""SAEBench side by side, step 1 (the project's environment): one stored dictionary's SAELens export, the exact
token batches SAEBench will see, and our own evaluation of the dictionary on those same tokens.

Held-out documents that fill ``--context`` tokens are tokenised by our tokenizer (no padding anywhere, so both
tools see identical [batch, context] token tensors); ``itda_core.evaluation.evaluate`` scores the dictionary on
them with ``--ce-rule saebench``. Step 2, ``bench/saebench_core.py``, runs in SAEBench's own environment
(``make saebench``) and writes SAEBench's figures beside ours.

Usage: ``.venv/bin/python bench/saebench_prepare.py STORE --model gemma --layer 9 --batches 8 --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from itda_core.evaluation import evaluate
from itda_core.evaluation.ce_score import special_token_ids
from itda_core.export.saelens import export_saelens
from itda_core.jobs.evaluation import held_out_corpus
from itda_core.models import load_model
from itda_core.store.catalog import list_dictionaries
from itda_core.store.connection import connect_readonly
from itda_core.store.reader import read_dictionary
from itda_core.tokenize import tokenize_documents


def full_windows(model, documents, context: int, n: int):
    """The first ``n`` documents whose tokens fill ``context`` positions, and their [n, context] token ids."""
    chosen, rows = [], []
    for start in range(0, len(documents), 64):
        docs = documents[start:start + 64]
        tb = tokenize_documents(model, docs, context, False)
        full = tb.attention_mask.bool().all(dim=1)
        for i in torch.nonzero(full).flatten().tolist():
            chosen.append(docs[i])
            rows.append(tb.input_ids[i])
            if len(chosen) == n:
                return chosen, torch.stack(rows)
    raise SystemExit(f"only {len(chosen)} held-out documents fill {context} tokens; ask for fewer batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default="data/itda.duckdb")
    parser.add_argument("--model", default="gemma", help="part of the stored model's name")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--context", type=int, default=128, help="tokens per prompt (SAEBench's context_size)")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per batch")
    parser.add_argument("--batches", type=int, default=8, help="batches (SAEBench's n_eval_*_batches)")
    parser.add_argument("--out", default="/tmp/itda-saebench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with connect_readonly(args.store) as con:
        table = list_dictionaries(con)
        rows = [d for d in table.to_dict("records")
                if d["layer"] == args.layer and args.model in d["model_name"].lower()]
        if not rows:
            raise SystemExit(f"no dictionary of a model matching {args.model!r} at layer {args.layer} in {args.store}")
        info = rows[0]
        itda = read_dictionary(con, info["dict_id"])
    held = held_out_corpus(args.store, info["corpus_id"])
    if held is None:
        raise SystemExit(f"{args.store} has no held-out documents for the corpus of dictionary {info['dict_id']}")
    lm = load_model(itda.config.model_name, device="cpu")
    n = args.batch_size * args.batches
    docs, tokens = full_windows(lm, held.documents, args.context, n)

    export_saelens(itda, out / "saelens", context_size=args.context, overwrite=True)
    save_file({"tokens": tokens.contiguous()}, str(out / "tokens.safetensors"))
    start = time.perf_counter()
    ours = evaluate(lm, itda, docs, seq_len=args.context, batch_size=args.batch_size, max_tokens=None,
                    ce_rule="saebench")
    tok = lm.tokenizer
    run = {
        "store": args.store, "dict_id": int(info["dict_id"]), "model_name": itda.config.model_name,
        "layer": args.layer, "atoms": len(itda), "k": itda.config.k, "context": args.context,
        "batch_size": args.batch_size, "batches": args.batches, "prompts": n,
        "model_folder": str(lm.source),
        # SAEBench's core evaluation ignores exactly these (multiple_evals: pad, eos, bos).
        "ignore_tokens": sorted({t for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if t is not None}),
        "our_special_tokens": special_token_ids(tok),
        "itda": {**ours.to_dict(), "seconds": round(time.perf_counter() - start, 1)},
    }
    (out / "run.json").write_text(json.dumps(run, indent=2))
    print(json.dumps({key: run[key] for key in ("dict_id", "model_name", "layer", "atoms", "k", "prompts")}))
    print(ours.summary())


if __name__ == "__main__":
    main()
