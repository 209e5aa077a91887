"""What the demo's quality figures cost: for each embedded causal model, a demo build on a small budget (every
layer trained and indexed, FVU and cosine with the index) and the CE loss score of its 3 evenly spaced layers,
timed from the build's own log lines; the CE time as a fraction of the model's build in the same run.

Usage: ``.venv/bin/python bench/demo_quality.py [--models smollm2-135m,gemma3-270m] [--train-documents 20]
[--index-tokens 1024] [--ce-tokens 1024] [--out results.json]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.machine import cpu_name
from itda_core.jobs.demo import DemoConfig, build_demo, ce_layers_of
from itda_core.store.connection import connect_readonly


def _one(name: str, args: argparse.Namespace, folder: Path) -> dict:
    """One model's demo build, with the CE step timed from its log."""
    stamped: list[tuple[float, float, str]] = []  # (wall, this process's CPU seconds, line)

    def log(line: str) -> None:
        stamped.append((time.perf_counter(), time.process_time(), line))
        print(f"  {line}", flush=True)

    config = DemoConfig(store=folder / f"{name}.duckdb", models=[name], train_documents=args.train_documents,
                        index_tokens=args.index_tokens, ce_tokens=args.ce_tokens, ce_layers=3, atom_maps=False,
                        progress=False, device="cpu", log=log)  # fmt: skip
    start, cpu_start = time.perf_counter(), time.process_time()
    report = build_demo(config)
    total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
    ce_start, cpu_ce_start = next((t, c) for t, c, line in stamped if "CE loss score of" in line)
    ce_end, cpu_ce_end = next((t, c) for t, c, line in stamped if "CE loss score(s) stored" in line)
    index_start, cpu_index_start = next((t, c) for t, c, line in stamped if "indexing on" in line)
    with connect_readonly(config.store) as con:
        rows = con.execute(
            "SELECT d.layer, e.metric, e.value, e.n_tokens FROM evaluations e JOIN dictionaries d USING (dict_id) "
            "WHERE e.metric IN ('ce_loss_score:saebench', 'fvu', 'cosine') "
            "AND json_extract_string(e.details, '$.source') IS DISTINCT FROM 'eval' OR e.metric LIKE 'ce_%' "
            "ORDER BY d.layer, e.metric"
        ).fetchall()
        n_layers = con.execute("SELECT max(layer) + 1 FROM dictionaries").fetchall()[0][0]
    return {"model": name, "layers": int(n_layers), "ce_layers": ce_layers_of(int(n_layers), 3),
            "build_seconds": round(total, 1), "ce_seconds": round(ce_end - ce_start, 1),
            "index_seconds": round(ce_start - index_start, 1), "ce_fraction": round((ce_end - ce_start) / total, 3),
            "build_cpu_seconds": round(cpu_total, 1), "ce_cpu_seconds": round(cpu_ce_end - cpu_ce_start, 1),
            "index_cpu_seconds": round(cpu_ce_start - cpu_index_start, 1),
            "models": [m.__dict__ for m in report.models],
            "figures": [list(r) for r in rows]}  # fmt: skip


def overhead(n: int = 4096, d: int = 576, m: int = 2000, k: int = 40, repeats: int = 3) -> dict:
    """What the quality sums add to one encode chunk of the index (SmolLM2's width, a demo-sized dictionary): MP
    (``matching_pursuit``) vs the reconstruction plus ``QualityAccumulator.add``, best of ``repeats``, CPU seconds."""
    from itda_core.evaluation.accumulate import QualityAccumulator
    from itda_core.mp import matching_pursuit, reconstruct

    gen = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(m, d, generator=gen), dim=-1)
    x = torch.randn(n, d, generator=gen)
    mp, extra = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        idx, coef = matching_pursuit(x, atoms, k)
        t1 = time.process_time()
        QualityAccumulator().add(x, reconstruct(idx, coef, atoms))
        extra.append(time.process_time() - t1)
        mp.append(t1 - t0)
    return {"rows": n, "d": d, "atoms": m, "k": k, "mp_cpu_seconds": round(min(mp), 3),
            "quality_cpu_seconds": round(min(extra), 3), "ratio": round(min(extra) / min(mp), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--train-documents", type=int, default=20)
    parser.add_argument("--index-tokens", type=int, default=1024)
    parser.add_argument("--ce-tokens", type=int, default=1024)
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    parser.add_argument("--overhead-only", action="store_true", help="only the index chunk's quality overhead")
    args = parser.parse_args()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}", flush=True)
    cost = overhead()
    print(f"index chunk of {cost['rows']} rows: MP {cost['mp_cpu_seconds']} CPU s, quality sums "
          f"{cost['quality_cpu_seconds']} CPU s ({cost['ratio']:.1%})", flush=True)
    results: list[dict] = [{"overhead": cost}]
    if args.overhead_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(name, flush=True)
            r = _one(name, args, Path(tmp))
            results.append(r)
            print(f"{name}: build {r['build_seconds']} s ({r['build_cpu_seconds']} CPU s), of which index "
                  f"{r['index_seconds']} s ({r['index_cpu_seconds']} CPU s), CE loss score of layers {r['ce_layers']} "
                  f"{r['ce_seconds']} s ({r['ce_cpu_seconds']} CPU s, {r['ce_fraction']:.0%} of the build)",
                  flush=True)  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
