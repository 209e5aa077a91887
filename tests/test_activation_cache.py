"""Activation caches: a float32 cache trains the very dictionaries an in-process run builds (atoms, provenance,
identity), budgets cut as extraction cuts them, writing is atomic and never replaces a cache unasked, and a
damaged cache is a one-line error."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from itda_core.activation_cache import MANIFEST, open_cache
from itda_core.activation_cache_write import write_cache
from itda_core.cli.app import app
from itda_core.config.extract import ActivationCacheConfig
from itda_core.config.train import TrainConfig
from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.extraction import extract
from itda_core.trainer import Trainer
from tests.tiny import TEXTS, save_tiny_model, tiny_corpus, tiny_model

LAYERS = [0, 2]
# fields that describe the run, not the dictionary (when and how fast it was built)
RUN_FIELDS = {"created", "stats"}


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus(n_copies=3).split(0.25)[0]


def _config(**kw) -> TrainConfig:
    base = {"layers": LAYERS, "k": 4, "threshold": 0.02, "max_tokens": None, "batch_size": 4, "seq_len": 24,
            "progress": False}
    return TrainConfig(**{**base, **kw})


def _cache(model, corpus, out, **kw):
    base = {"seq_len": 24, "batch_size": 4, "max_tokens": 0, "shard_tokens": 40, "progress": False}
    cfg = ActivationCacheConfig(**{**base, **kw})
    return write_cache(model, corpus, LAYERS, out, cfg)


def _same(a: dict[int, ITDA], b: dict[int, ITDA]) -> None:
    assert sorted(a) == sorted(b) == LAYERS
    for layer in LAYERS:
        x, y = a[layer], b[layer]
        assert torch.equal(x.atoms, y.atoms) and torch.equal(x.init_count, y.init_count)
        assert torch.equal(x.add_error.isnan(), y.add_error.isnan())
        assert torch.equal(x.add_error.nan_to_num(), y.add_error.nan_to_num())
        for col in ("doc_id", "position", "token_id", "char_start", "char_end"):
            assert torch.equal(getattr(x.provenance, col), getattr(y.provenance, col)), col
        assert x.provenance.token_str == y.provenance.token_str
        cx, cy = dataclasses.asdict(x.config), dataclasses.asdict(y.config)
        skip = RUN_FIELDS | {"cache_dtype"}  # the one difference: whether a cache held the activations
        assert {k: v for k, v in cx.items() if k not in skip} == {k: v for k, v in cy.items() if k not in skip}


@pytest.mark.parametrize("max_tokens", [None, 101])
def test_training_from_the_cache_builds_the_same_dictionaries(llama, corpus, tmp_path, max_tokens):
    manifest = _cache(llama, corpus, tmp_path / "cache")
    assert len(manifest.shards) > 1 and manifest.tokens == sum(s.tokens for s in manifest.shards)
    direct = Trainer(llama, corpus, _config(max_tokens=max_tokens)).run()
    cache = open_cache(tmp_path / "cache")
    trainer = Trainer(cache.model, cache.manifest.corpus(), _config(max_tokens=max_tokens))
    cached = trainer.run(source=cache.batches(LAYERS, max_tokens=max_tokens))
    _same(direct, cached)
    assert all(d.config.tokens_seen == (max_tokens or manifest.tokens) for d in cached.values())
    assert {(d.config.activation_dtype, d.config.cache_dtype) for d in direct.values()} == {("float32", "")}
    assert {(d.config.activation_dtype, d.config.cache_dtype) for d in cached.values()} == {("float32", "float32")}
    if max_tokens is None:
        assert cached[0].config.documents_sha256 == manifest.documents_sha256


def test_cached_batches_are_the_extracted_ones(llama, corpus, tmp_path):
    _cache(llama, corpus, tmp_path / "cache")
    stream = extract(llama, corpus, LAYERS, 24, 4, progress=False)
    for want, got in zip(stream, open_cache(tmp_path / "cache").batches(), strict=True):
        assert all(torch.equal(want.acts[layer], got.acts[layer]) for layer in LAYERS)
        assert want.provenance.keys() == got.provenance.keys() and want.complete == got.complete
        assert (want.documents, want.partial) == (got.documents, got.partial)


def test_half_precision_cache_rounds_each_activation_once(llama, corpus, tmp_path):
    manifest = _cache(llama, corpus, tmp_path / "cache", dtype="float16")
    assert manifest.dtype == "float16"
    stream = extract(llama, corpus, [2], 24, 4, progress=False)
    for want, got in zip(stream, open_cache(tmp_path / "cache").batches([2]), strict=True):
        assert got.acts[2].dtype == torch.float32
        assert torch.equal(want.acts[2].half().float(), got.acts[2])


def test_dictionaries_record_the_precision_a_cache_held(llama, corpus, tmp_path):
    manifest = _cache(llama, corpus, tmp_path / "cache", dtype="float16")
    assert manifest.model["dtype"] == "float32"  # what the model computed in, beside what the cache stores
    cache = open_cache(tmp_path / "cache")
    trained = Trainer(cache.model, cache.manifest.corpus(), _config()).run(source=cache.batches(LAYERS))
    assert {(d.config.activation_dtype, d.config.cache_dtype) for d in trained.values()} == {("float32", "float16")}
    _damage(tmp_path / "cache", lambda d: d["model"].pop("dtype"))  # a cache written before it was recorded
    old = open_cache(tmp_path / "cache")
    trained = Trainer(old.model, old.manifest.corpus(), _config()).run(source=old.batches(LAYERS))
    assert {(d.config.activation_dtype, d.config.cache_dtype) for d in trained.values()} == {("", "float16")}


def test_writing_refuses_a_non_empty_folder_and_replaces_it_only_when_asked(llama, corpus, tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ITDAError, match="--overwrite"):
        _cache(llama, corpus, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    _cache(llama, corpus, out, overwrite=True)
    assert (out / MANIFEST).is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temporary folder left


def test_a_failed_write_leaves_nothing(llama, tmp_path):
    with pytest.raises(ITDAError, match="out of range"):
        write_cache(llama, tiny_corpus(), [5], tmp_path / "cache")
    with pytest.raises(ITDAError, match="no activations"):  # every token skipped: nothing to cache
        write_cache(llama, tiny_corpus().documents[3:4], [0], tmp_path / "cache",
                    ActivationCacheConfig(skip_special_tokens=True, seq_len=1, progress=False))
    assert list(tmp_path.iterdir()) == []


def _damage(folder, edit) -> None:
    path = folder / MANIFEST
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("layers"), "missing fields"),
    (lambda d: d.update(seq_len="24"), "wrong type"),
    (lambda d: d.update(version=99), "format version"),
    (lambda d: d["model"].pop("d_model"), "d_model"),
    (lambda d: d["model"].update(dtype="float8"), "model field 'dtype'"),
    (lambda d: d.update(layers=[2, 0]), "sorted unique"),
    (lambda d: d.update(tokens=d["tokens"] + 1), "tokens"),
    (lambda d: d["shards"][0].update(file="../x.safetensors"), "malformed"),
    (lambda d: d["shards"][0].update(bytes=d["shards"][0]["bytes"] + 1), "cut or replaced"),
])
def test_a_damaged_manifest_is_a_one_line_error(llama, corpus, tmp_path, edit, message):
    _cache(llama, corpus, tmp_path / "cache")
    _damage(tmp_path / "cache", edit)
    with pytest.raises(ITDAError, match=message) as err:
        open_cache(tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_damaged_shards_and_missing_files_are_one_line_errors(llama, corpus, tmp_path):
    with pytest.raises(ITDAError, match=r"no manifest\.json"):
        open_cache(tmp_path)
    manifest = _cache(llama, corpus, tmp_path / "cache")
    shard = tmp_path / "cache" / manifest.shards[1].file
    shard.write_bytes(b"\0" * shard.stat().st_size)  # same size, unreadable
    batches = open_cache(tmp_path / "cache").batches()
    with pytest.raises(ITDAError, match="cannot be read"):
        list(batches)
    with pytest.raises(ITDAError, match="not in this cache"):
        list(open_cache(tmp_path / "cache").batches([1]))
    (tmp_path / "cache" / MANIFEST).write_text("{not json")
    with pytest.raises(ITDAError, match="cannot be read"):
        open_cache(tmp_path / "cache")


def test_extract_then_train_from_the_cache_on_the_command_line(tmp_path):
    folder = save_tiny_model("gpt2", tmp_path / "tiny-gpt2")
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 3))
    runner = CliRunner()
    common = ["--batch-size", "4", "--held-out", "0.2", "--no-progress"]
    result = runner.invoke(app, ["extract", "--model", str(folder), "--corpus", str(corpus), "--layers", "0,2",
                                 "--out", str(tmp_path / "cache"), "--shard-tokens", "64", "--max-tokens", "0",
                                 *common])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["extract", "--model", str(folder), "--corpus", str(corpus), "--layers", "0",
                                "--out", str(tmp_path / "cache"), "--no-progress"])
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)
    outs = {}
    for how in ("model", "cache"):
        source = ["--activations", str(tmp_path / "cache")] if how == "cache" else ["--model", str(folder),
                                                                                    "--corpus", str(corpus)]
        result = runner.invoke(app, ["train", *source, "--layers", "all" if how == "cache" else "0,2", "--k", "6",
                                     "--out", str(tmp_path / f"out-{how}"), *common])
        assert result.exit_code == 0, result.output
        assert "saved 2 dictionaries" in result.output
        outs[how] = {ITDA.load(p).config.layer: ITDA.load(p) for p in sorted(next((tmp_path / f"out-{how}").iterdir())
                                                                             .iterdir())}
    _same(outs["model"], outs["cache"])
    refused = runner.invoke(app, ["train", "--activations", str(tmp_path / "cache"), "--layers", "1",
                                  "--out", str(tmp_path / "x"), "--no-progress"])
    assert refused.exit_code != 0 and "not in this cache" in str(refused.exception)


@pytest.mark.timeout(400)  # a Ray pool that cannot start must fail the test, not hang CI (busy machines: 400 s)
def test_ray_extraction_writes_the_local_cache(corpus, tmp_path):
    """``itda extract --engine ray`` on a local 2-CPU cluster: the same shards' batches as in-process (the local
    run on the actor's one intra-op thread: a CPU forward rounds differently on another thread count)."""
    ray = pytest.importorskip("ray")
    from itda_core.models import load_model

    made = tiny_model("llama")
    made.model.save_pretrained(tmp_path / "tiny-llama")
    made.tokenizer.save_pretrained(tmp_path / "tiny-llama")
    model = load_model(str(tmp_path / "tiny-llama"), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = _cache(model, corpus, tmp_path / "local", max_tokens=101)
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = ActivationCacheConfig(seq_len=24, batch_size=4, max_tokens=101, shard_tokens=40, progress=False,
                                    engine="ray", workers=2)
        remote = write_cache(model, corpus, LAYERS, tmp_path / "ray", cfg,
                             loader=lambda _name: load_model(str(tmp_path / "tiny-llama"), device="cpu"))
    finally:
        ray.shutdown()
    keep = {"tokens", "documents", "documents_sha256", "shards", "model", "layers", "corpus_sha256"}
    assert {k: v for k, v in vars(local).items() if k in keep} == {k: v for k, v in vars(remote).items() if k in keep}
    for want, got in zip(open_cache(tmp_path / "local").batches(), open_cache(tmp_path / "ray").batches(),
                         strict=True):
        assert all(torch.equal(want.acts[layer], got.acts[layer]) for layer in LAYERS)
        assert want.provenance.keys() == got.provenance.keys() and want.complete == got.complete
        assert (want.documents, want.partial) == (got.documents, got.partial)
