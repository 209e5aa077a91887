"""Checkpoint convergence: Jaccard against the final checkpoint on tiny random GPT-2s (the final row is 1, an
identical checkpoint scores 1), the plot, and ``itda convergence`` writing HTML + CSV + JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from itda_core.cli.app import app
from itda_core.errors import ITDAError
from itda_core.similarity.convergence import (
    ConvergenceConfig,
    checkpoint_convergence,
    checkpoint_label,
    convergence_figure,
)
from tests.tiny import TEXTS, tiny_corpus, tiny_model

FAST = ConvergenceConfig(tokens=1_000, k=4, seq_len=64, batch_size=8)


def test_convergence_values():
    early, final = tiny_model("gpt2", seed=1, n_layers=3), tiny_model("gpt2", seed=0, n_layers=3)
    result = checkpoint_convergence(["a/step10", "b/step20", "c/final"], FAST, corpus=tiny_corpus(4),
                                    loaded=[early, final, final])
    frame = result.to_frame()
    assert list(frame.index) == ["step10", "step20", "final"]
    assert list(frame.columns) == [0, 1, 2]
    # Jaccard = shared / union of exact counts: exactly 1.0 for identical atom sets (and the final row is 1.0)
    assert (frame.loc["final"] == 1.0).all()
    assert (frame.loc["step20"] == 1.0).all()  # the same weights give the same dictionaries
    assert (frame.loc["step10"] < 1.0).all() and (frame.loc["step10"] >= 0.0).all()
    fig = convergence_figure(result)
    assert len(fig.data) == 3 and list(fig.data[0].x) == [10, 20, 25]  # final placed after the last step
    json.dumps(result.to_dict())
    assert list(convergence_figure(result, steps=[10, 20, 100]).data[0].x) == [10, 20, 100]


def test_labels_and_errors():
    assert checkpoint_label("data/seed_models/seed1/step500") == "step500"
    assert checkpoint_label("EleutherAI/pythia-70m@step1000") == "step1000"
    with pytest.raises(ITDAError, match="at least two"):
        checkpoint_convergence(["only"], FAST)
    with pytest.raises(ITDAError, match="layers"):
        checkpoint_convergence(["a", "b"], FAST, corpus=tiny_corpus(),
                               loaded=[tiny_model("gpt2", n_layers=2), tiny_model("gpt2", n_layers=3)])


def test_cli_convergence(tmp_path):
    folders = []
    for i, seed in enumerate((3, 0)):
        made = tiny_model("gpt2", seed=seed, n_layers=2)
        folder = tmp_path / ("final" if i else "step5")
        made.model.save_pretrained(folder)
        made.tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(TEXTS * 3))
    out = tmp_path / "conv" / "plot.html"
    res = CliRunner().invoke(app, ["convergence", "--checkpoints", *folders, "--tokens", "400", "--k", "4",
                                   "--corpus", str(text), "--split", "all", "--device", "cpu", "--no-progress",
                                   "--steps", "5,9", "--no-png", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "plotly" in out.read_text()[:100_000].lower()
    assert out.with_suffix(".csv").read_text().startswith("checkpoint,0,1")
    assert json.loads(out.with_suffix(".json").read_text())["labels"] == ["step5", "final"]
    bad = CliRunner().invoke(app, ["convergence", "--checkpoints", *folders, "--steps", "5"])
    assert bad.exit_code != 0 and "--steps has 1 values" in str(bad.exception)


def test_hub_revision_is_split_and_passed_to_transformers(monkeypatch, tmp_path):
    """`id@revision` (e.g. Pythia's step branches) reaches every from_pretrained call; a folder whose name
    holds an @ stays a folder."""
    import transformers

    from itda_core.models import load_model
    from itda_core.similarity.convergence import _split

    assert _split("EleutherAI/pythia-70m@step1000") == ("EleutherAI/pythia-70m", "step1000")
    folder = tmp_path / "run@2"
    folder.mkdir()
    assert _split(str(folder)) == (str(folder), None)

    seen: list[tuple[str, str | None]] = []

    def fake(kind):
        def from_pretrained(name, *args, **kwargs):
            seen.append((kind, kwargs.get("revision")))
            raise OSError("no network here")

        return from_pretrained

    import itda_core.models.loading

    # the id is not cached and the tests run offline: pass the hub check (looked up in loading), to reach
    # from_pretrained
    monkeypatch.setattr(itda_core.models.loading, "check_hub_id", lambda name, revision=None: None)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake("config"))
    with pytest.raises(ITDAError, match="could not load model"):
        load_model("EleutherAI/pythia-70m", device="cpu", revision="step1000")
    assert seen == [("config", "step1000")]
