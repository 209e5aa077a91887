"""The sweep over dictionary sizes and k, its plot and the saved figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from itda_core.corpus import Corpus
from itda_core.evaluation import default_sizes, evaluate, plot_sweep, save_figure, sweep
from itda_core.models import LoadedModel
from tests.evaluation.helpers import LAYER, exact_itda, perfect_reconstruction_tol


# ---- sweep -------------------------------------------------------------------------------------------
def test_sweep_grid(llama: LoadedModel, docs: Corpus, tmp_path: Path) -> None:
    itda = exact_itda(llama, docs)
    df = sweep(llama, itda, docs, ks=(1, 2, 4), max_tokens=80)
    sizes = default_sizes(len(itda))
    assert len(sizes) == 3 and sizes[-1] == len(itda)
    assert len(df) == len(sizes) * 3
    assert sorted(set(df["dictionary_size"])) == sizes and sorted(set(df["k"])) == [1, 2, 4]
    assert df["ce_clean"].nunique() == 1 and df["ce_zero"].nunique() == 1  # computed once
    assert (df["dictionary_full_size"] == len(itda)).all()
    full = df[(df["dictionary_size"] == len(itda)) & (df["k"] == 1)].iloc[0]
    ce = perfect_reconstruction_tol(llama, docs, 80)["ce"]
    assert full["ce_loss_score"] == pytest.approx(1.0, abs=ce / abs(full["ce_clean"] - full["ce_zero"]))
    # the k=1 full-size row agrees with a plain evaluation: the same batches, dictionary and k run the very
    # same computation, bit for bit
    single = evaluate(llama, itda, docs, k=1, max_tokens=80)
    assert full["ce_spliced"] == single.ce_spliced
    fig = plot_sweep(df)
    assert len(fig.data) == len(sizes)
    written, message = save_figure(fig, tmp_path / "sweep")
    assert (tmp_path / "sweep.html").is_file()
    assert (tmp_path / "sweep.png").is_file() or (message and "PNG" in message)
    assert written[0] == tmp_path / "sweep.html"


def test_sweep_on_encoder_plots_fvu(bert: LoadedModel, docs: Corpus) -> None:
    from itda_core.trainer import train

    itda = train(bert, docs, layers=[LAYER], k=4, max_tokens=None, progress=False)[LAYER]
    df = sweep(bert, itda, docs, ks=(2, 4), sizes=[len(itda)], max_tokens=60)
    assert len(df) == 2 and df["ce_loss_score"].isna().all()
    assert "variance" in plot_sweep(df).layout.yaxis.title.text
