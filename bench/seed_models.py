"""Train small GPT-2-style models from different seeds on CPU, then run the layer-matching benchmark on them.

Offline reproduction of the paper's layer-matching protocol (Kornblith et al. 2019) at small scale: the
paper uses five stanford-crfm GPT-2 small seeds; here every seed is a 6-layer, d_model 128, 4-head, context 128
GPT-2 (1000 steps of 16 x 128 tokens, about 3 epochs of the train split of the default corpus) with one shared
byte-level BPE tokenizer of 4096 tokens (the GPT-2 tokenizer is not available offline). Seeds differ in
initialisation and data order, as the stanford-crfm seeds do. One CPU thread per process.

Outputs under ``--out-dir`` (default ``data/seed_models/``):
  tokenizer/                       the shared tokenizer (trained once on the train split)        committed
  seed{S}/final/                   the final model: float16 safetensors + config + tokenizer      committed
                                   (~4 MB; itda_core.models.load_model loads it as float32)
  seed{S}/training.json            losses, validation losses per checkpoint, wall and CPU time    committed
  seed{S}/step{N}/                 intermediate checkpoints (float32, for ``itda convergence``)   gitignored
  seed{S}/resume/state.pt          resume state, every 100 steps; deleted when the seed is done   gitignored
  layer_matching.json              the benchmark result per dictionary setting (``--skip-bench`` to leave it out)

Usage: ``nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python bench/seed_models.py [--seeds 1 2 3 4 5]
[--steps 1000] [--bench-tokens 50000] [--skip-train] [--skip-bench]``. Training is resumable: a killed run
restarted with the same command continues from its last resume state (at most 100 steps lost) and ends
with the same weights as an uninterrupted run. Seeds whose ``final/`` and ``training.json`` exist are not
trained again (delete ``seed{S}/`` to retrain); seeds can be trained by separate processes (``--seeds 4 5
--skip-bench``) and benchmarked together afterwards (``--skip-train``). Convergence of one seed: ``itda
convergence --checkpoints .../seed1/step50 ... .../seed1/final`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
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
    resume_every: int = 100  # steps between resume states (a killed run loses at most this many steps)


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
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")  # two processes may start at once
    fast.save_pretrained(str(tmp))
    if (folder / "tokenizer.json").is_file():  # the other process was first: use its copy
        shutil.rmtree(tmp)
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    os.replace(tmp, folder)
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


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _save_folder(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, folder: Path) -> None:
    """save_pretrained (safetensors) + tokenizer into ``folder``, written beside it first and then renamed."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _save_resume(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _data_fingerprint(train: torch.Tensor, held: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in (train, held):
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def train_seed(
    seed: int,
    cfg: SeedConfig,
    train: torch.Tensor,
    held: torch.Tensor,
    tok: PreTrainedTokenizerFast,
    out: Path,
    *,
    stop_after: int | None = None,
) -> tuple[dict, GPT2LMHeadModel]:
    """Train one model from ``seed`` (init and data order), saving checkpoints; returns its training record
    (also written to ``seed{S}/training.json`` when the run completes) and the float32 model.

    Resumable: every ``cfg.resume_every`` steps the model, optimizer, step, data order and cursor, both RNG
    states (the data-order generator and torch's global one, which drives dropout) and the record so far are
    saved to ``seed{S}/resume/state.pt``; a later call continues from there and ends with bit-identical
    weights to an uninterrupted run (tests/test_seed_models.py). ``stop_after`` stops after that step without
    saving anything more, as a kill would (for the test)."""
    seed_dir = out / f"seed{seed}"
    resume_path = seed_dir / "resume" / "state.pt"
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

    fingerprint = _data_fingerprint(train, held)
    record: dict = {"seed": seed, "config": asdict(cfg), "data": fingerprint, "train_loss": [], "checkpoints": [],
                    "resumed_from": []}
    order = torch.randperm(len(train), generator=gen)
    cursor, done, previous_wall, previous_cpu = 0, 0, 0.0, 0.0
    if resume_path.is_file():
        state = torch.load(resume_path, weights_only=False)
        if state["record"]["config"] != record["config"] or state["record"]["data"] != fingerprint:
            raise SystemExit(f"{resume_path} was saved with another config or other data; delete {seed_dir} "
                             "to train this seed again")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        order, cursor, done = state["order"], state["cursor"], state["step"]
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        record = state["record"]
        record["resumed_from"].append(done)
        previous_wall, previous_cpu = state["wall_seconds"], state["cpu_seconds"]
        print(f"seed {seed}: resuming after step {done} ({resume_path})", flush=True)
    start, start_cpu = time.time(), time.process_time()
    save_at = set(cfg.checkpoints) | {cfg.steps}
    for step in range(done + 1, cfg.steps + 1):
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
        elapsed = previous_wall + time.time() - start
        if step % 50 == 0 or step == 1:
            record["train_loss"].append([step, loss.item()])
            print(f"seed {seed} step {step}/{cfg.steps} loss {loss.item():.3f} ({elapsed:.0f} s)", flush=True)
        if step in save_at:
            val = validation_loss(model, held, cfg)
            entry = {"step": step, "val_loss": val, "wall_seconds": elapsed}
            if step == cfg.steps:  # compact: float16 weights (loaded back as float32 by itda_core.models)
                folder = seed_dir / "final"
                half = copy.deepcopy(model).half()
                _save_folder(half, tok, folder)
                entry["val_loss_float16_weights"] = validation_loss(half.float(), held, cfg)
                entry["dtype"] = "float16"
                del half
            else:
                folder = seed_dir / f"step{step}"
                _save_folder(model, tok, folder)
            entry["folder"] = str(folder)
            record["checkpoints"] = [c for c in record["checkpoints"] if c["step"] != step] + [entry]
            print(f"seed {seed} step {step}: validation loss {val:.3f} -> {folder}", flush=True)
        if step % cfg.resume_every == 0 or step == cfg.steps:
            resume_path.parent.mkdir(parents=True, exist_ok=True)
            _save_resume(resume_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "order": order,
                "cursor": cursor, "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "record": record,
                "wall_seconds": elapsed, "cpu_seconds": previous_cpu + time.process_time() - start_cpu,
            })
        if stop_after is not None and step >= stop_after and step < cfg.steps:
            return record, model
    record["wall_seconds"] = previous_wall + time.time() - start
    record["cpu_seconds"] = previous_cpu + time.process_time() - start_cpu
    record["epochs"] = cfg.steps * cfg.batch_size / len(train)
    record["train_tokens"] = int(train.numel())
    record["held_out_tokens"] = int(held.numel())
    _write_json(seed_dir / "training.json", record)
    shutil.rmtree(seed_dir / "resume", ignore_errors=True)  # done: training.json and final/ are what stays
    return record, model


def is_trained(out: Path, seed: int) -> bool:
    """True once a seed's run has completed (its final model and training.json are written)."""
    return (out / f"seed{seed}" / "final" / "config.json").is_file() and (
        out / f"seed{seed}" / "training.json").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
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
            if is_trained(out, seed):
                print(f"seed {seed}: final model exists, skipping", flush=True)
                continue
            train_seed(seed, cfg, train_blocks, held_blocks, tok, out)
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
    """name -> LayerMatchingConfig overrides for the Jaccard runs (threshold = (2 - 2 cos) / d_model). The
    paper's Jaccard (raw index, all atoms) throughout, and once the project default (chance-corrected, evidence
    atoms) for comparison."""
    paper = {"atoms": "all", "index": "raw"}
    return {
        "paper (k 40, cos < 0.85)": {"k": 40, "threshold": None, "jaccard_options": paper},
        "scaled (k 8, cos < 0.95)": {"k": 8, "threshold": (2 - 2 * 0.95) / d_model, "jaccard_options": paper},
        "scaled (k 8, cos < 0.98)": {"k": 8, "threshold": (2 - 2 * 0.98) / d_model, "jaccard_options": paper},
        "scaled (k 8, cos < 0.95), corrected Jaccard over evidence atoms": {
            "k": 8, "threshold": (2 - 2 * 0.95) / d_model, "jaccard_options": {}},
    }


def run_benchmarks(out: Path, seeds: list[int], tokens: int, d_model: int) -> None:
    """All measures once (baselines do not depend on the dictionary settings), then Jaccard per setting; the
    authors' protocol (layers 1..n-1, M x M pairs) with the cross-pairs score beside it."""
    from itda_core.similarity.layer_matching import (
        LAYER_MATCHING_MEASURES,
        LayerMatchingConfig,
        format_table,
        run_layer_matching,
    )

    models = [str(out / f"seed{s}" / "final") for s in seeds]
    results = {}
    for i, (name, overrides) in enumerate(jaccard_settings(d_model).items()):
        measures = LAYER_MATCHING_MEASURES if i == 0 else ("jaccard",)
        bench_cfg = LayerMatchingConfig(tokens=tokens, device="cpu", measures=measures, **overrides)
        result = run_layer_matching(models, bench_cfg)
        print(f"\n== {name} ==\n{format_table(result)}\natoms per layer: {result.atoms}\n({result.seconds:.0f} s)",
              flush=True)
        results[name] = result.to_dict()
        (out / "layer_matching.json").write_text(json.dumps(results, indent=2))  # after each setting
    print(f"wrote {out / 'layer_matching.json'}")

if __name__ == "__main__":
    main()
