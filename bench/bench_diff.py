"""A dictionary diff against the Jaccard count of the same pair, in one run: what listing the atoms adds.

Run by hand: ``.venv/bin/python bench/bench_diff.py --atoms 50000``.

Two synthetic dictionaries of ``--atoms`` atoms each drawn from the same 200k training tokens (4,000 documents of
50 tokens; 5 characters a token, 500 distinct token texts; ``--overlap`` of B's atoms are A's), once with the
same tokenizer (keys) and once with another (spans). Per rule, the median of ``--repeats`` runs of: building
both atom sets (``DiffSource.atom_set``), the pair's shared count (``shared_count``, what a similarity cell
costs, uncached), the whole diff (``diff_sources``: sets, matching, the per-atom frame), and the diff's token
groups and token table. Figures on a shared machine vary with its load: compare ratios measured in one run.
Prints markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itda_core.dictionary import ITDAConfig
from itda_core.provenance import Provenance
from itda_core.similarity import pairs
from itda_core.similarity.diff import DiffSource, diff_sources

DOCS, DOC_LEN, TOKEN_CHARS, TEXTS = 4_000, 50, 5, 500


def source(dict_id: int, tokens: np.ndarray, tokenizer: str, rng: np.random.Generator) -> DiffSource:
    """A dictionary whose atoms come from the training tokens ``tokens`` (flat indices)."""
    doc, pos = tokens // DOC_LEN, tokens % DOC_LEN
    texts = np.array([f" w{i}" for i in range(TEXTS)], dtype=object)[(tokens * 7919) % TEXTS]
    prov = Provenance(torch.from_numpy(doc), torch.from_numpy(pos), torch.from_numpy(tokens % 30_000),
                      torch.from_numpy(pos * TOKEN_CHARS), torch.from_numpy(pos * TOKEN_CHARS + TOKEN_CHARS),
                      token_str=[f"Ġ{t.strip()}" for t in texts])  # fmt: skip
    config = ITDAConfig(model_id=tokenizer, model_name=tokenizer, layer=dict_id, d_model=4, tokenizer=tokenizer,
                        corpus_id="bench", corpus_sha256="c", documents_sha256="d", tokens_seen=DOCS * DOC_LEN)
    init = np.zeros(len(tokens), dtype=np.int64)
    init[: min(576, len(tokens))] = rng.integers(1, 3, min(576, len(tokens)))  # some arbitrary initial atoms
    return DiffSource(dict_id, prov, config, texts, init)


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=50_000)
    parser.add_argument("--overlap", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    universe = DOCS * DOC_LEN
    a_tokens = rng.choice(universe, args.atoms, replace=False)
    keep = int(args.overlap * args.atoms)
    rest = np.setdiff1d(np.arange(universe), a_tokens)
    b_tokens = np.concatenate([rng.choice(a_tokens, keep, replace=False),
                               rng.choice(rest, args.atoms - keep, replace=False)])  # fmt: skip
    print(f"{cpu_name()}, torch {torch.__version__}; {args.atoms:,} atoms each, {args.overlap:.0%} of B in A, "
          f"median of {args.repeats}\n")
    print("| rule | atom sets (both) | shared count | whole diff | groups (3 lists) + token table | diff / count |")
    print("|---|---|---|---|---|---|")
    for rule, tok_b in (("keys", "tok-a"), ("spans", "tok-b")):
        a, b = source(1, a_tokens, "tok-a", rng), source(2, b_tokens, tok_b, rng)
        sa, sb = a.atom_set("evidence"), b.atom_set("evidence")

        def count(sa=sa, sb=sb) -> None:
            pairs._PAIR_CACHE.clear()  # what a cell costs the first time
            pairs.shared_count(sa, sb)

        found = diff_sources(a, b, sets=(sa, sb))
        assert found.method == rule
        t_sets = median_time(lambda a=a, b=b: (a.atom_set("evidence"), b.atom_set("evidence")), args.repeats)
        t_count = median_time(count, args.repeats)
        t_diff = median_time(lambda a=a, b=b, s=(sa, sb): diff_sources(a, b, sets=s), args.repeats)
        t_groups = median_time(lambda f=found: (f.groups("a"), f.groups("b"), f.groups("a", "shared"),
                                                f.token_table()), args.repeats)  # fmt: skip
        print(f"| {rule} | {t_sets:.3f} s | {t_count * 1e3:.1f} ms | {t_diff:.3f} s | {t_groups:.3f} s | "
              f"{t_diff / t_count:.0f}x |")
        print(f"\n<!-- {rule}: |A| {found.n_a:,}, |B| {found.n_b:,}, shared {found.shared:,}, "
              f"Jaccard {found.jaccard:.3f} -->\n", file=sys.stderr)


if __name__ == "__main__":
    main()
