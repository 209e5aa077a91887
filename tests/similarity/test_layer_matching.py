"""Layer matching, scored the authors' way: the argmax and tie rules and the M x M x (L - 1) arithmetic on
hand-made matrices with known answers, a noisy copy of a tiny GPT-2 whose layers are relabelled by a known
permutation (every measure must recover it, in both directions), the blockwise linear measures against direct
formulas (self pairs and the authors' no-intercept regression included), the default layers (0 left out), the
Jaccard pass-through, bad input, and ``itda bench layer-matching`` end to end on saved tiny models."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from itda_core.cli.app import app
from itda_core.errors import ITDAError
from itda_core.similarity.jaccard import JaccardOptions
from itda_core.similarity.layer_matching import (
    LAYER_MATCHING_MEASURES,
    LayerMatchingConfig,
    ModelRun,
    argmax_layers,
    default_layers,
    format_table,
    matching_accuracy,
    run_layer_matching,
    run_model,
    score_matrices,
    score_runs,
)
from tests.tiny import TEXTS, tiny_corpus, tiny_model
from tests.tolerance import similarity_tol, unit_roundoff

FAST = {"tokens": 2_000, "k": 4, "seq_len": 64, "batch_size": 8, "n_directions": 8, "n_anchors": 50}
# Scores are counts of right rows over exact integer totals (a mean of booleans is one too): one correctly
# rounded division, the same double as the literal fraction's, so they are compared exactly.


def _predicting(columns: list[int], n: int | None = None) -> np.ndarray:
    """A matrix whose row i has its unique maximum in column ``columns[i]``."""
    n = n or len(columns)
    m = np.full((len(columns), n), 0.1) + 0.01 * np.arange(n)[None, :]  # low, distinct background
    for i, c in enumerate(columns):
        m[i, c] = 1.0
    return m


def test_argmax_ties_go_to_the_lowest_layer_and_nan_never_wins():
    m = np.array([[0.9, 0.1, 0.2], [0.5, 0.4, 0.3], [0.1, 0.2, 0.8]])
    assert argmax_layers(m).tolist() == [0, 0, 2]
    assert matching_accuracy(m) == 2 / 3  # row 1 picks layer 0
    assert matching_accuracy(np.fliplr(np.eye(4))) == 0.0
    tie = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    assert argmax_layers(tie, "lowest").tolist() == [0, 0, 1]  # numpy's argmax, as the authors' code
    assert matching_accuracy(tie, "lowest") == 1 / 3
    assert argmax_layers(tie, "wrong").tolist() == [-1, -1, -1]
    assert matching_accuracy(tie, "wrong") == 0.0
    everything_tied = np.ones((5, 5))  # a measure that cannot tell layers apart
    assert matching_accuracy(everything_tied) == 1 / 5  # lowest-layer rule: row 0 is right
    assert matching_accuracy(everything_tied, "wrong") == 0.0
    assert argmax_layers(np.array([[np.nan, np.nan], [0.2, 0.3]])).tolist() == [-1, 1]  # undecided row
    assert argmax_layers(np.array([[0.5, np.nan], [np.nan, 0.1]])).tolist() == [0, 1]  # NaN never wins
    with pytest.raises(ITDAError, match="square"):
        matching_accuracy(np.ones((2, 3)))
    with pytest.raises(ITDAError, match="ties"):
        matching_accuracy(np.eye(2), "random")


def test_authors_score_counts_self_pairs_over_m_m_layers():
    # 3 models, 4 scored layers. Self pairs perfect (12 of 12 rows); the 6 cross pairs get 4+2+0+1+3+2 = 12 of 24.
    right = {(0, 1): [0, 1, 2, 3], (1, 0): [0, 1, 3, 2], (0, 2): [1, 0, 3, 2], (2, 0): [0, 0, 0, 0],
             (1, 2): [0, 1, 2, 0], (2, 1): [3, 1, 2, 1]}
    mats = {pair: _predicting(cols) for pair, cols in right.items()}
    mats.update({(a, a): np.eye(4) for a in range(3)})
    scores = score_matrices(mats, 3)
    assert [scores["per_pair"][p] for p in right] == [1.0, 0.5, 0.0, 0.25, 0.75, 0.5]
    assert scores["cross"] == 12 / 24  # M (M - 1) L
    assert scores["authors"] == 24 / 36  # M M L, self pairs included
    # the identity in floats: each side one rounded division of exact values (3 + 6 x 0.5 is exact)
    assert scores["authors"] == pytest.approx((3 * 1.0 + 6 * scores["cross"]) / 9, rel=2 * unit_roundoff(torch.float64))
    assert scores["predictions"][(1, 0)].tolist() == [0, 1, 3, 2]
    assert scores["ties"] == 0

    # ties: one in a self pair (row 3 tied with column 1: lowest -> 1, wrong) and one in a cross pair (row 0
    # tied between columns 0 and 2: lowest -> 0, right)
    mats[(2, 2)] = np.eye(4)
    mats[(2, 2)][3, 1] = 1.0
    mats[(0, 1)] = _predicting([0, 1, 2, 3])
    mats[(0, 1)][0, 2] = 1.0
    lowest = score_matrices(mats, 3, "lowest")
    assert lowest["ties"] == 2
    assert lowest["authors"] == 23 / 36 and lowest["cross"] == 12 / 24
    wrong = score_matrices(mats, 3, "wrong")
    assert wrong["authors"] == 22 / 36 and wrong["cross"] == 11 / 24

    del mats[(1, 1)]
    with pytest.raises(ITDAError, match="M x M"):
        score_matrices(mats, 3)


def test_default_layers_leave_out_layer_0():
    assert default_layers(12) == list(range(1, 12))
    assert default_layers(6) == [1, 2, 3, 4, 5]


def _noisy_copy(model, scale: float, name: str):
    """The same weights plus Gaussian noise of ``scale`` x each tensor's std: a "second seed" whose layer i
    must still match layer i."""
    other = copy.deepcopy(model)
    other.name = name
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * (p.std() if p.numel() > 1 else 1.0))
    return other


def _relabelled(run: ModelRun, perm: dict[int, int]) -> ModelRun:
    """``run`` with its layer j holding what layer ``perm[j]`` held (dictionaries and activations)."""
    return ModelRun(run.name, run.model_id, run.n_layers, {j: run.dictionaries[perm[j]] for j in perm},
                    {j: run.activations[perm[j]] for j in perm}, run.token_ids)


@pytest.fixture(scope="module")
def two_runs():
    """A 4-layer tiny GPT-2 and a noisy copy, run once over the same prompts (default layers 1..3)."""
    a = tiny_model("gpt2", seed=0, n_layers=4)
    b = _noisy_copy(a, 0.02, "copy")
    corpus = tiny_corpus(n_copies=4)
    config = LayerMatchingConfig(**FAST)
    layers = default_layers(a.n_layers)
    return [run_model(m, corpus, layers, config) for m in (a, b)], layers


def test_permuted_layers_are_recovered_by_every_measure(two_runs):
    (run_a, run_b), layers = two_runs
    config = LayerMatchingConfig(**FAST)
    same = score_runs([run_a, run_b], layers, config)
    assert same.layers == [1, 2, 3]
    for measure in LAYER_MATCHING_MEASURES:
        assert same.accuracy_cross[measure] == 1.0, measure
        assert same.predictions[measure]["tiny-gpt2 -> copy"] == [1, 2, 3], measure

    perm = {1: 2, 2: 3, 3: 1}  # the copy's layer j holds its layer perm[j]: a 3-cycle, no fixed point
    inverse = {v: k for k, v in perm.items()}
    result = score_runs([run_a, _relabelled(run_b, perm)], layers, config)
    assert set(result.per_pair["cka"]) == {"tiny-gpt2 -> tiny-gpt2", "tiny-gpt2 -> copy", "copy -> tiny-gpt2",
                                           "copy -> copy"}
    for measure in LAYER_MATCHING_MEASURES:
        pred = result.predictions[measure]
        assert pred["tiny-gpt2 -> copy"] == [inverse[i] for i in layers], measure  # row i -> the column holding i
        assert pred["copy -> tiny-gpt2"] == [perm[j] for j in layers], measure  # (not the transpose's answer)
        assert pred["tiny-gpt2 -> tiny-gpt2"] == pred["copy -> copy"] == layers, measure
        assert result.accuracy_cross[measure] == 0.0, measure
        assert result.accuracy_authors[measure] == 2 * 3 / (2 * 2 * 3), measure  # self pairs only
        assert result.accuracy[measure] == result.accuracy_authors[measure]
        assert np.asarray(result.matrices[measure]["tiny-gpt2 -> copy"]).shape == (3, 3)

    swap = {1: 1, 2: 3, 3: 2}  # one fixed point: cross 1/3, authors (2 x 3 + 2 x 1) / 12
    swapped = score_runs([run_a, _relabelled(run_b, swap)], layers, LayerMatchingConfig(**FAST, protocol="cross"))
    for measure in LAYER_MATCHING_MEASURES:
        assert swapped.accuracy_cross[measure] == 1 / 3, measure
        assert swapped.accuracy_authors[measure] == 8 / 12, measure
        assert swapped.accuracy[measure] == swapped.accuracy_cross[measure]

    table = format_table(result)
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert "0.69" in rows["linear CKA, feature-normalised (the authors' code; the paper's figures)"]
    assert "0.69" not in rows["linear CKA (textbook)"]
    assert "0.16" in rows["linear regression R^2, no intercept (the authors' code; the paper's figures)"]
    assert "0.16" not in rows["linear regression R^2, with intercept"]
    jaccard_row = next(line for label, line in rows.items() if label.startswith("ITDA Jaccard ("))
    assert "0.88" in jaccard_row and "the paper's" in jaccard_row  # with the variant and the paper's variant
    assert "authors" in table and "cross" in table
    data = json.loads(json.dumps(result.to_dict()))  # JSON-ready
    assert data["accuracy_cross"]["jaccard"] == 0.0 and data["protocol"] == "authors"
    assert len(data["predictions"]["svcca"]) == 4


def test_blockwise_linear_measures_equal_direct_formulas(two_runs):
    """The benchmark's blockwise CKA / feature-normalised CKA / R^2 give the baselines module's values, self
    pairs included, and R^2 without intercept is the authors' pinv(X) Y fit."""
    from itda_core.similarity.baselines import baseline_matrix
    from itda_core.similarity.layer_measures import linear_matrices

    runs, layers = two_runs
    fast = linear_matrices(runs, layers, ["cka", "cka_normalised", "r2", "r2_no_intercept"])
    # Both sides are float64 computations of the same cross products of these n x d float32 activations
    # (tolerance.similarity_tol each); R^2's pseudo-inverses amplify by the Gram matrices' condition numbers
    # (centred for the intercept fit, raw for the authors' fit without one).
    acts = [x.double() for r in runs for x in r.activations.values()]
    n, d = acts[0].shape
    offset = max(float((x.mean(0).abs() / x.std(0)).max()) for x in acts)
    cond = max(float(torch.linalg.cond((x - x.mean(0)).T @ (x - x.mean(0)))) for x in acts)
    raw_cond = max(float(torch.linalg.cond(x.T @ x)) for x in acts)
    for measure in ("cka", "cka_normalised", "r2"):
        tol = 2 * similarity_tol(n, d, cond=cond if measure == "r2" else 1.0, offset=offset)
        for a, b in ((0, 1), (1, 0), (0, 0), (1, 1)):
            slow = baseline_matrix(runs[a].activations, runs[b].activations, measure).to_numpy()
            gap = float(np.abs(fast[measure][(a, b)] - slow).max())
            assert gap <= tol, (measure, a, b, f"{gap:.2e} apart, tolerance {tol:.2e}")
    raw_tol = 2 * similarity_tol(n, d, cond=raw_cond, offset=offset)
    for a, b in ((0, 1), (1, 0), (1, 1)):
        for i, la in enumerate(layers):
            for j, lb in enumerate(layers):
                x = runs[a].activations[la].double()
                y = runs[b].activations[lb].double()
                residual = y - x @ (torch.linalg.pinv(x) @ y)  # no intercept, as layer_similarity.py
                want = 1 - float(residual.pow(2).sum() / (y - y.mean(0)).pow(2).sum())
                assert fast["r2_no_intercept"][(a, b)][i, j] == pytest.approx(want, abs=raw_tol), (a, b, la, lb)
    # they differ by more than either's rounding
    assert np.abs(fast["r2_no_intercept"][(0, 1)] - fast["r2"][(0, 1)]).max() > raw_tol + 2 * similarity_tol(
        n, d, cond=cond, offset=offset)


def test_default_run_scores_layers_1_to_n_minus_1_and_passes_jaccard_options(monkeypatch):
    import itda_core.similarity.matrices as matrices

    seen = []
    original = matrices.jaccard_matrix

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(matrices, "jaccard_matrix", spy)
    model = tiny_model("gpt2", n_layers=3)
    options = {"method": "keys", "atoms": "all", "index": "raw"}
    config = LayerMatchingConfig(**{**FAST, "tokens": 500}, measures=("jaccard",), jaccard_options=options)
    result = run_layer_matching([model, _noisy_copy(model, 0.02, "copy")], config, corpus=tiny_corpus())
    assert result.layers == [1, 2]  # layer 0 is not scored
    assert result.atoms["tiny-gpt2"].keys() == {1, 2}
    assert np.asarray(result.matrices["jaccard"]["copy -> copy"]).shape == (2, 2)
    assert seen and all(kw == {"method": "keys", "options": JaccardOptions(atoms="all", index="raw")}
                        for kw in seen)  # atoms / index become the JaccardOptions of every call
    assert len(seen) == 3  # (0, 0), (0, 1), (1, 1); (1, 0) is the transpose
    assert result.config["jaccard_options"] == options
    assert result.labels["jaccard"] == "ITDA Jaccard (raw, all atoms; the paper's)"
    with pytest.raises(ITDAError, match="not both"):
        run_layer_matching([model, model], LayerMatchingConfig(
            **FAST, measures=("jaccard",), jaccard_options={"index": "raw", "options": JaccardOptions()}),
            corpus=tiny_corpus())


def test_bad_input():
    gpt2 = tiny_model("gpt2", n_layers=3)
    with pytest.raises(ITDAError, match="one depth"):
        run_layer_matching([gpt2, tiny_model("gpt2", n_layers=2)], LayerMatchingConfig(**FAST),
                           corpus=tiny_corpus())
    with pytest.raises(ITDAError, match="at least two layers"):  # 2 layers: only layer 1 is scored
        two = tiny_model("gpt2", n_layers=2)
        run_layer_matching([two, two], LayerMatchingConfig(**FAST), corpus=tiny_corpus())
    with pytest.raises(ITDAError, match="at least two models"):
        run_layer_matching([gpt2], LayerMatchingConfig(**FAST))
    with pytest.raises(ITDAError, match="unknown measure"):
        run_layer_matching([gpt2, gpt2], LayerMatchingConfig(**FAST, measures=("cosine",)))
    with pytest.raises(ITDAError, match="protocol"):
        run_layer_matching([gpt2, gpt2], LayerMatchingConfig(**FAST, protocol="paper"))
    with pytest.raises(ITDAError, match="ties"):
        run_layer_matching([gpt2, gpt2], LayerMatchingConfig(**FAST, ties="first"))
    with pytest.raises(ITDAError, match="same tokens"):  # different tokenizers: baselines undefined
        run_layer_matching([gpt2, tiny_model("llama", n_layers=3)], LayerMatchingConfig(**FAST, measures=("cka",)),
                           corpus=tiny_corpus())


def test_cli_layer_matching(tmp_path):
    folders = []
    for seed in (0, 1):
        made = tiny_model("gpt2", seed=seed, n_layers=3)
        folder = tmp_path / f"seed{seed}"
        made.model.save_pretrained(folder)
        made.tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(TEXTS * 3))
    out = tmp_path / "lm.json"
    runner = CliRunner()
    args = ["bench", "layer-matching", "--models", *folders, "--tokens", "500", "--k", "4", "--corpus", str(text),
            "--split", "all", "--measures", "jaccard,cka_normalised", "--device", "cpu", "--no-progress",
            "--protocol", "cross", "--jaccard-options", '{"method": "spans"}', "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "feature-normalised" in res.output and "ITDA Jaccard" in res.output and "cross" in res.output
    data = json.loads(out.read_text())
    assert set(data["accuracy"]) == {"jaccard", "cka_normalised"}
    assert data["accuracy"] == data["accuracy_cross"] and data["protocol"] == "cross"
    assert len(data["per_pair"]["jaccard"]) == 4  # 2 x 2 ordered pairs, self pairs included
    assert data["layers"] == [1, 2]
    assert data["config"]["jaccard_options"] == {"method": "spans"}
    every = runner.invoke(app, [*args[:-2], "--layers", "all", "--out", str(out)])
    assert every.exit_code == 0, every.output
    assert json.loads(out.read_text())["layers"] == [0, 1, 2]
    bad = runner.invoke(app, ["bench", "layer-matching", "--models", folders[0]])
    assert bad.exit_code != 0 and "at least two models" in str(bad.exception)
    bad = runner.invoke(app, [*args[:-4], "--jaccard-options", "[1]"])
    assert bad.exit_code != 0 and "JSON object" in str(bad.exception)
