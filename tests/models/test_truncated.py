"""Large models on one box (itda_core.models.placement): truncated loads (only the blocks up to a layer) and
accelerate device maps with disk offload give the activations and dictionaries of a full load; bad combinations
are one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from itda_core.errors import ITDAError
from itda_core.extraction import extract
from itda_core.models import load_model, resolve_dtype
from itda_core.models.placement import TruncatedModelError, blocks_path
from itda_core.trainer import train
from tests.tiny import save_tiny_model, tiny_corpus, tiny_model
from tests.tolerance import forward_tol

DEPTH = 4
SEQ_LEN = 24


def _tiny_gemma3():
    """A random Gemma 3 text model: per-layer attention types (sliding / full) that truncation must cut too."""
    llama = tiny_model("llama", n_layers=DEPTH)
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(llama.tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=DEPTH, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                           sliding_window=4, max_position_embeddings=256)
    return Gemma3ForCausalLM(cfg).float().eval(), llama.tokenizer


@pytest.fixture(scope="module", params=["llama", "gpt2", "bert", "gemma3"])
def folder(request, tmp_path_factory):
    """A tiny random model of each architecture saved as a transformers folder."""
    if request.param == "gemma3":
        model, tok = _tiny_gemma3()
    else:
        lm = tiny_model(request.param, n_layers=DEPTH)
        model, tok = lm.model, lm.tokenizer
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """One tiny Llama folder, for the checks that do not depend on the architecture."""
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama-one"), DEPTH)


def _acts(lm, layers):
    batches = list(extract(lm, tiny_corpus(), layers, SEQ_LEN, 4, progress=False))
    return {layer: torch.cat([b.acts[layer] for b in batches]) for layer in layers}


def _close(a: torch.Tensor, b: torch.Tensor, layer: int) -> bool:
    """Rows equal up to the forward pass's rounding bound (relative to each row's norm)."""
    tol = forward_tol(layer + 1, 32, 64, SEQ_LEN)
    return bool(((a - b).norm(dim=-1) <= tol * b.norm(dim=-1) + torch.finfo(b.dtype).tiny).all())


def test_truncated_load_has_fewer_blocks_same_identity_same_activations(folder):
    full = load_model(str(folder), device="cpu")
    cut = load_model(str(folder), device="cpu", up_to_layer=1)
    assert (cut.n_layers, len(cut.blocks), cut.up_to_layer) == (DEPTH, 2, 1)
    assert (full.n_layers, len(full.blocks), full.up_to_layer) == (DEPTH, DEPTH, None)
    assert (cut.model_id, cut.d_model, cut.architecture, cut.family) == (
        full.model_id, full.d_model, full.architecture, full.family)
    later = sum(p.numel() for block in full.blocks[2:] for p in block.parameters())
    assert later > 0
    n_full = sum(p.numel() for p in full.model.parameters())
    assert sum(p.numel() for p in cut.model.parameters()) == n_full - later  # the later blocks were never built
    ref, got = _acts(full, [0, 1]), _acts(cut, [0, 1])
    for layer in (0, 1):
        assert got[layer].shape == ref[layer].shape
        assert _close(got[layer], ref[layer], layer)


def test_truncated_model_refuses_layers_it_lacks_and_logits(folder):
    cut = load_model(str(folder), device="cpu", up_to_layer=1)
    with pytest.raises(ITDAError, match=r"not loaded \(loaded up to layer 1\)"):
        next(extract(cut, tiny_corpus(), [2], SEQ_LEN, 4, progress=False))
    if cut.family == "decoder":  # the head would read block 1's output as if it were the last block's
        with pytest.raises(TruncatedModelError, match="logits need the whole model"):
            cut.model(input_ids=torch.tensor([[1, 2, 3]]))


def test_truncated_dictionary_is_the_full_loads(folder):
    """A dictionary trained on a truncated load equals the full load's: the same atoms, the same config."""
    full = load_model(str(folder), device="cpu")
    cut = load_model(str(folder), device="cpu", up_to_layer=2)
    options = {"k": 4, "seq_len": SEQ_LEN, "batch_size": 4, "max_tokens": None, "progress": False}
    a = train(full, tiny_corpus(), [1, 2], **options)
    b = train(cut, tiny_corpus(), [1, 2], **options)
    for layer in (1, 2):
        assert torch.equal(a[layer].atoms, b[layer].atoms)
        ca, cb = dataclasses.asdict(a[layer].config), dataclasses.asdict(b[layer].config)
        for key in ("created", "stats"):
            ca.pop(key), cb.pop(key)
        assert ca == cb


def _offload_map(root: torch.nn.Module, path: str, disk: set[int]) -> dict[str, str]:
    """A device map covering the whole model: block i on 'disk' for i in ``disk``, everything else on 'cpu' (the
    siblings of each module on the way down to the blocks)."""
    out: dict[str, str] = {}
    module, prefix = root, ""
    for part in path.split("."):
        out.update({f"{prefix}{name}": "cpu" for name, _ in module.named_children() if name != part})
        module, prefix = getattr(module, part), f"{prefix}{part}."
    out.update({f"{prefix}{i}": "disk" if i in disk else "cpu" for i in range(len(module))})
    return out


def test_offloaded_load_gives_the_same_activations(folder, tmp_path):
    """Blocks 1 and 2 offloaded to disk (accelerate brings each to the CPU for its own forward only)."""
    full = load_model(str(folder), device="cpu")
    path = blocks_path(full.model, full.blocks)
    device_map = _offload_map(full.model, path, disk={1, 2})
    off = load_model(str(folder), device_map=device_map, offload_dir=tmp_path / "offload", dtype="float32")
    assert off.device == torch.device("cpu")
    assert off.device_map is not None and off.device_map[f"{path}.1"] == "disk"
    assert all(p.device.type == "meta" for p in off.blocks[1].parameters())  # not in memory between forwards
    ref, got = _acts(full, [0, 1, 3]), _acts(off, [0, 1, 3])
    for layer in (0, 1, 3):
        assert _close(got[layer], ref[layer], layer)
    assert all(p.device.type == "meta" for p in off.blocks[2].parameters())  # released again after the pass


def test_auto_device_map_and_truncation_together(folder, tmp_path):
    full = load_model(str(folder), device="cpu")
    both = load_model(str(folder), device_map="auto", offload_dir=tmp_path / "off", up_to_layer=2, dtype="auto")
    assert (len(both.blocks), both.dtype, both.model_id) == (3, torch.float32, full.model_id)
    ref, got = _acts(full, [2]), _acts(both, [2])
    assert _close(got[2], ref[2], 2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"offload_dir": "off"}, "--offload-dir needs --device-map"),
    ({"device": "cpu", "device_map": "auto"}, "use --device auto with a device map"),
    ({"device_map": "everywhere"}, "unknown device map 'everywhere'"),
    ({"device_map": {"model": "disk"}}, "pass --offload-dir DIR"),
    ({"device_map": {"model": "floppy"}}, "is not a GPU index"),
    ({"up_to_layer": DEPTH}, f"up_to_layer {DEPTH} is out of range"),
    ({"up_to_layer": -1}, "up_to_layer must be a layer index"),
    ({"dtype": "bfloat16", "device": "cpu"}, "use float32 on CPU"),
])
def test_bad_combinations_are_one_line_errors(llama_folder, kwargs, message):
    with pytest.raises(ITDAError, match=message) as err:
        load_model(str(llama_folder), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_gpu_in_device_map_without_a_gpu_is_refused(llama_folder):
    with pytest.raises(ITDAError, match="no CUDA GPU is available"):
        load_model(str(llama_folder), device_map={"model": 0})


def test_dtype_auto_is_float32_on_cpu_bfloat16_on_cuda():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(None, torch.device("cuda")) == torch.float32  # the library's default is unchanged


def _train_cli(folder, out, *flags):
    import json

    from typer.testing import CliRunner

    from itda_core.cli.app import app
    from tests.tiny import TEXTS

    corpus = out.parent / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 6))
    return CliRunner().invoke(app, ["train", "--model", str(folder), "--corpus", str(corpus), "--layers", "0,2",
                                    "--k", "4", "--max-tokens", "300", "--batch-size", "4", "--seq-len", str(SEQ_LEN),
                                    "--out", str(out), "--no-progress", *flags])


def test_itda_train_truncates_and_offloads_with_the_full_loads_dictionaries(llama_folder, tmp_path, monkeypatch):
    import itda_core.models.choice as choice
    from itda_core.dictionary import ITDA

    seen: list[dict] = []
    real = choice.load_model
    monkeypatch.setattr(choice, "load_model", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    runs = {"full": ["--no-truncate"], "cut": [], "offload": ["--device-map", "auto", "--offload-dir",
                                                             str(tmp_path / "off")]}
    atoms = {}
    for label, flags in runs.items():
        result = _train_cli(llama_folder, tmp_path / label, *flags)
        assert result.exit_code == 0, result.output
        folders = sorted(next((tmp_path / label).iterdir()).iterdir())
        atoms[label] = [ITDA.load(p).atoms for p in folders]
    assert [kw["up_to_layer"] for kw in seen] == [None, 2, 2]
    assert seen[2]["device_map"] == "auto" and seen[2]["dtype"] == "auto"
    for label in ("cut", "offload"):
        assert all(torch.equal(a, b) for a, b in zip(atoms["full"], atoms[label], strict=True))


@pytest.mark.parametrize(("flags", "message"), [
    (["--offload-dir", "x"], "--offload-dir needs --device-map"),
    (["--device-map", "anywhere"], "unknown --device-map 'anywhere'"),
    (["--device-map", "auto", "--device", "cpu"], "use --device auto with a device map"),
])
def test_itda_train_refuses_bad_loading_options(llama_folder, tmp_path, flags, message):
    result = _train_cli(llama_folder, tmp_path / "out", *flags)
    assert result.exit_code != 0
    assert isinstance(result.exception, ITDAError) and message in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_itda_index_loads_up_to_the_deepest_stored_layer(llama_folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import itda_core.models.choice as choice
    from itda_core.cli.app import app

    store = tmp_path / "store.duckdb"
    assert _train_cli(llama_folder, tmp_path / "out", "--store", str(store)).exit_code == 0
    seen: list[dict] = []
    real = choice.load_model
    monkeypatch.setattr(choice, "load_model", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    for flags in ([], ["--no-truncate", "--reindex"]):
        result = CliRunner().invoke(app, ["index", "--store", str(store), "--max-tokens", "200", "--no-progress",
                                          *flags])
        assert result.exit_code == 0, result.output
        assert "indexed 2" in result.output
    assert [kw["up_to_layer"] for kw in seen] == [2, None]


def test_up_to_the_last_layer_is_a_whole_load(llama_folder):
    whole = load_model(str(llama_folder), device="cpu", up_to_layer=DEPTH - 1)
    assert (whole.up_to_layer, len(whole.blocks)) == (None, DEPTH)
    assert whole.model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == len(whole.tokenizer)
