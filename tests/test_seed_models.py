"""bench/seed_models.py: a run killed mid-way and restarted ends with exactly the weights of an uninterrupted
run (model, optimizer, data order and both RNG states are restored), and its compact final folder (float16
safetensors + tokenizer) loads through itda_core.models.load_model as float32."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from itda_core.models import load_model
from tests.tiny import tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "seed_models.py"


@pytest.fixture(scope="module")
def seed_models():
    spec = importlib.util.spec_from_file_location("seed_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["seed_models"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("seed_models", None)


def _setup(seed_models):
    cfg = seed_models.SeedConfig(n_layer=2, d_model=16, n_head=2, ctx=16, batch_size=4, steps=30, warmup=5,
                                 checkpoints=[15], eval_batches=2, resume_every=10)
    tok = tiny_model("gpt2").tokenizer
    gen = torch.Generator().manual_seed(0)
    train = torch.randint(0, len(tok), (13, cfg.ctx), generator=gen)  # 13 blocks: the order is redrawn each epoch
    held = torch.randint(0, len(tok), (4, cfg.ctx), generator=gen)
    return cfg, tok, train, held


def test_killed_run_resumes_to_identical_weights(seed_models, tmp_path):
    cfg, tok, train, held = _setup(seed_models)
    whole, whole_model = seed_models.train_seed(7, cfg, train, held, tok, tmp_path / "whole")

    parts = tmp_path / "parts"
    seed_models.train_seed(7, cfg, train, held, tok, parts, stop_after=25)  # "killed" after step 25
    assert (parts / "seed7" / "resume" / "state.pt").is_file()  # saved at step 20; steps 21-25 are lost
    assert not (parts / "seed7" / "training.json").exists()
    assert not seed_models.is_trained(parts, 7)
    torch.manual_seed(12345)  # a new process: the global RNG (dropout) must come from the resume state
    resumed, resumed_model = seed_models.train_seed(7, cfg, train, held, tok, parts)

    assert resumed["resumed_from"] == [20]
    assert seed_models.is_trained(parts, 7) and not (parts / "seed7" / "resume").exists()
    for (name, a), (_, b) in zip(whole_model.state_dict().items(), resumed_model.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    for folder in ("final", "step15"):
        fa = load_file(tmp_path / "whole" / "seed7" / folder / "model.safetensors")
        fb = load_file(parts / "seed7" / folder / "model.safetensors")
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa), folder
    assert resumed["train_loss"] == whole["train_loss"]
    assert [c["val_loss"] for c in resumed["checkpoints"]] == [c["val_loss"] for c in whole["checkpoints"]]
    # a mutant that does not restore the data order or the dropout RNG ends elsewhere:
    assert not torch.equal(whole_model.transformer.h[0].attn.c_attn.weight,
                           seed_models.train_seed(8, cfg, train, held, tok, tmp_path / "other")[1]
                           .transformer.h[0].attn.c_attn.weight)


def test_final_folder_is_compact_float16_and_loads_as_float32(seed_models, tmp_path):
    cfg, tok, train, held = _setup(seed_models)
    _, model = seed_models.train_seed(3, cfg, train, held, tok, tmp_path)
    final = tmp_path / "seed3" / "final"
    weights = load_file(final / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float16}
    assert (final / "tokenizer.json").is_file() and (final / "config.json").is_file()
    saved = json.loads((tmp_path / "seed3" / "training.json").read_text())
    assert saved["checkpoints"][-1]["step"] == cfg.steps and saved["checkpoints"][-1]["dtype"] == "float16"
    assert saved["wall_seconds"] > 0 and "val_loss_float16_weights" in saved["checkpoints"][-1]

    loaded = load_model(str(final), device="cpu")
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.n_layers == cfg.n_layer and loaded.d_model == cfg.d_model
    w = loaded.model.transformer.h[1].mlp.c_fc.weight
    assert torch.equal(w, model.transformer.h[1].mlp.c_fc.weight.half().float())  # float16-rounded, no more
