"""Train small GPT-2-style models from different seeds on CPU, then run the layer-matching benchmark on them.

Offline reproduction of the paper's layer-matching protocol (Kornblith et al. 2019) at small scale: the
paper uses five stanford-crfm GPT-2 small seeds; here every seed is a 6-layer, d_model 128, 4-head, context 128
GPT-2 (1000 steps of 16 x 128 tokens, about 3 epochs of the train split of the default corpus) with one shared
byte-level BPE tokenizer of 4096 tokens (the GPT-2 tokenizer is not available offline). Seeds differ in
initialisation and data order, as the stanford-crfm seeds do. One CPU thread per process.

Outputs under ``--out-dir`` (default ``data/seed_models/``, gitignored):
  tokenizer/                       the shared tokenizer (trained once on the train split)
  seed{S}/step{N}/                 intermediate checkpoints (save_pretrained, safetensors + tokenizer)
  seed{S}/final/                   the final model
  seed{S}/training.json            losses, validation losses per checkpoint, wall time
  layer_matching.json              the benchmark result per dictionary setting (``--skip-bench`` to leave it out)

Usage: ``.venv/bin/python bench/seed_models.py [--seeds 1 2 3] [--steps 1000] [--bench-tokens 50000]
[--skip-train] [--skip-bench]``. Models whose ``final/`` already exists are not trained again (delete the folder
to retrain); seeds can be trained by separate processes (``--seeds 2 --skip-bench``) and benchmarked together
afterwards (``--skip-train``). Convergence of one seed: ``itda convergence --checkpoints .../seed1/step50 ...
.../seed1/final`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from itda_core.corpus import Corpus, load_corpus

EOS = "<|endoftext|>"


@dataclass
class SeedConfig:
    """Architecture and optimisation of every seed model (one architecture, different seeds)."""

    n_layer: int = 6
    d_model: int = 128  # 256 gives ~1 epoch in 10 CPU minutes; 128 trains ~3x more tokens in the same time
    n_head: int = 4
    ctx: int = 128
    vocab_size: int = 4096
    batch_size: int = 16  # sequences of ctx tokens per step
    steps: int = 1000
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    checkpoints: list[int] = field(default_factory=lambda: [50, 100, 250, 500])  # plus the final step
    eval_batches: int = 20
    threads: int = 1


def train_tokenizer(corpus: Corpus, vocab_size: int, folder: Path) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the corpus (shared by every seed so that provenance sets are comparable)."""
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS)
    fast.model_max_length = 1_000_000
    fast.save_pretrained(str(folder))
    return fast


def token_blocks(corpus: Corpus, tok: PreTrainedTokenizerFast, ctx: int) -> torch.Tensor:
    """All documents tokenised, joined with EOS and cut into (n_blocks, ctx) rows (the tail is dropped)."""
    eos = tok.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for enc in tok(corpus.texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n = len(ids) // ctx
    return torch.tensor(ids[: n * ctx], dtype=torch.long).view(n, ctx)


@torch.no_grad()
def validation_loss(model: GPT2LMHeadModel, blocks: torch.Tensor, cfg: SeedConfig) -> float:
    """Mean next-token cross-entropy on the held-out blocks (the first eval_batches batches)."""
    model.eval()
    losses = []
    for i in range(0, min(len(blocks), cfg.eval_batches * cfg.batch_size), cfg.batch_size):
        batch = blocks[i : i + cfg.batch_size]
        losses.append(float(model(input_ids=batch, labels=batch).loss))
    model.train()
    return sum(losses) / len(losses)


def train_seed(
    seed: int, cfg: SeedConfig, train: torch.Tensor, held: torch.Tensor, tok: PreTrainedTokenizerFast, out: Path
) -> dict:
    """Train one model from ``seed`` (init and data order), saving checkpoints; returns its training record."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=cfg.ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    record: dict = {"seed": seed, "config": asdict(cfg), "train_loss": [], "checkpoints": []}
    order = torch.randperm(len(train), generator=gen)
    cursor = 0
    start = time.time()
    save_at = set(cfg.checkpoints) | {cfg.steps}
    for step in range(1, cfg.steps + 1):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(train), generator=gen), 0
        batch = train[order[cursor : cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == 1:
            record["train_loss"].append([step, loss.item()])
            elapsed = time.time() - start
            print(f"seed {seed} step {step}/{cfg.steps} loss {loss.item():.3f} ({elapsed:.0f} s)", flush=True)
        if step in save_at:
            name = "final" if step == cfg.steps else f"step{step}"
            val = validation_loss(model, held, cfg)
            folder = out / f"seed{seed}" / name
            model.save_pretrained(str(folder), safe_serialization=True)
            tok.save_pretrained(str(folder))
            record["checkpoints"].append({"step": step, "folder": str(folder), "val_loss": val})
            print(f"seed {seed} step {step}: validation loss {val:.3f} -> {folder}", flush=True)
    record["wall_seconds"] = time.time() - start
    record["epochs"] = cfg.steps * cfg.batch_size / len(train)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=SeedConfig.steps)
    parser.add_argument("--d-model", type=int, default=SeedConfig.d_model)
    parser.add_argument("--out-dir", type=Path, default=Path("data/seed_models"))
    parser.add_argument("--skip-train", action="store_true", help="only run the benchmark on existing models")
    parser.add_argument("--skip-bench", action="store_true", help="only train")
    parser.add_argument("--bench-tokens", type=int, default=50_000, help="tokens for dictionaries and baselines")
    args = parser.parse_args()

    cfg = SeedConfig(steps=args.steps, d_model=args.d_model)
    cfg.checkpoints = [s for s in cfg.checkpoints if s < cfg.steps]
    torch.set_num_threads(cfg.threads)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    train_corpus, held_corpus = load_corpus("default").split()
    tok = train_tokenizer(train_corpus, cfg.vocab_size, out / "tokenizer")
    if not args.skip_train:
        train_blocks = token_blocks(train_corpus, tok, cfg.ctx)
        held_blocks = token_blocks(held_corpus, tok, cfg.ctx)
        print(f"train: {train_blocks.numel():,} tokens, held out: {held_blocks.numel():,} tokens", flush=True)
        for seed in args.seeds:
            if (out / f"seed{seed}" / "final" / "config.json").is_file():
                print(f"seed {seed}: final model exists, skipping", flush=True)
                continue
            record = train_seed(seed, cfg, train_blocks, held_blocks, tok, out)
            (out / f"seed{seed}" / "training.json").write_text(json.dumps(record, indent=2))
    for seed in args.seeds:
        path = out / f"seed{seed}" / "training.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            vals = ", ".join(f"step {c['step']}: {c['val_loss']:.3f}" for c in rec["checkpoints"])
            print(f"seed {seed}: validation loss {vals} ({rec['wall_seconds']:.0f} s)")
    if args.skip_bench:
        return
    run_benchmarks(out, args.seeds, args.bench_tokens, cfg.d_model)


# Dictionary settings scored with Jaccard. "paper": k 40 and the default threshold (add when cos < 0.85), as
# for GPT-2 small (d 768). With d_model 128, 40 MP steps over the first 128 atoms reconstruct almost every
# activation, so the dictionaries barely grow past their initial atoms; the scaled settings keep k / d_model
# near the paper's 40 / 768 (k 8) and add atoms below cos 0.95 / 0.98 so that the dictionaries grow.
def jaccard_settings(d_model: int) -> dict[str, dict]:
    """name -> LayerMatchingConfig overrides for the Jaccard runs (threshold = (2 - 2 cos) / d_model)."""
    return {
        "paper (k 40, cos < 0.85)": {"k": 40, "threshold": None},
        "scaled (k 8, cos < 0.95)": {"k": 8, "threshold": (2 - 2 * 0.95) / d_model},
        "scaled (k 8, cos < 0.98)": {"k": 8, "threshold": (2 - 2 * 0.98) / d_model},
    }


def run_benchmarks(out: Path, seeds: list[int], tokens: int, d_model: int) -> None:
    """All measures once (baselines do not depend on the dictionary settings), then Jaccard per setting."""
    from itda_core.similarity.layer_matching import LayerMatchingConfig, format_table, run_layer_matching

    models = [str(out / f"seed{s}" / "final") for s in seeds]
    results = {}
    for i, (name, overrides) in enumerate(jaccard_settings(d_model).items()):
        measures = ("jaccard", "cka", "cka_normalised", "svcca", "relative", "r2") if i == 0 else ("jaccard",)
        bench_cfg = LayerMatchingConfig(tokens=tokens, device="cpu", measures=measures, **overrides)
        result = run_layer_matching(models, bench_cfg)
        print(f"\n== {name} ==\n{format_table(result)}\natoms per layer: {result.atoms}\n({result.seconds:.0f} s)",
              flush=True)
        results[name] = result.to_dict()
        (out / "layer_matching.json").write_text(json.dumps(results, indent=2))  # after each setting
    print(f"wrote {out / 'layer_matching.json'}")

if __name__ == "__main__":
    main()
