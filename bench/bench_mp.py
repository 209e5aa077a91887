"""Matching-pursuit throughput: dense product, textbook loop, naive torch Gram loop, fast path, fallback.

Run by hand: ``.venv/bin/python bench/bench_mp.py [--m 16384 --d 576 --k 40 --n 4096]``.
Prints a markdown table for docs/benchmarks.md; all rates come from one run on random unit-norm atoms
and Gaussian activations, so the ratios compare like with like. Slow rows use fewer tokens
(``--n-slow``) and report a per-token rate.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

from itda_core import mp
from itda_core.mp import backends, common, dispatch
from itda_core.mp import gram as tiers


def device_name(device: torch.device) -> str:
    """CPU model, or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (seconds); a call returning a float reports its own time."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = result if isinstance(result, float) else time.perf_counter() - start
        best = min(best, elapsed)
    return best


def data(m: int, d: int, n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm Gaussian atoms [m, d] and raw Gaussian activations [n, d]."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(m, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    x = 4.0 * torch.randn(n, d, generator=g)
    return atoms.to(device), x.to(device)


def numba_steps(corr0: torch.Tensor, scratch: torch.Tensor, gram: torch.Tensor, k: int) -> float:
    """Seconds the numba kernel alone takes for all rows of ``corr0`` (copied first, untimed), threaded
    the way :func:`itda_core.mp.matching_pursuit` threads it."""
    scratch.copy_(corr0)
    n, m = corr0.shape
    kernel = backends._numba_kernel()
    assert kernel is not None
    threads = max(1, torch.get_num_threads())
    pool = backends._thread_pool(threads)
    flat, c = gram.reshape(-1).numpy(), scratch.numpy()
    idx, coef = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    energy, never = np.zeros(n), np.full(n, -np.inf)  # no early stop: all k steps
    pieces = 4 * threads
    bounds = [n * p // pieces for p in range(pieces + 1)]
    start = time.perf_counter()
    futures = [pool.submit(kernel, c[a:b], flat, m, k, idx[a:b], coef[a:b], energy[a:b], never[a:b])
               for a, b in itertools.pairwise(bounds)]
    for f in futures:
        f.result()
    return time.perf_counter() - start


def naive_gram_mp(x: torch.Tensor, atoms: torch.Tensor, gram: torch.Tensor, k: int) -> torch.Tensor:
    """The straightforward torch Gram loop over all tokens at once (the baseline the kernel replaces)."""
    corr = x @ atoms.T
    idx = torch.empty((x.shape[0], k), dtype=torch.int64, device=x.device)
    for s in range(k):
        j = corr.abs().argmax(dim=1)
        a = corr.gather(1, j[:, None])
        idx[:, s] = j
        corr -= a * gram[j]
    return idx


def compare(x: torch.Tensor, atoms: torch.Tensor, k: int, gram: torch.Tensor | mp.HalfGram) -> str:
    """How the fast path's codes compare with the textbook loop's on ``x``.

    Where a token's indices differ, the first differing step is checked for a near-tie: the two
    atoms' |corr| under the textbook residual within 1e-5 relative (float rounding decides those).
    """
    ti, tc = mp.textbook_matching_pursuit(x, atoms, k)
    fi, fc = mp.matching_pursuit(x, atoms, k, gram=gram)
    differ = (fi != ti).any(dim=1).nonzero().flatten().tolist()
    near = 0
    for t in differ:
        s = int((fi[t] != ti[t]).nonzero()[0])
        r = x[t] - mp.reconstruct(ti[t : t + 1, :s], tc[t : t + 1, :s], atoms)[0]
        corr = (r @ atoms.T).abs()
        a, b = corr[ti[t, s]].item(), corr[fi[t, s]].item()
        near += abs(a - b) <= 1e-5 * max(a, b)
    same = (fi == ti).all(dim=1)
    coef_diff = (fc - tc)[same].abs().max().item() if bool(same.any()) else float("nan")

    def err(i: torch.Tensor, c: torch.Tensor) -> float:
        return ((x - mp.reconstruct(i, c, atoms)).norm(dim=1) / x.norm(dim=1)).mean().item()
    return (f"agreement with the textbook loop on {len(x)} tokens x {k} steps: {len(x) - len(differ)} tokens "
            f"with identical indices, {len(differ)} diverging (first divergence at a near-tie: {near}); "
            f"coefficients of identical rows max |diff| {coef_diff:.1e}; "
            f"mean relative residual fast {err(fi, fc):.4f} vs textbook {err(ti, tc):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--m", type=int, default=16384, help="atoms")
    parser.add_argument("--d", type=int, default=576, help="activation width")
    parser.add_argument("--k", type=int, default=40, help="MP steps (L0)")
    parser.add_argument("--n", type=int, default=4096, help="tokens for the fast rows")
    parser.add_argument("--n-slow", type=int, default=128, help="tokens for the textbook and fallback rows")
    parser.add_argument("--n-naive", type=int, default=512, help="tokens for the naive torch Gram row")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (slow rows: 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mid-m", type=int, default=40000,
                        help="atoms for the float16-tier rows: float32 G over the budget, float16 G within (0: skip)")
    parser.add_argument("--mid-n", type=int, default=2048, help="tokens for the float16-tier rows")
    parser.add_argument("--big-m", type=int, default=65536, help="atoms for the fallback row (0: skip)")
    parser.add_argument("--big-n", type=int, default=32, help="tokens for the big-m fallback row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="  [log] %(name)s: %(message)s")
    dev = torch.device(args.device)
    m, d, k, n = args.m, args.d, args.k, args.n
    atoms, x = data(m, d, n, dev, args.seed)
    slow = x[: args.n_slow]
    naive_x = x[: args.n_naive]

    t0 = time.perf_counter()
    mp.matching_pursuit(x[:8], atoms[:64], k)  # warm-up: numba compile (or cache load), both kernels
    if dev.type == "cpu" and backends._screened_kernel() is not None:
        mp.matching_pursuit(x[:8], atoms[:64], k, gram=mp.gram_matrix_half(atoms[:64]))
    warm = time.perf_counter() - t0
    start = time.perf_counter()
    auto = mp.auto_gram(atoms)  # the matrix matching_pursuit builds by default (its tier depends on m)
    gram_s = time.perf_counter() - start
    if auto is None:
        raise SystemExit(f"no Gram matrix fits the memory budget at m = {m}; lower --m or set ITDA_GRAM_MAX_BYTES")
    gram = auto if isinstance(auto, torch.Tensor) else mp.gram_matrix(atoms)
    half = auto if isinstance(auto, mp.HalfGram) else (
        mp.gram_matrix_half(atoms) if dev.type == "cpu" and backends._screened_kernel() is not None else None)
    default_tier = "float16 tier, screened" if isinstance(auto, mp.HalfGram) else "float32 tier"

    out = torch.empty((n, m), device=dev)
    if dev.type == "cpu":
        kernel = "numba" if backends._numba_kernel() is not None else "torch"
    else:
        kernel = "triton" if backends._triton_module() is not None else "torch"
    torch_chunk = common._default_chunk(m, dev, 3)
    # name -> (tokens, callable, timed every round?)
    cases: dict[str, tuple[int, Callable[[], object], bool]] = {
        "dense product x @ atoms.T (fresh output)": (n, lambda: x @ atoms.T, True),
        "dense product into a reused buffer (torch.mm out=)":
            (n, lambda: torch.mm(x, atoms.T, out=out), True),
        "textbook loop (reference)": (len(slow), lambda: mp.textbook_matching_pursuit(slow, atoms, k), False),
        "naive torch Gram loop (corr -= a * G[j], all tokens at once)":
            (len(naive_x), lambda: naive_gram_mp(naive_x, atoms, gram, k), False),
        "torch Gram path (chunked; the CUDA / no-numba path)":
            (len(naive_x), lambda: dispatch._gram_mp_torch(naive_x, atoms, gram, k, torch_chunk), False),
        f"fast path, the default: matching_pursuit(gram=auto_gram(atoms)) [{default_tier}]":
            (n, lambda: mp.matching_pursuit(x, atoms, k, gram=auto), True),
        f"float32 Gram tier: matching_pursuit(gram=gram_matrix(atoms)) [{kernel}]":
            (n, lambda: mp.matching_pursuit(x, atoms, k, gram=gram), True),
        "float16 Gram tier: matching_pursuit(gram=HalfGram) [numba, screened]":
            (n, lambda: mp.matching_pursuit(x, atoms, k, gram=half), True),
        "fallback: chunked textbook (method='textbook')":
            (len(slow), lambda: mp.matching_pursuit(slow, atoms, k, method="textbook"), False),
    }
    if half is None:
        del cases["float16 Gram tier: matching_pursuit(gram=HalfGram) [numba, screened]"]
    steps_name = "  of which the k MP steps alone (float32 numba kernel, x @ atoms.T excluded)"
    if kernel == "numba":
        corr0 = torch.mm(x, atoms.T)
        scratch = torch.empty_like(corr0)
        cases[steps_name] = (n, lambda: numba_steps(corr0, scratch, gram, k), True)
    best = {name: float("inf") for name in cases}
    load_before = f"{os.getloadavg()[0]:.2f}"
    for r in range(args.repeats):  # rounds interleave the rows so background load hits them alike
        for name, (_tokens, fn, every) in cases.items():
            if every or r == 0:
                best[name] = min(best[name], timed(fn, dev, 1))
    rows = [(name, tokens, tokens / best[name]) for name, (tokens, _fn, _every) in cases.items()]
    if kernel == "numba":  # show the kernel's row right under the fast path's
        steps_row = next(row for row in rows if row[0] == steps_name)
        rows.remove(steps_row)
        rows.insert(next(i for i, row in enumerate(rows) if row[0].startswith("float32 Gram tier")) + 1, steps_row)
    rate = {name: r for name, _t, r in rows}
    dense = max(r for name, _t, r in rows if name.startswith("dense"))
    textbook = rate["textbook loop (reference)"]
    fast = next(r for name, _t, r in rows if name.startswith("fast"))
    fallback = next(r for name, _t, r in rows if name.startswith("fallback"))

    agreement = compare(slow, atoms, k, gram)
    half_agreement = compare(slow, atoms, k, half) if half is not None else ""

    print()
    print(f"# matching pursuit, {time.strftime('%Y-%m-%d')}, {device_name(dev)}, {torch.get_num_threads()} "
          f"threads of {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, numba {numba.__version__}, device {dev}")
    print(f"# m = {m} atoms, d = {d}, k = {k}; random unit-norm atoms, Gaussian activations")
    print()
    print("| path | tokens timed | tokens/s | vs textbook | vs dense (faster row) |")
    print("|---|---|---|---|---|")
    for name, tokens, r in rows:
        print(f"| {name} | {tokens} | {r:,.0f} | {r / textbook:.1f}x | {r / dense:.2f}x |")
    print()
    print(f"fast / textbook = {fast / textbook:.1f}x (CPU target >= 25x); fast / dense = {fast / dense:.2f} "
          f"(CPU target >= 0.5); fallback / textbook = {fallback / textbook:.2f}x")
    if kernel == "numba":
        steps = rate[steps_name]
        print(f"float32 MP steps alone: {steps:,.0f} tokens/s = {steps * (k - 1) * m * 4 / 1e9:.1f} GB/s of Gram "
              f"rows; dense product + steps in sequence at the measured rates: "
              f"{1 / (1 / dense + 1 / steps):,.0f} tokens/s = {1 / (1 + dense / steps):.2f} of dense")
    print(f"load average before/after the timed rows: {load_before} / {os.getloadavg()[0]:.2f} "
          f"(other processes on the machine skew the rates)")
    size = m * m * (2 if default_tier.startswith("float16") else 4) / 2**30
    print(f"one-off costs: the default Gram matrix ({default_tier}) {gram_s:.2f} s ({size:.2f} GiB; = "
          f"{gram_s * fast:,.0f} tokens of fast-path time), first call incl. numba compile/cache load {warm:.2f} s")
    print(f"float32 tier: {agreement}")
    if half_agreement:
        print(f"float16 tier: {half_agreement}")

    for big_m, big_n in ((args.mid_m, args.mid_n), (args.big_m, args.big_n)):
        if big_m:
            big_dictionary(big_m, big_n, d, k, dev, args)


def auto_choice(m: int, n: int, k: int, dev: torch.device) -> str:
    """Which path ``matching_pursuit(method='auto')`` takes for n tokens over m unit atoms, and why."""
    budget = mp.gram_budget_bytes(dev)
    if not dispatch._gram_pays_off(n, m, k, dev):
        return f"the chunked textbook loop: building the Gram matrix does not pay off for {n} tokens"
    half_ok = m * m * 2 <= budget and tiers._half_tier_available(dev, torch.float32)
    if m * m * 4 <= budget and not (half_ok and tiers._prefers_half(m, dev, torch.float32)):
        return "the float32 Gram path"
    if half_ok and m * m * 4 <= budget:
        return "the float16 Gram tier (a float32 matrix this large is past mp.HALF_FROM_BYTES)"
    if half_ok:
        return "the float16 Gram tier (the float32 matrix exceeds the budget, the float16 one fits)"
    return "the chunked textbook loop: the Gram matrix exceeds the budget"


def big_dictionary(m: int, n: int, d: int, k: int, dev: torch.device, args: argparse.Namespace) -> None:
    """Dense product, method='auto' and the textbook loop for a dictionary too big for a float32 Gram matrix."""
    atoms, x = data(m, d, n, dev, args.seed + 1)
    budget = mp.gram_budget_bytes(dev)
    print()
    print(f"## m = {m}, {n} tokens: Gram would be {m * m * 4 / 2**30:.1f} GiB in float32, "
          f"{m * m * 2 / 2**30:.1f} GiB in float16, budget {budget / 2**30:.1f} GiB -> method='auto' takes "
          f"{auto_choice(m, n, k, dev)}")
    dense = n / timed(lambda: x @ atoms.T, dev, args.repeats)
    slow = x[: args.n_slow // 4]
    textbook = len(slow) / timed(lambda: mp.textbook_matching_pursuit(slow, atoms, k), dev, 1)
    rows = [("dense product x @ atoms.T only", n, dense), ("textbook loop", len(slow), textbook)]
    tier = auto_choice(m, n, k, dev)
    if "float16" in tier:  # the one-off build apart from the per-token rate, as in the main table
        start = time.perf_counter()
        half = mp.gram_matrix_half(atoms)
        build = time.perf_counter() - start
        rows.append(("matching_pursuit(gram=HalfGram) [float16 tier, screened]", n,
                     n / timed(lambda: mp.matching_pursuit(x, atoms, k, gram=half), dev, 1)))
        print(f"building the float16 Gram matrix: {build:.1f} s (= {build * dense:,.0f} tokens of dense product)")
        del half
    else:
        rows.append(("matching_pursuit(method='auto')", n, n / timed(lambda: mp.matching_pursuit(x, atoms, k), dev, 1)))
    print("| path | tokens timed | tokens/s | vs textbook | vs dense |")
    print("|---|---|---|---|---|")
    for name, tokens, rate in rows:
        print(f"| {name} | {tokens} | {rate:,.1f} | {rate / textbook:.1f}x | {rate / dense:.3f}x |")

if __name__ == "__main__":
    main()
