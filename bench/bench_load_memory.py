"""Peak memory of loading a model whole, truncated to a layer, and with its later blocks offloaded to disk.

Each variant runs in a fresh Python process (peak RSS is a process's high-water mark, so variants in one process
would hide each other), which imports the library, records its RSS, loads the model, runs one extraction batch at
the layer and reports ``ru_maxrss``. Ratios are measured within one run (the machine may be shared).

Run by hand: ``.venv/bin/python bench/bench_load_memory.py [--model smollm2-135m] [--layer 5] [--repeats 2]``.
Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

CHILD = r"""
import json, resource, sys, time
from itda_core.corpus import load_corpus
from itda_core.extraction import extract
from itda_core.models.loading import load_model
from itda_core.models.placement import blocks_path

def status_kib(key="VmRSS"):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))

name, layer, variant, offload = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
docs = load_corpus("default").documents[:8]
before = status_kib()
start = time.perf_counter()
if variant in ("full", "full-read"):
    lm = load_model(name, device="cpu")
    if variant == "full-read":  # every weight page read, as a full forward or a copy to a GPU would
        sum(float(p.float().sum()) for p in lm.model.parameters())
elif variant == "truncated":
    lm = load_model(name, device="cpu", up_to_layer=layer)
else:  # blocks after the layer on disk: a device map built from a full model's module names
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from itda_core.models.loading import locate_model
    where, _, _ = locate_model(name)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(where))
    base = empty.base_model
    from itda_core.models.loading import _find_blocks
    path = blocks_path(empty, _find_blocks(base))
    top = path.split(".")[0]
    device_map = {n: "cpu" for n, _ in empty.named_children() if n != top}
    device_map.update({f"{top}.{n}": "cpu" for n, _ in getattr(empty, top).named_children()
                       if f"{top}.{n}" != path})
    device_map.update({f"{path}.{i}": "cpu" if i <= layer else "disk" for i in range(len(_find_blocks(base)))})
    lm = load_model(name, device_map=device_map, offload_dir=offload, dtype="float32")
loaded = time.perf_counter() - start
params = sum(p.numel() for p in lm.model.parameters() if p.device.type != "meta")
n = sum(len(b) for b in extract(lm, docs, [layer], 128, 8, progress=False))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "peak_kib": peak, "anon_kib": status_kib("RssAnon"),
                  "file_kib": status_kib("RssFile"), "load_s": loaded, "params": params,
                  "blocks": len(lm.blocks), "n_layers": lm.n_layers, "model_id": lm.model_id, "tokens": n}))
"""


def run_variant(model: str, layer: int, variant: str) -> dict:
    """One variant in a fresh interpreter; its JSON line."""
    with tempfile.TemporaryDirectory() as offload:
        out = subprocess.run([sys.executable, "-c", CHILD, model, str(layer), variant, offload], check=True,
                             capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the median is reported")
    parser.add_argument("--variants", nargs="+", default=["full", "truncated", "offload", "full-read"])
    args = parser.parse_args()
    from itda_core.models.loading import locate_model

    locate_model(args.model)  # converts an embedded GGUF once, outside the measured processes
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for variant in args.variants:
            results[variant].append(run_variant(args.model, args.layer, variant))
    print(f"# load memory, {time.strftime('%Y-%m-%d')}, {cpu_name()}, torch {torch.__version__}, {args.model} "
          f"layer {args.layer}, median of {args.repeats} fresh processes per variant")
    print("| variant | blocks in memory | parameters in memory | peak RSS (MiB) | added by load + 1 batch (MiB) "
          "| of it file-backed at the end (MiB) | load (s) | peak vs full |")
    print("|---|---|---|---|---|---|---|---|")
    full_peak = statistics.median(r["peak_kib"] for r in results[args.variants[0]])
    ids = {r["model_id"] for rs in results.values() for r in rs}
    for variant, rs in results.items():
        peak = statistics.median(r["peak_kib"] for r in rs)
        added = statistics.median(r["peak_kib"] - r["before_kib"] for r in rs)
        load = statistics.median(r["load_s"] for r in rs)
        file_backed = statistics.median(r["file_kib"] for r in rs)
        r0 = rs[0]
        on_disk = r0["blocks"] - args.layer - 1
        blocks = f"{args.layer + 1} (+{on_disk} on disk)" if variant == "offload" else str(r0["blocks"])
        print(f"| {variant} | {blocks} of {r0['n_layers']} | {r0['params'] / 1e6:.1f} M | {peak / 1024:,.0f} | "
              f"{added / 1024:,.0f} | {file_backed / 1024:,.0f} | {load:.2f} | {peak / full_peak:.2f} |")
    print(f"\nmodel ids: {', '.join(sorted(ids))} ({'the same' if len(ids) == 1 else 'DIFFERENT'} for every variant)")


if __name__ == "__main__":
    main()
