"""What the demo's quality figures cost: for each embedded causal model, a demo build on a small budget (every
layer trained and indexed, FVU and cosine with the index) and the CE loss score of its 3 evenly spaced layers,
timed from the build's own log lines; the CE time as a fraction of the model's build in the same run.

Usage: ``.venv/bin/python bench/demo_quality.py [--models smollm2-135m,gemma3-270m] [--train-documents 20]
[--index-tokens 1024] [--ce-tokens 1024] [--out results.json]``
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch

from bench.machine import cpu_name
from itda_core.jobs.demo import DemoConfig, build_demo, ce_layers_of
from itda_core.store.connection import connect_readonly


def _one(name: str, args: argparse.Namespace, folder: Path) -> dict:
    """One model's demo build, with the CE step timed from its log."""
    stamped: list[tuple[float, str]] = []

    def log(line: str) -> None:
        stamped.append((time.perf_counter(), line))
        print(f"  {line}", flush=True)

    config = DemoConfig(store=folder / f"{name}.duckdb", models=[name], train_documents=args.train_documents,
                        index_tokens=args.index_tokens, ce_tokens=args.ce_tokens, ce_layers=3, atom_maps=False,
                        progress=False, device="cpu", log=log)  # fmt: skip
    start = time.perf_counter()
    report = build_demo(config)
    total = time.perf_counter() - start
    ce = next(float(m.group(1)) for _, line in stamped if (m := re.search(r"CE loss score\(s\) stored in (\d+)", line)))
    ce_start = next(t for t, line in stamped if "CE loss score of" in line)
    ce_end = next(t for t, line in stamped if "CE loss score(s) stored" in line)
    with connect_readonly(config.store) as con:
        rows = con.execute(
            "SELECT d.layer, e.metric, e.value, e.n_tokens FROM evaluations e JOIN dictionaries d USING (dict_id) "
            "WHERE e.metric IN ('ce_loss_score:saebench', 'fvu', 'cosine') "
            "AND json_extract_string(e.details, '$.source') IS DISTINCT FROM 'eval' OR e.metric LIKE 'ce_%' "
            "ORDER BY d.layer, e.metric"
        ).fetchall()
        n_layers = con.execute("SELECT max(layer) + 1 FROM dictionaries").fetchall()[0][0]
    return {"model": name, "layers": int(n_layers), "ce_layers": ce_layers_of(int(n_layers), 3),
            "build_seconds": round(total, 1), "ce_seconds": round(ce_end - ce_start, 1), "ce_logged_seconds": ce,
            "ce_fraction": round((ce_end - ce_start) / total, 3), "models": [m.__dict__ for m in report.models],
            "figures": [list(r) for r in rows]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--train-documents", type=int, default=20)
    parser.add_argument("--index-tokens", type=int, default=1024)
    parser.add_argument("--ce-tokens", type=int, default=1024)
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(name, flush=True)
            r = _one(name, args, Path(tmp))
            results.append(r)
            print(f"{name}: build {r['build_seconds']} s, of which CE loss score of layers {r['ce_layers']} "
                  f"{r['ce_seconds']} s ({r['ce_fraction']:.0%})", flush=True)  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
