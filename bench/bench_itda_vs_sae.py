"""ITDA against a TopK SAE on the same cached activations (issue 6): wall time, tokens, size, L0, FVU, CE score.

Run by hand (takes ~30 minutes on 2 shared CPU cores with the defaults; see docs/benchmarks.md)::

    nohup .venv/bin/python bench/bench_itda_vs_sae.py --sae-python /tmp/saevenv/bin/python \
        > data/runs/bench_itda_vs_sae.log 2>&1 &

Steps: (1) cache the residual stream after block ``--layer`` for ``--train-tokens`` tokens of the default
corpus's train split (every position, as ``itda train`` uses them); (2) build ITDAs from those activations
with the same greedy construction as ``itda train`` (one at the default threshold, one with a lower
threshold capped at the SAE's width, for a matched-size comparison); (3) train a TopK SAE (k = L0) on the
same activations in a scratch venv that has an SAE library (``bench/sae_train.py``: EleutherAI sparsify,
or a labelled minimal TopK SAE); (4) evaluate every dictionary with :func:`itda_core.evaluation.evaluate_many`
on held-out text (the SAE through a small adapter, so both go through the very same splice); (5) optionally
sweep the ITDA over k x size and save the CE-score-vs-L0 figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from itda_core.corpus import load_corpus
from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.evaluation import EvalResult, evaluate_many, plot_sweep, save_figure, sweep, sweep_table
from itda_core.extraction import extract
from itda_core.layer_builder import LayerBuilder, default_threshold
from itda_core.models import LoadedModel, load_model
from itda_core.provenance import Provenance

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchConfig:
    """Options of one benchmark run."""

    model: str = "smollm2-135m"
    layer: int = 15
    k: int = 40
    train_tokens: int = 50_000
    eval_tokens: int = 2_000
    held_out: float = 0.1
    sae_width: int = 4096
    sae_seconds: float = 1200.0
    sae_batch_tokens: int = 1024
    sae_impl: str = "sparsify"
    sae_python: str = ""
    itda_matched_threshold_factor: float = 0.25  # threshold of the matched-size ITDA, times the default
    sweep_tokens: int = 1_000  # 0 = no sweep figure
    threads: int = 1
    out_dir: str = "data/runs/bench_itda_vs_sae"
    figure_stem: str = "docs/figures/smollm2-135m_L15_ce_vs_l0"


class SAEDictionary:
    """A trained TopK SAE dressed as an :class:`ITDA` for :func:`evaluate_many`: ``encode`` returns the top-k
    latents and their activations, ``decode`` the reconstruction W_dec^T z + b_dec."""

    def __init__(self, weights: dict[str, torch.Tensor], config: ITDAConfig) -> None:
        self.w_enc = weights["encoder.weight"].float()
        self.b_enc = weights["encoder.bias"].float()
        self.atoms = weights["W_dec"].float()  # [width, d]: the decoder directions
        self.b_dec = weights["b_dec"].float()
        self.config = config
        self.d_model = int(self.atoms.shape[1])

    def __len__(self) -> int:
        return int(self.atoms.shape[0])

    def to(self, device: torch.device | str) -> SAEDictionary:
        moved = {
            "encoder.weight": self.w_enc.to(device),
            "encoder.bias": self.b_enc.to(device),
            "W_dec": self.atoms.to(device),
            "b_dec": self.b_dec.to(device),
        }
        return SAEDictionary(moved, self.config)

    def encode(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        pre = torch.relu((x - self.b_dec) @ self.w_enc.T + self.b_enc)
        acts, idx = pre.topk(k, dim=-1)
        return idx, acts

    def decode(self, indices: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding_bag(indices, self.atoms, per_sample_weights=coefficients, mode="sum") + (
            self.b_dec
        )


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cache_activations(model: LoadedModel, cfg: BenchConfig, out: Path) -> dict:
    """Residual stream after block ``cfg.layer`` for the first ``cfg.train_tokens`` train-split tokens."""
    meta_path = out / "acts.json"
    if meta_path.is_file() and (out / "prov.safetensors").is_file():
        meta = json.loads(meta_path.read_text())
        same = (meta["model_id"], meta["layer"], meta["requested"]) == (model.model_id, cfg.layer, cfg.train_tokens)
        if same:
            log(f"reusing cached activations ({meta['tokens']:,} tokens, {meta['forward_seconds']:.0f} s to make)")
            return meta
    train_part, _ = load_corpus("default").split(cfg.held_out)
    acts, provs, batch_sizes = [], [], []
    t0 = time.perf_counter()
    for batch in extract(model, train_part, [cfg.layer], 128, 32, max_tokens=cfg.train_tokens, progress=False):
        acts.append(batch.acts[cfg.layer].float().cpu())
        provs.append(batch.provenance)
        batch_sizes.append(len(batch))
    seconds = time.perf_counter() - t0
    x = torch.cat(acts)
    np.save(out / "acts.npy", x.numpy())
    prov = Provenance.concat(provs)
    # safetensors + JSON, never pickle (the project's rule for anything read back from disk)
    save_file(prov.to_tensors(), str(out / "prov.safetensors"))
    (out / "batch_sizes.json").write_text(json.dumps(batch_sizes))
    meta = {
        "model_id": model.model_id,
        "layer": cfg.layer,
        "tokens": len(x),
        "requested": cfg.train_tokens,
        "forward_seconds": round(seconds, 1),
        "corpus_id": train_part.corpus_id,
        "corpus_sha256": train_part.sha256,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    log(f"cached {len(x):,} activations in {seconds:.0f} s ({len(x) / seconds:.0f} tokens/s, forward to block "
        f"{cfg.layer})")
    return meta


def build_itda(
    model: LoadedModel, x: torch.Tensor, prov: Provenance, batch_sizes: list[int], cfg: BenchConfig, meta: dict,
    threshold: float, max_size: int | None,
) -> tuple[ITDA, float]:
    """The greedy construction of ``itda train`` (same :class:`LayerBuilder`, same batches), on cached
    activations; returns the dictionary and the construction's wall time (forward pass excluded)."""
    builder = LayerBuilder(model.d_model, cfg.k, threshold, max_size, True, torch.device("cpu"), 2**30)
    t0 = time.perf_counter()
    start = 0
    for n in batch_sizes:
        idx = torch.arange(start, start + n)
        builder.step(x[start : start + n], prov.select(idx))
        start += n
    seconds = time.perf_counter() - t0
    config = ITDAConfig(
        model_id=model.model_id, model_name=model.name, layer=cfg.layer, d_model=model.d_model,
        architecture=model.architecture, family=model.family, k=cfg.k, threshold=threshold,
        corpus_id=meta["corpus_id"], corpus_sha256=meta["corpus_sha256"], seq_len=128, tokens_seen=len(x),
        max_size=max_size, stats={"wall_seconds": round(seconds, 1)},
    )
    return builder.build(config), seconds


def train_sae(cfg: BenchConfig, out: Path) -> dict:
    """Run bench/sae_train.py in the SAE venv (one thread); returns its JSON report."""
    python = cfg.sae_python or sys.executable
    stem = out / f"sae_{cfg.sae_width}_k{cfg.k}"
    cmd = [python, str(ROOT / "bench" / "sae_train.py"), "--acts", str(out / "acts.npy"), "--out", str(stem),
           "--width", str(cfg.sae_width), "--k", str(cfg.k), "--seconds", str(cfg.sae_seconds),
           "--batch-tokens", str(cfg.sae_batch_tokens),
           "--impl", cfg.sae_impl, "--threads", str(cfg.threads)]  # fmt: skip
    log("SAE: " + " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    report = json.loads(Path(f"{stem}.json").read_text())
    report["process_seconds"] = round(time.perf_counter() - t0, 1)
    report["weights"] = f"{stem}.safetensors"
    return report


def row(name: str, r: EvalResult, train_seconds: float, tokens: int, note: str) -> dict:
    """One line of the comparison table."""
    return {
        "dictionary": name, "train_seconds": round(train_seconds, 1), "train_tokens": tokens,
        "size": r.dictionary_size, "l0": r.l0, "fvu": r.fvu, "cosine": r.cosine, "ce_loss_score": r.ce_loss_score,
        "kl_div": r.kl_div, "dead_fraction": r.dead_fraction, "eval_tokens": r.tokens, "note": note,
    }  # fmt: skip


def markdown(rows: list[dict]) -> str:
    """The table as Markdown."""
    lines = [
        "| dictionary | training wall time (s) | training tokens | size | L0 | FVU | cosine | CE loss score | KL |"
        " dead |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['dictionary']} | {r['train_seconds']:,.0f} | {r['train_tokens']} | {r['size']:,} | {r['l0']:.0f} | "
            f"{r['fvu']:.3f} | {r['cosine']:.3f} | {r['ce_loss_score']:.3f} | {r['kl_div']:.3f} | "
            f"{r['dead_fraction']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, f in BenchConfig.__dataclass_fields__.items():
        kind = {"int": int, "float": float}.get(str(f.type), str)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=f.default)
    cfg = BenchConfig(**vars(parser.parse_args()))
    torch.set_num_threads(cfg.threads)
    out = ROOT / cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log(f"config {json.dumps(asdict(cfg))}; load {os.getloadavg()[0]:.1f}")
    model = load_model(cfg.model, device="cpu")
    meta = cache_activations(model, cfg, out)
    x = torch.from_numpy(np.load(out / "acts.npy"))
    prov = Provenance.from_tensors(load_file(str(out / "prov.safetensors")))
    batch_sizes = json.loads((out / "batch_sizes.json").read_text())
    tau = default_threshold(model.d_model)
    itda, itda_s = build_itda(model, x, prov, batch_sizes, cfg, meta, tau, None)
    log(f"ITDA (default threshold {tau:.2e}): {len(itda):,} atoms in {itda_s:.1f} s")
    tau2 = tau * cfg.itda_matched_threshold_factor
    itda_m, itda_m_s = build_itda(model, x, prov, batch_sizes, cfg, meta, tau2, cfg.sae_width)
    log(f"ITDA (threshold {tau2:.2e}, max {cfg.sae_width}): {len(itda_m):,} atoms in {itda_m_s:.1f} s")
    itda.save(out / "itda_default")  # kept for later sweeps (ITDA.load)
    itda_m.save(out / f"itda_{cfg.sae_width}")
    sae_report = train_sae(cfg, out)
    log(f"SAE: {json.dumps(sae_report)}")
    sae = SAEDictionary(load_file(sae_report["weights"]), ITDAConfig(
        model_id=model.model_id, model_name=model.name, layer=cfg.layer, d_model=model.d_model, k=cfg.k,
        corpus_id=meta["corpus_id"], corpus_sha256=meta["corpus_sha256"]))  # fmt: skip
    check = float((x[:2048] - sae.decode(*sae.encode(x[:2048], cfg.k))).pow(2).mean())
    lib = sae_report["check_mse_first_2048"]
    log(f"SAE adapter MSE on the first 2048 training rows {check:.6g} vs the library's {lib:.6g}")
    _, held_out = load_corpus("default").split(cfg.held_out)
    settings = [(itda, cfg.k), (itda_m, cfg.k), (sae, cfg.k)]
    t0 = time.perf_counter()
    results = evaluate_many(model, settings, held_out, max_tokens=cfg.eval_tokens, exclude_first=True,
                            check_model=False)  # fmt: skip
    log(f"evaluated {len(settings)} dictionaries on {results[0].tokens:,} held-out tokens in "
        f"{time.perf_counter() - t0:.0f} s")
    fwd = meta["forward_seconds"]
    rows = [
        row("ITDA, default threshold", results[0], itda_s, meta["tokens"], f"+{fwd:.0f} s forward pass (shared)"),
        row(f"ITDA, lower threshold, capped at {cfg.sae_width}", results[1], itda_m_s, meta["tokens"], ""),
        row(f"TopK SAE ({sae_report['impl']})", results[2], sae_report["wall_seconds"],
            sae_report["token_steps"], f"{sae_report['epochs']:.1f} epochs over the same {meta['tokens']:,} tokens"),
    ]  # fmt: skip
    (out / "results.json").write_text(json.dumps({
        "config": asdict(cfg), "activations": meta, "sae": sae_report, "rows": rows,
        "results": [r.to_dict() for r in results], "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }, indent=2, default=str) + "\n")  # fmt: skip
    print(markdown(rows), flush=True)
    for r in results:
        print(r.summary(), flush=True)
    if cfg.sweep_tokens:
        t0 = time.perf_counter()
        df = sweep(model, itda, held_out, ks=(10, 20, 40, 80), max_tokens=cfg.sweep_tokens, exclude_first=True)
        (out / "sweep.json").write_text(df.to_json(orient="records", indent=2))
        print(sweep_table(df), flush=True)
        written, message = save_figure(plot_sweep(df), ROOT / cfg.figure_stem)
        log(f"sweep in {time.perf_counter() - t0:.0f} s; wrote {', '.join(map(str, written))} {message or ''}")
    log("done")


if __name__ == "__main__":
    main()
