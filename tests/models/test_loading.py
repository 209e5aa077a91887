"""Model loading (itda_core.models.loading): wrapping, local folders, devices, dtypes and bad names."""

from __future__ import annotations

import pytest
import torch

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
