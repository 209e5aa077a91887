"""Train a TopK SAE on cached activations (a float32 .npy of shape [tokens, d_model]); CPU, one thread.

Runs in a scratch venv that has EleutherAI's sparsify (``pip install eai-sparsify``): the SAE module is
``sparsify.SparseCoder`` (TopK encoder, unit-norm decoder, AuxK loss) and the loop follows sparsify's own
Trainer recipe (b_dec initialised to the data mean, Adam with lr 2e-4 / sqrt(latents / 2^14), linear
warm-up then decay, decoder-parallel gradient removed, decoder renormalised each step). sparsify's Trainer
itself is not used because it runs a Hugging Face model over a dataset; here the activations are cached
once and shared with the ITDA. With ``--impl minimal`` (or when sparsify is missing) a minimal TopK SAE
following Gao et al. 2024 is trained instead; the result JSON says which one ran.

Writes ``<out>.safetensors`` (encoder.weight, encoder.bias, W_dec, b_dec) and ``<out>.json`` (timings).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn


@dataclass
class SAETrainConfig:
    """What to train and for how long."""

    acts: str
    out: str
    width: int = 4096
    k: int = 40
    batch_tokens: int = 1024  # small batches: a CPU budget of minutes allows ~1k optimizer steps of 1024 tokens
    seconds: float = 720.0  # wall-clock budget; training stops after the step that crosses it
    max_epochs: int = 50
    auxk_alpha: float = 1 / 32  # Gao et al. 2024
    dead_tokens: int = 0  # a latent is dead after this many tokens without firing (0: one epoch)
    lr: float | None = None
    warmup_steps: int = 50
    threads: int = 1
    seed: int = 0
    impl: str = "sparsify"


class MinimalTopKSAE(nn.Module):
    """Minimal TopK SAE (Gao et al. 2024): z = TopK(W_enc (x - b_dec) + b_enc), x_hat = W_dec z + b_dec,
    decoder rows unit norm, encoder initialised as the decoder's transpose. Used only as a fallback."""

    def __init__(self, d_in: int, width: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.encoder = nn.Linear(d_in, width)
        self.encoder.bias.data.zero_()
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.set_decoder_norm_to_unit_norm()

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True) + 1e-8

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        assert self.W_dec.grad is not None
        parallel = (self.W_dec.grad * self.W_dec.data).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec.data

    def forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        pre = torch.relu(self.encoder(x - self.b_dec))
        acts, idx = pre.topk(self.k, dim=-1, sorted=False)
        x_hat = nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=acts, mode="sum") + self.b_dec
        e = x - x_hat
        total = (x - x.mean(0)).pow(2).sum()
        fvu = e.pow(2).sum() / total
        aux = x.new_tensor(0.0)
        if dead_mask is not None and int(dead_mask.sum()) > 0:
            k_aux = min(x.shape[-1] // 2, int(dead_mask.sum()))
            scale = min(int(dead_mask.sum()) / (x.shape[-1] // 2), 1.0)
            aux_acts, aux_idx = torch.where(dead_mask[None], pre, -torch.inf).topk(k_aux, sorted=False)
            e_hat = nn.functional.embedding_bag(aux_idx, self.W_dec, per_sample_weights=aux_acts, mode="sum")
            aux = scale * (e_hat - e.detach()).pow(2).sum() / total
        return x_hat, idx, fvu, aux


def build(cfg: SAETrainConfig, d_in: int) -> tuple[nn.Module, str]:
    """sparsify's SparseCoder, or the minimal SAE when asked for (or when sparsify is not installed)."""
    if cfg.impl == "sparsify":
        try:
            import sparsify
            from sparsify import SparseCoder, SparseCoderConfig
        except ImportError as err:
            print(f"sparsify unavailable ({err}); falling back to the minimal TopK SAE", flush=True)
        else:
            sae = SparseCoder(d_in, SparseCoderConfig(activation="topk", num_latents=cfg.width, k=cfg.k))
            return sae, f"eai-sparsify {getattr(sparsify, '__version__', '')}".strip()
    return MinimalTopKSAE(d_in, cfg.width, cfg.k), "minimal TopK SAE (Gao et al. 2024), bench/sae_train.py"


def step_outputs(sae: nn.Module, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(latent indices, fvu, auxk loss) of one batch, whichever implementation."""
    if isinstance(sae, MinimalTopKSAE):
        _, idx, fvu, aux = sae(x, dead)
        return idx, fvu, aux
    out = sae(x, dead_mask=dead)
    return out.latent_indices, out.fvu, out.auxk_loss


def train(cfg: SAETrainConfig) -> dict:
    """Train until the time budget or ``max_epochs``; save weights and a JSON report."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = torch.from_numpy(np.load(cfg.acts).astype(np.float32, copy=False))
    n, d_in = data.shape
    sae, impl = build(cfg, d_in)
    lr = cfg.lr or 2e-4 / math.sqrt(cfg.width / 2**14)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    steps_per_epoch = math.ceil(n / cfg.batch_tokens)
    start = time.perf_counter()

    def factor(s: int) -> float:
        """Linear warm-up, then linear decay to 10% over the time budget (sparsify decays over its batches)."""
        return min(1.0, (s + 1) / cfg.warmup_steps) * max(0.1, 1 - (time.perf_counter() - start) / cfg.seconds)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    with torch.no_grad():
        sae.b_dec.data = data.mean(0)
    dead_after = cfg.dead_tokens or n
    since_fired = torch.zeros(cfg.width, dtype=torch.long)
    step = tokens = 0
    epoch = 0
    log_fvu: list[float] = []
    while epoch < cfg.max_epochs and time.perf_counter() - start < cfg.seconds:
        perm = torch.randperm(n)
        for b in range(steps_per_epoch):
            x = data[perm[b * cfg.batch_tokens : (b + 1) * cfg.batch_tokens]]
            dead = since_fired > dead_after if cfg.auxk_alpha > 0 else None
            idx, fvu, aux = step_outputs(sae, x, dead)
            (fvu + cfg.auxk_alpha * aux).backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            sae.set_decoder_norm_to_unit_norm()
            with torch.no_grad():
                since_fired += len(x)
                since_fired[idx.flatten().unique()] = 0
            step += 1
            tokens += len(x)
            log_fvu.append(float(fvu.detach()))
            if step % 100 == 0:
                print(
                    f"step {step} epoch {epoch} tokens {tokens:,} fvu {np.mean(log_fvu[-100:]):.4f} "
                    f"dead {int((since_fired > dead_after).sum())} {time.perf_counter() - start:.0f}s",
                    flush=True,
                )
            if time.perf_counter() - start >= cfg.seconds:
                break
        epoch += 1
    wall = time.perf_counter() - start
    weights = {
        "encoder.weight": sae.encoder.weight.detach().contiguous(),
        "encoder.bias": sae.encoder.bias.detach().contiguous(),
        "W_dec": sae.W_dec.detach().contiguous(),
        "b_dec": sae.b_dec.detach().contiguous(),
    }
    save_file(weights, f"{cfg.out}.safetensors")
    with torch.no_grad():  # the library's own reconstruction of a sample, to check the evaluator's encoder
        sample = data[: min(n, 2048)]
        x_hat = sae(sample)[0] if isinstance(sae, MinimalTopKSAE) else sae(sample).sae_out
        check_mse = float((sample - x_hat).pow(2).mean())
    report = {
        "impl": impl,
        "config": asdict(cfg),
        "tokens_in_data": n,
        "token_steps": tokens,
        "epochs": tokens / n,
        "steps": step,
        "lr": lr,
        "wall_seconds": round(wall, 1),
        "final_train_fvu": float(np.mean(log_fvu[-100:])) if log_fvu else None,
        "dead_latents": int((since_fired > dead_after).sum()),
        "check_mse_first_2048": check_mse,
    }
    Path(f"{cfg.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in SAETrainConfig.__dataclass_fields__.values():
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], str)
        if f.name == "lr":
            kind = float
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, required=f.name in (
            "acts", "out"))
    args = parser.parse_args()
    train(SAETrainConfig(**vars(args)))


if __name__ == "__main__":
    main()
