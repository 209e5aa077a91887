"""Trainer cost next to the forward pass: SmolLM2-135M, all 30 layers, one pass over the default corpus.

Run by hand: ``.venv/bin/python bench/bench_train.py [--max-tokens 100000] [--model smollm2-135m]
[--no-early-stop]``.
The target (issue 3) is ITDA time (MP + bookkeeping) at most half the forward-pass time at the default budget.
Both are measured in the same run, batch by batch, so machine noise affects them alike.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from itda_core.corpus import load_corpus
from itda_core.models import load_model
from itda_core.trainer import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--max-tokens", type=int, default=100_000, help="the default budget of `itda train`")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=True,
                        help="MP stops a token once it provably stays under the threshold (the trainer's default)")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    layers = list(range(model.n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    train_part, _ = load_corpus("default").split(0.1)
    config = TrainConfig(layers=layers, max_tokens=args.max_tokens, early_stop=args.early_stop, progress=False)
    trainer = Trainer(model, train_part, config)
    trainer.run()
    r = trainer.report
    sizes = list(r.atoms.values())
    load = os.getloadavg()[0]
    print(
        f"# trainer vs forward, {time.strftime('%Y-%m-%d')}, {args.model}, {len(layers)} layers, "
        f"{args.device}, {torch.get_num_threads()} threads, early stop {'on' if args.early_stop else 'off'}, "
        f"load {load:.1f}"
    )
    print("| tokens | forward s | ITDA s | ratio ITDA/forward | tokens/s overall | atoms per layer (min-max) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {r.tokens:,} | {r.forward_seconds:.1f} | {r.trainer_seconds:.1f} | "
        f"{r.trainer_seconds / r.forward_seconds:.2f} | {r.tokens_per_second:,.0f} | {min(sizes):,}-{max(sizes):,} |"
    )


if __name__ == "__main__":
    main()
