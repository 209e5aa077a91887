"""The `itda eval` command: a single evaluation, a sweep, and its errors and help."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from itda_core.evaluation import default_sizes
from tests.evaluation.helpers import LAYER
from tests.tiny import TEXTS, tiny_model


# ---- command line -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama saved to a folder, a .txt corpus, and a dictionary trained on its training split."""
    from itda_core.corpus import load_corpus
    from itda_core.models import load_model
    from itda_core.trainer import train

    root = tmp_path_factory.mktemp("eval_cli")
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    corpus_file = root / "corpus.txt"
    corpus_file.write_text("\n".join(f"{t} ({c})" for c in range(3) for t in TEXTS) + "\n")
    lm = load_model(str(root / "model"), device="cpu")
    train_part, _ = load_corpus(str(corpus_file)).split(0.25)
    itda = train(lm, train_part, layers=[LAYER], k=4, max_tokens=None, progress=False)[LAYER]
    itda.save(root / "dicts" / itda.config.site)
    return {
        "root": root,
        "model": root / "model",
        "corpus": corpus_file,
        "dictionary": root / "dicts" / itda.config.site,
    }


def cli() -> typer.Typer:
    from itda_core.cli.evaluate import register

    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so that typer keeps "eval" as a sub-command
        """Unused."""

    return app


def test_cli_eval_writes_results(saved: dict[str, Path]) -> None:
    out = saved["root"] / "results.json"
    args = [
        "eval",
        "--dictionary",
        str(saved["dictionary"]),
        "--corpus",
        str(saved["corpus"]),
        "--held-out",
        "0.25",
        "--max-tokens",
        "200",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert math.isfinite(data["ce_loss_score"]) and data["k"] == 4
    assert data["ce_rule"] == "saebench"  # the default, recorded with the figure
    assert data["corpus_id"].endswith(data["dictionary_corpus_id"].split(":train:")[-1])
    assert "CE loss score" in res.output and "warning" not in res.output


def test_cli_eval_sweep(saved: dict[str, Path]) -> None:
    out = saved["root"] / "sweep.json"
    args = [
        "eval",
        "--dictionary",
        str(saved["dictionary"]),
        "--model",
        str(saved["model"]),
        "--corpus",
        str(saved["corpus"]),
        "--held-out",
        "0.25",
        "--k",
        "2",
        "--max-tokens",
        "100",
        "--sweep",
        "--ks",
        "1,3",
        "--ce-rule",
        "skip-special",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * len(default_sizes(rows[0]["dictionary_full_size"]))
    assert {r["ce_rule"] for r in rows} == {"skip-special"}
    assert (saved["root"] / "sweep_sweep.html").is_file()


def test_cli_eval_errors_and_help(saved: dict[str, Path]) -> None:
    res = CliRunner().invoke(cli(), ["eval", "--dictionary", str(saved["root"] / "dicts"), "--device", "cpu"])
    assert res.exit_code != 0 and "holds 1 dictionaries" in str(res.exception)
    res = CliRunner().invoke(cli(), ["eval", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for option in (
        "--dictionary",
        "--model",
        "--corpus",
        "--held-out",
        "--k",
        "--max-tokens",
        "--sweep",
        "--ks",
        "--sizes",
        "--out",
        "--plot",
        "--seq-len",
        "--batch-size",
        "--ce-rule",
        "--exclude-first",
        "--device",
    ):
        assert option in res.output, option
    assert "'saebench'" in res.output and "'splice-special'" in res.output and "'skip-special'" in res.output
    res = CliRunner().invoke(cli(), ["eval", "--dictionary", str(saved["dictionary"]), "--ce-rule", "paper"])
    assert res.exit_code != 0 and "paper" in res.output  # not one of the choices
