"""Steering speed on SmolLM2-135M: a plain and a steered continuation of 30 new tokens, greedy and sampled.

Run by hand: ``.venv/bin/python bench/bench_steering.py [--layer 6 --tokens 30 --repeats 3 --threads N]``.
The direction is a real activation at the layer (what an ITDA atom is: the residual of " rainy" in a sentence
about the weather), unit-normed. Prints a markdown table for docs/benchmarks.md: the best of ``--repeats``
wall times of one :func:`itda_core.steering.steer_generate` call, both continuations from scratch (a new
prompt or new settings) and with the plain one kept from an earlier call (what moving the strength or picking
another atom costs in the dashboard), beside transformers' own ``generate`` of the plain continuation alone,
measured in the same run so that ratios compare like with like; then the norms that were measured and the
two continuations.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

from itda_core.extraction import residual_stream
from itda_core.models import load_model
from itda_core.steering import Decoding, plain_continuation, steer_generate

PROMPT = "My favourite thing to do on holiday is"
SOURCE = "The weather in London is rainy today."


def best(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    """Time plain generate, steered greedy and steered sampled runs; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--strength", type=float, default=0.4)
    ap.add_argument("--tokens", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    enc = model.tokenizer(SOURCE, return_tensors="pt")
    hidden = residual_stream(model, enc["input_ids"], enc["attention_mask"], [args.layer])[args.layer][0]
    pieces = model.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    direction = hidden[pieces.index("Ġrainy")]
    ids = model.tokenizer(PROMPT, return_tensors="pt")

    def plain() -> object:
        with torch.inference_mode():
            return model.model.generate(**ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                        do_sample=False, pad_token_id=model.tokenizer.eos_token_id)  # fmt: skip

    def steer(sample: bool, kept: bool = False) -> Callable[[], object]:
        decoding = Decoding(args.tokens, sample=sample, temperature=0.8, top_p=0.9) if sample else Decoding(args.tokens)
        plain_run = plain_continuation(model, PROMPT, decoding) if kept else None
        return lambda: steer_generate(model, PROMPT, direction, args.layer, args.strength, decoding, plain=plain_run)

    steer(False)()  # warm-up (first-call allocations)
    t_plain, _ = best(plain, args.repeats)
    t_greedy, greedy = best(steer(False), args.repeats)
    t_sampled, sampled = best(steer(True), args.repeats)
    t_greedy_kept, _ = best(steer(False, kept=True), args.repeats)
    t_sampled_kept, _ = best(steer(True, kept=True), args.repeats)
    print(
        f"{args.model}, layer {args.layer}, strength {args.strength}, {args.tokens} new tokens, "
        f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}\n"
    )
    print("| run | seconds | ms / new token | vs plain generate |")
    print("|---|---:|---:|---:|")
    rows = (("transformers generate, plain only (reference)", t_plain, args.tokens),
            ("steer_generate greedy, both continuations", t_greedy, 2 * args.tokens),
            ("steer_generate sampled T=0.8 top-p 0.9, both continuations", t_sampled, 2 * args.tokens),
            ("steer_generate greedy, plain one kept (steered run only)", t_greedy_kept, args.tokens),
            ("steer_generate sampled, plain one kept (steered run only)", t_sampled_kept, args.tokens))  # fmt: skip
    for name, t, n in rows:
        print(f"| {name} | {t:.2f} | {1000 * t / n:.0f} | {t / t_plain:.2f}x |")
    norms = hidden.norm(dim=-1)
    print(f"\nnorm at layer {args.layer} of {SOURCE!r}: first token {norms[0]:.1f}, median of the rest "
          f"{norms[1:].median():.1f}; steering's typical norm {greedy.norm:.1f}, prompt positions not steered "
          f"{greedy.skipped}")  # fmt: skip
    for name, r in (("greedy", greedy), ("sampled", sampled)):
        print(f"{name} plain:   {r.unsteered!r}\n{name} steered: {r.steered!r}")


if __name__ == "__main__":
    main()
