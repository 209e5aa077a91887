"""evaluate and EvalResult: a perfect reconstruction scores one, trained dictionaries of decoders and
encoders, and the JSON round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from itda_core.corpus import Corpus
from itda_core.evaluation import evaluate
from itda_core.models import LoadedModel
from tests.evaluation.helpers import LAYER, exact_itda, perfect_reconstruction_tol
from tests.tiny import tiny_corpus, tiny_model


# ---- the score -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_perfect_reconstruction_scores_one(kind: str, docs: Corpus) -> None:
    model = tiny_model(kind)
    result = evaluate(model, exact_itda(model, docs), docs, k=1)
    tol = perfect_reconstruction_tol(model, docs)
    assert result.ce_spliced == pytest.approx(result.ce_clean, abs=tol["ce"])
    # |score - 1| = |H* - H_orig| / |H_orig - H0|: the CE bound over the (small, on a random model) denominator
    assert result.ce_loss_score == pytest.approx(1.0, abs=tol["ce"] / abs(result.ce_clean - result.ce_zero))
    assert result.kl_div == pytest.approx(0.0, abs=tol["kl"])
    assert result.fvu == pytest.approx(0.0, abs=tol["fvu"])
    assert result.cosine == pytest.approx(1.0, abs=tol["cosine"])
    assert result.l0 == 1 and result.l0_distinct == 1
    assert result.kl_zero > 0


# ---- real dictionaries ------------------------------------------------------------------------------
def test_trained_itda_gives_finite_score(llama: LoadedModel) -> None:
    from itda_core.trainer import train

    train_part, held = tiny_corpus(n_copies=3).split(0.25)
    itda = train(llama, train_part, layers=[LAYER], k=4, max_tokens=None, progress=False)[LAYER]
    result = evaluate(llama, itda, held, k=4)
    assert result.ce_loss_score is not None and math.isfinite(result.ce_loss_score)
    assert result.fvu is not None and 0 <= result.fvu < 1.5
    assert result.l0 == 4 and 1 <= result.l0_distinct <= 4
    assert 0 <= result.dead_fraction < 1 and result.atoms_used <= len(itda)
    assert result.corpus_id == held.corpus_id and result.dictionary_corpus_id == train_part.corpus_id
    data = result.to_dict()
    assert all(v is None or isinstance(v, (int, float, str, bool)) for v in data.values())


def test_encoder_gives_reconstruction_metrics_only(bert: LoadedModel, docs: Corpus) -> None:
    from itda_core.trainer import train

    itda = train(bert, docs, layers=[LAYER], k=4, max_tokens=None, progress=False)[LAYER]
    result = evaluate(bert, itda, docs, k=4)
    assert result.family == "encoder"
    assert result.ce_clean is None and result.ce_loss_score is None and result.kl_div is None
    assert result.ce_positions is None and "encoder" in result.note
    assert result.fvu is not None and math.isfinite(result.fvu) and result.cosine is not None
    # CLS and SEP are excluded: one of each per document.
    assert result.special_positions == 2 * len(docs)


def test_to_json_round_trip(llama: LoadedModel, docs: Corpus, tmp_path: Path) -> None:
    result = evaluate(llama, exact_itda(llama, docs), docs, k=1, max_tokens=30)
    path = result.to_json(tmp_path / "r.json")
    assert json.loads(path.read_text())["ce_loss_score"] == result.ce_loss_score  # JSON keeps a float's repr
    assert type(result).from_dict(json.loads(path.read_text())) == result
