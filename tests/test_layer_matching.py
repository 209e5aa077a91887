"""Layer matching: the argmax rule on hand-made matrices, the benchmark on tiny random GPT-2s (a model against
itself must score 1.0), bad input, and ``itda bench layer-matching`` end to end on saved tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import TEXTS, tiny_corpus, tiny_model
from typer.testing import CliRunner

from itda_core.cli import app
from itda_core.errors import ITDAError
from itda_core.similarity.layer_matching import (
    LayerMatchingConfig,
    format_table,
    matching_accuracy,
    run_layer_matching,
)

FAST = {"tokens": 2_000, "k": 4, "seq_len": 64, "batch_size": 8}


def test_matching_accuracy_hand_made():
    m = np.array([[0.9, 0.1, 0.2], [0.5, 0.4, 0.3], [0.1, 0.2, 0.8]])
    assert matching_accuracy(m) == pytest.approx(2 / 3)  # row 1 picks layer 0
    assert matching_accuracy(np.eye(4)) == 1.0
    assert matching_accuracy(np.fliplr(np.eye(4))) == 0.0


def test_matching_accuracy_ties_and_nan_count_as_wrong():
    assert matching_accuracy(np.array([[1.0, 1.0], [0.0, 1.0]])) == 0.5  # row 0: tie
    assert matching_accuracy(np.array([[np.nan, np.nan], [0.2, 0.3]])) == 0.5  # row 0: undefined
    assert matching_accuracy(np.array([[0.5, np.nan], [np.nan, 0.1]])) == 1.0  # NaN elsewhere never wins
    with pytest.raises(ITDAError, match="square"):
        matching_accuracy(np.ones((2, 3)))


def test_model_against_itself_scores_one():
    model = tiny_model("gpt2", n_layers=3)
    config = LayerMatchingConfig(**FAST, measures=("jaccard", "cka", "svcca", "relative"), n_directions=8,
                                 n_anchors=50)
    result = run_layer_matching([model, model], config, corpus=tiny_corpus(n_copies=4))
    assert result.models == ["tiny-gpt2#0", "tiny-gpt2#1"]
    assert result.accuracy["jaccard"] == 1.0
    assert result.accuracy["cka"] == 1.0
    pair = result.matrices["jaccard"]["tiny-gpt2#0 -> tiny-gpt2#1"]
    assert np.allclose(np.diagonal(pair), 1.0)
    assert set(result.per_pair["cka"]) == {"tiny-gpt2#0 -> tiny-gpt2#1", "tiny-gpt2#1 -> tiny-gpt2#0"}
    table = format_table(result)
    assert "ITDA Jaccard" in table and "0.88" in table  # the paper's number sits beside ours
    json.dumps(result.to_dict())  # JSON-ready


def test_two_seeds_give_a_valid_score():
    models = [tiny_model("gpt2", seed=s, n_layers=3) for s in (0, 1)]
    result = run_layer_matching(models, LayerMatchingConfig(**FAST), corpus=tiny_corpus(n_copies=4))
    assert set(result.accuracy) == {"jaccard", "cka", "cka_normalised", "svcca", "relative", "r2"}
    assert all(0.0 <= a <= 1.0 for a in result.accuracy.values())
    assert len(result.per_pair["r2"]) == 2
    assert result.baseline_tokens == result.tokens


def test_bad_input():
    gpt2 = tiny_model("gpt2", n_layers=3)
    with pytest.raises(ITDAError, match="one depth"):
        run_layer_matching([gpt2, tiny_model("gpt2", n_layers=2)], LayerMatchingConfig(**FAST),
                           corpus=tiny_corpus())
    with pytest.raises(ITDAError, match="at least two models"):
        run_layer_matching([gpt2], LayerMatchingConfig(**FAST))
    with pytest.raises(ITDAError, match="unknown measure"):
        run_layer_matching([gpt2, gpt2], LayerMatchingConfig(**FAST, measures=("cosine",)))
    with pytest.raises(ITDAError, match="same tokens"):  # different tokenizers: baselines undefined
        run_layer_matching([gpt2, tiny_model("llama", n_layers=3)], LayerMatchingConfig(**FAST, measures=("cka",)),
                           corpus=tiny_corpus())


def test_cli_layer_matching(tmp_path):
    folders = []
    for seed in (0, 1):
        made = tiny_model("gpt2", seed=seed, n_layers=2)
        folder = tmp_path / f"seed{seed}"
        made.model.save_pretrained(folder)
        made.tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(TEXTS * 3))
    out = tmp_path / "lm.json"
    runner = CliRunner()
    args = ["bench", "layer-matching", "--models", *folders, "--tokens", "500", "--k", "4", "--corpus", str(text),
            "--split", "all", "--measures", "jaccard,cka", "--device", "cpu", "--no-progress", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "linear CKA" in res.output and "ITDA Jaccard" in res.output
    data = json.loads(out.read_text())
    assert set(data["accuracy"]) == {"jaccard", "cka"}
    assert len(data["per_pair"]["jaccard"]) == 2
    bad = runner.invoke(app, ["bench", "layer-matching", "--models", folders[0]])
    assert bad.exit_code != 0 and "at least two models" in str(bad.exception)


def test_blockwise_linear_measures_equal_the_baselines():
    """The benchmark's blockwise CKA / feature-normalised CKA / R^2 give the baselines module's values."""
    from itda_core.similarity.baselines import baseline_matrix
    from itda_core.similarity.layer_matching import _linear_matrices, run_model

    corpus = tiny_corpus(n_copies=4)
    config = LayerMatchingConfig(**FAST)
    runs = [run_model(tiny_model("gpt2", seed=s, n_layers=3), corpus, [0, 1, 2], config) for s in (0, 1)]
    fast = _linear_matrices(runs, [0, 1, 2], ["cka", "cka_normalised", "r2"])
    for measure in ("cka", "cka_normalised", "r2"):
        for a, b in ((0, 1), (1, 0)):
            slow = baseline_matrix(runs[a].activations, runs[b].activations, measure).to_numpy()
            assert np.allclose(fast[measure][(a, b)], slow, atol=1e-6), measure
