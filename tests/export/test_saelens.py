"""SAELens export: sae_lens loads the folder, its matching pursuit gives our k-step codes (up to near-ties and
rounding), its decode our reconstruction, and the metadata survives the round trip."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from itda_core.corpus import Document
from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.export.saelens import (
    CFG_FILE,
    WEIGHTS_FILE,
    export_saelens,
    fold_saelens_codes,
    itda_codes_to_saelens,
    itda_config_of,
    saelens_codes_to_itda,
)
from itda_core.extraction import extract
from itda_core.models.embedded import installed
from itda_core.mp import reconstruct
from itda_core.provenance import Provenance
from itda_core.trainer import train
from tests.mp.helpers import assert_greedy_up_to_rounding
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import gamma, mp_tol

sae_lens = pytest.importorskip("sae_lens")
LAYER = 1
HELD_OUT = [
    "Seven violet herons waded slowly through the marsh while distant thunder rolled over the hills.",
    "Compilers translate source programs into machine code; optimisers then rewrite loops and branches.",
    "Her grandmother kept bees, brewed mead every autumn and sold jars of honey at the Sunday market.",
]


class _Steps(TorchFunctionMode):
    """Records each ``scatter_add_`` of SAELens's MP loop (one per step: the [n, 1] latents and values)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.Tensor.scatter_add_:
            self.steps.append((args[2].detach().clone(), args[3].detach().clone()))
        return func(*args, **(kwargs or {}))


def saelens_steps(sae: object, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """SAELens's encode of ``x``: its activations [n, 2m], its per-step signed codes (indices, coefficients
    [n, steps], latent m + j read as atom j with the value negated) and the number of steps it ran."""
    with torch.no_grad(), _Steps() as rec:
        acts = sae.encode(x)  # type: ignore[attr-defined]
    latent = torch.cat([s[0] for s in rec.steps], dim=1)
    value = torch.cat([s[1] for s in rec.steps], dim=1)
    return acts, latent % m, torch.where(latent >= m, -value, value), len(rec.steps)


def first_near_tie(x: torch.Tensor, atoms: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Per row, the first step (k if none) whose best |corr| is within twice the rounding bound of another atom's,
    replaying the codes in float64. A step's correlations, coefficient and update are bounded by its residual's
    norm, so its rounding is at most gamma(d + 2) |r_t| and a correct MP's step-s correlations are within
    gamma(d + 2) times the sum of |r_t| (t <= s) of the replay: two of them can order two atoms differently only
    where that gap is under twice this, and they take the same atoms before."""
    n, k = idx.shape
    a64, r = atoms.double(), x.double().clone()
    seen = torch.zeros(n, dtype=torch.float64)
    first = torch.full((n,), k)
    for s in range(k):
        seen += r.norm(dim=1)
        top = (r @ a64.T).abs().topk(2, dim=1).values
        tie = top[:, 0] - top[:, 1] <= 2 * gamma(atoms.shape[1] + 2) * seen
        first = torch.where(tie & (first == k), s, first)
        r -= coef[:, s, None].double() * a64[idx[:, s]]
    return first


def compare(itda: ITDA, sae: object, x: torch.Tensor) -> dict[str, float]:
    """Encode ``x`` both ways and check what correct k-step MPs share; returns the figures for the report."""
    atoms, m, k, d = itda.atoms, len(itda), itda.config.k, itda.d_model
    idx, coef = itda.encode(x)
    acts, s_idx, s_coef, steps = saelens_steps(sae, x, m)
    assert steps == k, f"SAELens ran {steps} MP steps, not k = {k}"
    scale = x.norm(dim=1, keepdim=True)
    # its dense activations are its steps summed, and fold to signed codes whose reconstruction is its decode
    torch.testing.assert_close(acts, itda_codes_to_saelens(s_idx, s_coef, m), rtol=0, atol=0)
    recon_tol = 2 * gamma(k + 1) * k * scale  # a k-term sum of |coef| <= |x| unit atoms, two orders of it
    with torch.no_grad():
        s_recon = sae.decode(acts)  # type: ignore[attr-defined]
        assert ((s_recon - itda.decode(*saelens_codes_to_itda(acts))).abs() <= recon_tol).all()
        ours = sae.decode(itda_codes_to_saelens(idx, coef, m))  # type: ignore[attr-defined]
        assert ((ours - itda.decode(idx, coef)).abs() <= recon_tol).all(), "SAELens decodes our codes as we do"
    # every SAELens step is a greedy MP step up to rounding, and before a row's first near-tie it is ours
    assert_greedy_up_to_rounding(x, atoms, s_idx, s_coef)
    before = torch.arange(k) < first_near_tie(x, atoms, idx, coef)[:, None]
    assert torch.equal(s_idx[before], idx[before])
    coef_tol = 2 * mp_tol(d, k) * scale
    coef_diff = (s_coef - coef).abs()
    assert (coef_diff <= coef_tol)[before].all()
    same = (s_idx == idx).all(dim=1)
    recon_diff = (s_recon - itda.decode(idx, coef)).abs()
    # same atoms: k coefficient differences plus each reconstruction's rounding (tests/mp/helpers.py)
    assert (recon_diff[same] <= (k * coef_tol + recon_tol)[same]).all()
    # any two MP reconstructions are x minus a residual no longer than x: apart by at most |r_a| + |r_b|
    r_norms = (x - s_recon).norm(dim=1) + (x - itda.decode(idx, coef)).norm(dim=1)
    assert (recon_diff.norm(dim=1) <= r_norms * (1 + 2 * gamma(k + 1)) + recon_tol[:, 0]).all()
    return {
        "tokens": len(x), "atoms": m, "k": k, "steps": steps, "exact_fraction": float(same.float().mean()),
        "tied_tokens": int((~before.all(dim=1)).sum()),
        "max_coef_diff": float(coef_diff[same].max()) if same.any() else 0.0,
        "max_coef_diff_rel": float((coef_diff / scale)[same].max()) if same.any() else 0.0,
        "max_recon_diff": float(recon_diff.max()), "max_recon_diff_rel": float((recon_diff / scale).max()),
        "max_recon_diff_same": float(recon_diff[same].max()) if same.any() else 0.0,
        "max_recon_diff_same_rel": float((recon_diff / scale)[same].max()) if same.any() else 0.0,
    }


@pytest.fixture(scope="module")
def tiny_setup() -> tuple[ITDA, torch.Tensor]:
    lm = tiny_model("llama")
    itda = train(lm, tiny_corpus(), layers=[LAYER], k=8, batch_size=4, max_tokens=None, progress=False)[LAYER]
    # held-out text unlike the training documents (whose own tokens MP reconstructs in one step, then has only
    # rounding noise left to pick from: every later step a near-tie); only each document's <bos> is an atom
    held = [Document(doc_id=100 + i, text=t, source="held") for i, t in enumerate(HELD_OUT)]
    x = torch.cat([b.acts[LAYER] for b in extract(lm, held, [LAYER], progress=False)])
    return itda, x


def test_tiny_llama_saelens_codes_are_ours(tiny_setup: tuple[ITDA, torch.Tensor], tmp_path: Path) -> None:
    itda, x = tiny_setup
    sae = sae_lens.SAE.load_from_disk(export_saelens(itda, tmp_path / "sae"))
    assert type(sae).__name__ == "MatchingPursuitSAE"
    assert torch.equal(sae.W_dec.detach(), torch.cat([itda.atoms, -itda.atoms]))
    figures = compare(itda, sae, x)
    print("tiny llama:", figures)
    # only each document's <bos> ties (it is an atom: one step leaves rounding noise); the other tokens, tie-free,
    # got our atoms at every step (checked in compare)
    assert figures["tied_tokens"] <= len(HELD_OUT)
    assert figures["exact_fraction"] >= 1 - len(HELD_OUT) / figures["tokens"]


def test_metadata_round_trips(tiny_setup: tuple[ITDA, torch.Tensor], tmp_path: Path) -> None:
    itda, _ = tiny_setup
    out = export_saelens(itda, tmp_path / "sae", metadata={"my_note": [1, "two"]}, dtype="float64")
    assert sorted(p.name for p in out.iterdir()) == sorted([CFG_FILE, WEIGHTS_FILE])
    sae = sae_lens.SAE.load_from_disk(out)
    cfg, meta = sae.cfg, sae.cfg.metadata
    assert (cfg.d_in, cfg.d_sae, cfg.dtype, sae.W_dec.dtype) == (itda.d_model, 2 * len(itda), "float64", torch.float64)
    assert (cfg.residual_threshold, cfg.max_iterations, cfg.stop_on_duplicate_support) == (0.0, itda.config.k, False)
    assert not cfg.apply_b_dec_to_input and cfg.normalize_activations == "none"
    assert meta.model_name == itda.config.model_name  # a tiny model: no hub name to map it to
    assert meta.hook_name == f"blocks.{LAYER}.hook_resid_post" == itda.config.site
    assert (meta.context_size, meta.dataset_path) == (itda.config.seq_len, itda.config.corpus_id)
    assert meta.prepend_bos is True  # the tiny Llama's tokenizer adds <bos>: an atom at position 0, no characters
    assert meta.my_note == [1, "two"] and meta.itda_model_id == itda.config.model_id
    assert itda_config_of(meta) == itda.config
    again = sae_lens.SAE.load_from_disk(export_saelens(itda, tmp_path / "o", hook_name="h", context_size=7))
    assert (again.cfg.metadata.hook_name, again.cfg.metadata.context_size) == ("h", 7)


def test_unknown_keys_do_not_break_loading(tiny_setup: tuple[ITDA, torch.Tensor], tmp_path: Path) -> None:
    out = export_saelens(tiny_setup[0], tmp_path / "sae")
    cfg = json.loads((out / CFG_FILE).read_text())
    cfg["from_a_newer_itda"] = {"x": 1}
    (out / CFG_FILE).write_text(json.dumps(cfg))
    assert sae_lens.SAE.load_from_disk(out).cfg.d_sae == 2 * len(tiny_setup[0])


def test_fold_and_unfold() -> None:
    idx = torch.tensor([[2, 0, 2], [1, 1, 0]])
    coef = torch.tensor([[-3.0, 1.5, 0.5], [2.0, -0.5, 0.0]])
    acts = itda_codes_to_saelens(idx, coef, 3)
    assert torch.equal(acts, torch.tensor([[1.5, 0, 0.5, 0, 0, 3.0], [0, 2.0, 0, 0, 0.5, 0]]))
    assert torch.equal(fold_saelens_codes(acts), torch.tensor([[1.5, 0, -2.5], [0, 1.5, 0]]))
    got_idx, got_coef = saelens_codes_to_itda(acts)
    assert torch.equal(got_idx, torch.tensor([[2, 0], [1, 0]]))
    assert torch.equal(got_coef, torch.tensor([[-2.5, 1.5], [1.5, 0.0]]))
    atoms = torch.eye(3)
    assert torch.equal(reconstruct(got_idx, got_coef, atoms), reconstruct(idx, coef, atoms))
    assert saelens_codes_to_itda(acts, k=5)[0].shape == (2, 5)
    with pytest.raises(ITDAError, match=r"\[\.\.\., 2m\]"):
        fold_saelens_codes(torch.zeros(2, 5))


def test_bad_inputs_are_one_line_errors(tiny_setup: tuple[ITDA, torch.Tensor], tmp_path: Path) -> None:
    itda = tiny_setup[0]
    empty = ITDA(torch.zeros(0, itda.d_model), Provenance(), dataclasses.replace(itda.config))
    with pytest.raises(ITDAError, match="no atoms"):
        export_saelens(empty, tmp_path / "e")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sae"):
        with pytest.raises(ITDAError) as err:
            export_saelens(itda, out)
        assert "\n" not in str(err.value) and str(out) in str(err.value)
    with pytest.raises(ITDAError, match="unknown dtype"):
        export_saelens(itda, tmp_path / "d", dtype="int8")
    scaled = ITDA(itda.atoms * 2, itda.provenance, itda.config)
    with pytest.raises(ITDAError, match="unit norm"):
        export_saelens(scaled, tmp_path / "s")
    assert not (tmp_path / "e").exists() and not (tmp_path / "s").exists()


def test_importing_the_module_does_not_import_sae_lens() -> None:
    code = "import sys, itda_core.export.saelens; print(sorted({'sae_lens', 'transformer_lens'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "[]"


@pytest.mark.integration
@pytest.mark.skipif(not installed("smollm2-135m"), reason="the embedded SmolLM2 is not installed")
def test_smollm2_layer15_held_out_codes(tmp_path: Path) -> None:
    from itda_core.corpus import load_corpus
    from itda_core.models import load_model

    lm = load_model("smollm2-135m", device="cpu")
    train_part, held = load_corpus("default").split(0.1)
    itda = train(lm, train_part, layers=[15], max_tokens=2000, progress=False)[15]
    x = torch.cat([b.acts[15] for b in extract(lm, held, [15], max_tokens=1000, progress=False)])
    assert x.shape == (1000, lm.d_model)
    sae = sae_lens.SAE.load_from_disk(export_saelens(itda, tmp_path / "sae"))
    meta = sae.cfg.metadata
    assert (meta.model_name, meta.hook_name) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "blocks.15.hook_resid_post")
    assert meta.prepend_bos is False  # SmolLM2's tokenizer adds no BOS
    figures = compare(itda, sae, x)
    print("SmolLM2 layer 15:", figures)
    # ITDA's near-duplicate atoms make near-ties on real activations (docs/method.md: 13 of 400 tokens in one
    # review), and every divergent token was checked to be one; most tokens have none
    assert figures["exact_fraction"] >= 0.9


def test_a_folder_with_files_is_replaced_only_when_asked(tiny_setup: tuple[ITDA, torch.Tensor], tmp_path: Path) -> None:
    itda, out = tiny_setup[0], tmp_path / "sae"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ITDAError, match="not empty"):
        export_saelens(itda, out)
    assert (out / "notes.txt").read_text() == "mine"
    export_saelens(itda, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
