"""SAEBench side by side, step 2 (SAEBench's own environment, ``make saebench``): run SAEBench 0.6's core
evaluation (``sae_bench.evals.core.main.run_evals``) on the SAELens export that step 1
(``bench/saebench_prepare.py``) wrote, over the very token batches our evaluation used, and put both tools'
figures side by side in ``DIR/side_by_side.json`` and a Markdown table on stdout.

SAEBench normally streams a Hugging Face dataset through SAELens' ActivationsStore and loads the model from the
hub; neither is reachable here, so the model is TransformerLens' HookedTransformer built from the embedded
model's local folder (``hf_model=``), and the store hands out the saved token batches in order. Everything
else (hooks, masks, CE, KL, variance and density figures) is SAEBench's own code. This file imports nothing
from ``itda_core``: that environment does not have it.

Usage: ``.venv-saebench/bin/python bench/saebench_core.py DIR [--tl-name google/gemma-3-270m]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import load_file

# TransformerLens names of the embedded models that it supports (SmolLM2 is not among them).
TL_NAMES = {"gemma3-270m": "google/gemma-3-270m"}


class SavedTokens:
    """The part of SAELens' ActivationsStore that SAEBench's core evaluation calls: batches of token ids, in the
    saved order, from the start again after ``reset_input_dataset``."""

    def __init__(self, tokens: torch.Tensor, batch_size: int) -> None:
        self.tokens, self.store_batch_size_prompts = tokens, batch_size
        self.context_size = tokens.shape[1]
        self.next = 0

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        if self.next + n > len(self.tokens):
            raise RuntimeError(f"asked for more than the {len(self.tokens)} saved prompts")
        batch = self.tokens[self.next:self.next + n]
        self.next += n
        return batch

    def reset_input_dataset(self) -> None:
        self.next = 0


def load_model(folder: str, tl_name: str):
    """TransformerLens' model of ``tl_name`` with the weights of the local transformers folder (no download)."""
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return HookedTransformer.from_pretrained_no_processing(tl_name, hf_model=hf, tokenizer=tokenizer, device="cpu",
                                                           dtype=torch.float32)


def side_by_side(ours: dict, theirs: dict) -> list[tuple[str, float | None, float | None]]:
    """(figure, ours, SAEBench's) rows for the figures both compute; FVU is 1 - explained variance."""
    perf, recon = theirs["model_performance_preservation"], theirs["reconstruction_quality"]
    behaviour = theirs.get("model_behavior_preservation", {})
    return [
        ("CE loss score", ours["ce_loss_score"], perf["ce_loss_score"]),
        ("CE, clean (nats)", ours["ce_clean"], perf["ce_loss_without_sae"]),
        ("CE, reconstruction spliced (nats)", ours["ce_spliced"], perf["ce_loss_with_sae"]),
        ("CE, zero-ablated (nats)", ours["ce_zero"], perf["ce_loss_with_ablation"]),
        ("KL, reconstruction (nats)", ours["kl_div"], behaviour.get("kl_div_with_sae")),
        ("KL, zero-ablated (nats)", ours["kl_zero"], behaviour.get("kl_div_with_ablation")),
        ("cosine(x, x_hat)", ours["cosine"], recon["cossim"]),
        ("1 - FVU (ours) / explained_variance (SAEBench)", 1 - ours["fvu"], recon["explained_variance"]),
        ("1 - FVU (ours) / explained_variance_legacy (SAEBench)", 1 - ours["fvu"], recon["explained_variance_legacy"]),
        ("L0 (MP steps per token / nonzero latents)", ours["l0_distinct"], theirs["sparsity"]["l0"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default="/tmp/itda-saebench")
    parser.add_argument("--tl-name", default=None, help="TransformerLens model name (default: from the model)")
    args = parser.parse_args()
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    from sae_lens import SAE

    out = Path(args.dir)
    run = json.loads((out / "run.json").read_text())
    tl_name = args.tl_name or TL_NAMES.get(run["model_name"])
    if tl_name is None:
        raise SystemExit(f"TransformerLens has no name for {run['model_name']}; pass --tl-name")
    tokens = load_file(str(out / "tokens.safetensors"))["tokens"]
    start = time.perf_counter()
    model = load_model(run["model_folder"], tl_name)
    # As multiple_evals does for an SAE object: checks unit-norm decoder rows, maps SAELens 6's cfg fields.
    _, sae, _ = load_and_format_sae("itda", SAE.load_from_disk(str(out / "saelens"), device="cpu"), "cpu")
    config = CoreEvalConfig(
        model_name=tl_name, batch_size_prompts=run["batch_size"], n_eval_reconstruction_batches=run["batches"],
        n_eval_sparsity_variance_batches=run["batches"], context_size=run["context"], compute_kl=True,
        compute_ce_loss=True, compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=False,
        compute_featurewise_weight_based_metrics=False, exclude_special_tokens_from_reconstruction=True,
    )
    with torch.no_grad():
        metrics, _ = run_evals(sae, SavedTokens(tokens, run["batch_size"]), model, config,
                               ignore_tokens=set(run["ignore_tokens"]))
    result = {"run": {k: v for k, v in run.items() if k != "itda"}, "itda": run["itda"], "saebench": metrics,
              "saebench_seconds": round(time.perf_counter() - start, 1)}
    (out / "side_by_side.json").write_text(json.dumps(result, indent=2))
    rows = result["rows"] = side_by_side(run["itda"], metrics)
    (out / "side_by_side.json").write_text(json.dumps(result, indent=2))
    print(f"{run['model_name']} layer {run['layer']}, {run['atoms']} atoms, k = {run['k']}, "
          f"{run['prompts']} prompts x {run['context']} tokens\n")
    print("| figure | ours (`itda eval --ce-rule saebench`) | SAEBench 0.6 core | difference |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        diff = f"{a - b:+.2e}" if a is not None and b is not None else "-"
        print(f"| {name} | {a:.5f} | {b:.5f} | {diff} |" if b is not None else f"| {name} | {a} | - | - |")


if __name__ == "__main__":
    main()
