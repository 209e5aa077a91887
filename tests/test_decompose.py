"""Decomposing typed text with a dictionary (per-token codes, reconstruction cosines, summed repeated atoms),
the text limits, and an atom's logit effect, on a tiny random Llama and a dictionary trained on the tiny
corpus (and a tiny BERT, which has no LM head)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itda_core import decompose as D
from itda_core.config.train import TrainConfig
from itda_core.errors import ITDAError
from itda_core.trainer import Trainer
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import cosine_tol, unit_roundoff


@pytest.fixture(scope="module")
def loaded():
    """A 3-layer tiny Llama and its layer-1 dictionary (k 4), trained on the train split of the tiny corpus."""
    model = tiny_model("llama", n_layers=3)
    train, _ = tiny_corpus(n_copies=4).split(0.25)
    config = TrainConfig(layers=[1], k=4, threshold=0.02, max_tokens=None, progress=False)
    return model, Trainer(model, train, config).run()[1]


def test_decompose_reconstructs_and_aggregates(loaded):
    model, itda = loaded
    text = "The capital of France is Paris. <script> & </div> 🙂\ttabs\nnewline"
    dec = D.decompose(model, itda, text, k=4)
    assert len(dec) == len(dec.pieces) == dec.indices.shape[0]
    assert dec.special[0] and dec.token_strs[0] == "<bos>"
    assert "".join(g + p for g, p, s in zip(dec.gaps, dec.pieces, dec.special, strict=True) if not s) == text
    # a float32 cosine of d_model-wide vectors overshoots 1 by at most its rounding
    assert np.all(dec.cosine[dec.encoded] > 0.5)
    assert np.all(dec.cosine[dec.encoded] <= 1.0 + cosine_tol(model.d_model))
    stats = D.summary(dec)
    # the minimum is one of the values, picked, not computed
    assert stats["encoded"] == len(dec) and stats["min_cosine"] == dec.cosine[stats["worst"][0]]
    # an atom picked at two steps counts once, with the summed coefficient
    dec.indices[3] = [5, 7, 5, 9]
    dec.coefs[3] = [1.0, 0.5, 0.25, -0.1]
    atoms = D.token_atoms(dec, 3)
    # the coefficients are float32: each within one rounding of its literal (1.0 + 0.25 itself is exact)
    one_rounding = unit_roundoff(torch.float32)
    assert atoms["atom"].tolist() == [5, 7, 9]
    assert atoms["coef"].tolist() == pytest.approx([1.25, 0.5, -0.1], rel=one_rounding)
    assert D.atom_coefficients(dec, 5)[3] == pytest.approx(1.25, rel=one_rounding)


def test_length_limits(loaded):
    model, itda = loaded
    assert "at most" in D.length_problem("x" * (D.MAX_CHARS + 1))
    assert D.length_problem("   ") is not None
    with pytest.raises(ITDAError, match="tokens"):
        D.decompose(model, itda, "a b " * (D.MAX_TOKENS // 2 + 10))


def test_logit_effect(loaded):
    model, itda = loaded
    effect = D.logit_effect(model, itda.atoms[2].numpy(), top=5)
    assert effect is not None and effect["normed"]
    assert len(effect["promoted"]) == 5 and len(effect["suppressed"]) == 5
    assert effect["promoted"]["logit"].min() > effect["suppressed"]["logit"].max()
    bert = tiny_model("bert", n_layers=2)
    assert D.logit_effect(bert, np.ones(bert.d_model)) is None
