"""``itda index`` writes each dictionary's FVU, cosine and MSE on the held-out tokens it encodes (special tokens
and each document's first position left out): metrics.py's figures on those very tokens, and
``itda eval --store --exclude-first``'s when both read the whole held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from itda_core.errors import ITDAError
from itda_core.evaluation.ce_score import special_token_ids
from itda_core.evaluation.metrics import ReconstructionStats
from itda_core.extraction import extract
from itda_core.jobs.evaluation import StoreEvalConfig, evaluate_store
from itda_core.jobs.index import IndexConfig, index_model, spread
from itda_core.store.connection import connect_readonly
from itda_core.store.held_out import held_out_documents
from itda_core.store.reader import read_dictionary
from tests.evaluation.helpers import F64, variance_ratio
from tests.stores import tiny_llama_store
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import cosine_tol, forward_tol, gamma, mean_tol, mp_tol

LAYERS = [1, 2]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Llama (it adds a BOS token) with dictionaries of layers 1 and 2, indexed on every held-out token."""
    built = tiny_llama_store(tmp_path_factory.mktemp("indexquality"), LAYERS)
    store, model = built["path"], built["model"]
    index_model(store, model, IndexConfig(max_tokens=None, progress=False, encode_chunk=37))  # uneven chunks
    return built


def _figures(store: Path, dict_id: int, source: str | None = "index") -> dict[str, tuple]:
    """metric -> (value, corpus_id, n_tokens, details) of one dictionary's rows of ``source``."""
    with connect_readonly(store) as con:
        rows = con.execute(
            "SELECT metric, value, corpus_id, n_tokens, details FROM evaluations WHERE dict_id = ?", [dict_id]
        ).fetchall()
    out = {}
    for metric, value, corpus_id, n, details in rows:
        d = json.loads(details)
        if d.get("source", "eval") == (source or "eval"):
            out[metric] = (value, corpus_id, n, d)
    return out


def _held_out_rows(indexed: dict, layer: int) -> tuple[torch.Tensor, int]:
    """The activations the index encoded (its order), only the non-special tokens; and how many rows in all."""
    model = indexed["model"]
    docs = spread(held_out_documents(indexed["path"], "tiny-v1"))
    batches = list(extract(model, docs, [layer], 128, 32, max_tokens=None, progress=False))
    x = torch.cat([b.acts[layer] for b in batches]).float()
    tokens = torch.cat([b.provenance.token_id for b in batches])
    positions = torch.cat([b.provenance.position for b in batches])
    counted = ~torch.isin(tokens, torch.tensor(special_token_ids(model.tokenizer))) & (positions > 0)
    return x[counted], len(x)


def test_index_writes_quality_rows(indexed: dict) -> None:
    model = indexed["model"]
    for layer in LAYERS:
        rows = _figures(indexed["path"], indexed["ids"][layer])
        assert set(rows) == {"fvu", "cosine", "mse"}
        x, n_rows = _held_out_rows(indexed, layer)
        for _value, corpus_id, n_tokens, details in rows.values():
            assert corpus_id == indexed["held"].corpus_id  # the held-out split's id, as itda eval names it
            assert n_tokens == details["tokens"] == len(x) < n_rows == details["indexed_tokens"]  # BOS left out
            assert details["k"] == 4 and details["excluded"] == n_rows - len(x) and details["exclude_first"]
        assert 0 < rows["fvu"][0] < 1 and 0 < rows["cosine"][0] < 1  # an imperfect reconstruction of real text
        assert model.tokenizer.bos_token_id in special_token_ids(model.tokenizer)


def test_index_figures_are_metrics_on_the_same_tokens(indexed: dict) -> None:
    """The stored figures are ReconstructionStats' on the indexed non-special tokens, encoded in one call."""
    for layer in LAYERS:
        x, _ = _held_out_rows(indexed, layer)
        with connect_readonly(indexed["path"]) as con:
            itda = read_dictionary(con, indexed["ids"][layer])
        idx, coef = itda.encode(x, 4)
        stats = ReconstructionStats(n_atoms=len(itda))
        stats.update(x, itda.decode(idx, coef))
        want = stats.result()
        rows = _figures(indexed["path"], indexed["ids"][layer])
        n, d = x.shape
        # the index encodes in chunks of 37 rows with the BOS rows among them: each reconstruction may differ by
        # mp_tol |x| from the one-call one, so |x - x_hat|^2 by 2 mp_tol |x|^2 per token (|x - x_hat| <= |x|),
        # FVU by that over the total variance (rho = sum |x|^2 / variance), plus float64 sums
        rel = mp_tol(d, 4)
        fvu_tol = 3 * rel * variance_ratio(x) + 2 * gamma(n * d + 2, F64) * (1 + variance_ratio(x))
        assert rows["fvu"][0] == pytest.approx(want["fvu"], abs=fvu_tol)
        assert rows["cosine"][0] == pytest.approx(want["cosine"], abs=2 * rel + cosine_tol(d, F64) + mean_tol(n, F64))


def test_index_figures_agree_with_eval_and_neither_deletes_the_other(indexed: dict) -> None:
    store, model = indexed["path"], indexed["model"]
    # the whole held-out split, as the index read it, without each document's first position, as the index counts
    config = StoreEvalConfig(max_tokens=None, progress=False, exclude_first=True)
    report = evaluate_store(store, model.name, LAYERS, config, loader=lambda _n: model)
    assert sorted(report.results) == sorted(indexed["ids"].values())
    cfg = model.model.config
    for layer in LAYERS:
        d_id = indexed["ids"][layer]
        ours, theirs = _figures(store, d_id), _figures(store, d_id, source=None)
        assert set(ours) == {"fvu", "cosine", "mse"}, "itda eval deleted the index's figures"
        result = report.results[d_id][0]
        assert ours["fvu"][2] == result.tokens  # the same tokens counted
        assert ours["fvu"][1] == theirs["fvu"][1] == result.corpus_id
        x, _ = _held_out_rows(indexed, layer)
        n, d = x.shape
        # the eval's forward runs other batches (other padding) through the whole model: each activation is
        # within forward_tol of the index's (relative), so each reconstruction within that plus MP's rounding
        rel = 2 * forward_tol(layer + 1, d, cfg.intermediate_size, 128) + 2 * mp_tol(d, 4)
        rho = variance_ratio(x)
        fvu_tol = 4 * rel * rho * (1 + result.fvu) + 4 * gamma(n * d + 2, F64) * (1 + rho)
        assert ours["fvu"][0] == pytest.approx(result.fvu, abs=fvu_tol)
        cos_tol = 4 * rel + 2 * cosine_tol(d, F64) + mean_tol(n, F64)
        assert ours["cosine"][0] == pytest.approx(result.cosine, abs=cos_tol)
        assert theirs["fvu"][0] == result.fvu and "ce_loss_score:saebench" in theirs
    # a re-index replaces its own rows and keeps eval's
    index_model(store, model, IndexConfig(max_tokens=None, progress=False, reindex=True))
    for layer in LAYERS:
        d_id = indexed["ids"][layer]
        assert set(_figures(store, d_id)) == {"fvu", "cosine", "mse"}
        assert "ce_loss_score:saebench" in _figures(store, d_id, source=None)
    with connect_readonly(store) as con:
        n_rows = con.execute("SELECT count(*) FROM evaluations WHERE metric = 'fvu'").fetchall()[0][0]
    assert n_rows == 2 * len(LAYERS)  # one of each source per dictionary: nothing piled up


def test_the_first_position_is_left_out_without_bos(tmp_path: Path) -> None:
    """A model without BOS (GPT-2) has a real token at position 0, the attention sink: it is not counted; a model
    with BOS has the BOS there, special anyway; the other positions count unless special."""
    from itda_core.jobs.index_quality import counted_rows

    gpt2 = tiny_model("gpt2")
    assert gpt2.tokenizer("hello world")["input_ids"][0] not in special_token_ids(gpt2.tokenizer)
    tokens = gpt2.tokenizer("hello world and more")["input_ids"]
    positions = list(range(len(tokens)))
    counted = counted_rows(gpt2, torch.tensor(tokens + tokens).numpy(), torch.tensor(positions + positions).numpy())
    assert counted.tolist() == [p > 0 for p in positions + positions]
    special = special_token_ids(gpt2.tokenizer)[0]
    assert counted_rows(gpt2, torch.tensor([tokens[0], special]).numpy(), torch.tensor([1, 2]).numpy()).tolist() \
        == [True, False]


def test_ce_layers_of() -> None:
    from itda_core.jobs.demo import ce_layers_of

    for n in (1, 2, 3, 12, 18, 30):
        for count in (0, 1, 3, 5):
            layers = ce_layers_of(n, count)
            assert layers == sorted(set(layers)) and all(0 <= layer < n for layer in layers)
            assert len(layers) == min(count, n)
    assert ce_layers_of(30, 3) == [7, 14, 22]  # the quartiles of 0..29
    assert ce_layers_of(3, 1) == [1]


def test_demo_scores_a_few_layers_of_causal_models(tmp_path: Path) -> None:
    from itda_core.jobs.demo import DemoConfig, build_demo, score_layers

    models = {"tiny-llama": ("llama", 3), "tiny-bert": ("bert", 2)}
    lines: list[str] = []
    config = DemoConfig(store=tmp_path / "itda.duckdb", models=list(models), train_documents=10, index_tokens=150,
                        held_out_fraction=0.25, k=4, batch_size=8, progress=False, atom_maps=False, ce_layers=1,
                        ce_tokens=60, loader=lambda name: tiny_model(models[name][0], n_layers=models[name][1]),
                        corpus=tiny_corpus(n_copies=4), log=lines.append)  # fmt: skip
    report = build_demo(config)
    assert [m.ce_scored for m in report.models] == [1, 0]
    with connect_readonly(config.store) as con:
        rows = con.execute(
            "SELECT d.model_name, d.layer, e.metric, e.n_tokens, json_extract_string(e.details, '$.source') "
            "FROM evaluations e JOIN dictionaries d USING (dict_id)"
        ).fetchall()
    ce = [(name, layer, n) for name, layer, metric, n, _ in rows if metric == "ce_loss_score:saebench"]
    assert ce == [("tiny-llama", 1, 60)]  # the middle layer only, on the budget's tokens
    with connect_readonly(config.store) as con:
        flags = con.execute("SELECT DISTINCT json_extract_string(details, '$.exclude_first') FROM evaluations "
                            "WHERE metric = 'ce_loss_score:saebench'").fetchall()
    assert flags == [("true",)]  # as the index's figures: first positions left out
    fvu = sorted((name, layer) for name, layer, metric, _, source in rows if metric == "fvu" and source == "index")
    assert fvu == [("tiny-bert", 0), ("tiny-bert", 1), ("tiny-llama", 0), ("tiny-llama", 1), ("tiny-llama", 2)]
    assert any("an encoder, so no CE loss score" in line for line in lines)
    # scored layers are not scored again
    assert score_layers(config, tiny_model("llama", n_layers=3), "again") == 0
    with pytest.raises(ITDAError, match="ce-tokens"):
        DemoConfig(ce_tokens=0)
