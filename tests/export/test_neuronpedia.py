"""The Neuronpedia export: feature batches of a dictionary of the tiny indexed store, checked against its
tables (density, top contexts, quantile samples, codes, histograms) and rebuilt with the neuronpedia client's
own dataclasses and ``FeatureRequest.upload_batch`` (SAEDashboard's ``NeuronpediaDashboardBatch`` where it
can be imported)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from itda_core.decompose import logit_effect
from itda_core.errors import ITDAError
from itda_core.export.neuronpedia import export_neuronpedia
from itda_core.models import load_model
from itda_core.store.connection import connect_readonly, connect_write
from itda_core.store.queries import atom_vectors
from tests.stores import build_tiny_store

TOP_N = 3
# NeuronpediaDashboardFeature.to_dict's keys (sae_dashboard/neuronpedia/neuronpedia_dashboard.py, 0.8.0)
DASHBOARD_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson", "neg_str", "neg_values",
    "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt",
    "dataset", "decoder_weights_dist", "activations", "vector",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tests' tiny indexed store (a Llama and a BERT, every layer indexed with its codes)."""
    return build_tiny_store(tmp_path_factory.mktemp("np-store"), atom_map=False)


def _rows(store: Path, sql: str) -> list[tuple]:
    with connect_readonly(store) as con:
        return con.execute(sql).fetchall()


def _features(out: Path) -> list[dict]:
    batches = sorted(out.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [f for p in batches for f in json.loads(p.read_text(encoding="utf-8"))["features"]]


def _doc_positions(store: Path, dict_id: int) -> dict[int, list[int]]:
    """Every document's stored token positions under the dictionary's tokenisation."""
    out: dict[int, list[int]] = {}
    for doc, pos in _rows(store, f"""
            SELECT t.doc_id, t.position FROM tokens t JOIN dictionaries d ON t.tokenizer_id = d.tokenizer_id
            AND t.seq_len = d.seq_len AND t.corpus_id = d.corpus_id
            WHERE d.dict_id = {dict_id} ORDER BY t.doc_id, t.position"""):
        out.setdefault(doc, []).append(pos)
    return out


def test_api_batches_match_the_store(tiny, tmp_path):
    store, dict_id = tiny["path"], tiny["ids"][("llama", 1)]
    out = export_neuronpedia(store, dict_id, tmp_path / "np", top_n=TOP_N, quantiles=True, batch_size=50)
    n_atoms = _rows(store, f"SELECT n_atoms FROM dictionaries WHERE dict_id = {dict_id}")[0][0]
    assert sorted(p.name for p in out.iterdir()) == [f"batch-{i}.json" for i in range(-(-n_atoms // 50))] + [
        "itda-export.json"]
    first = json.loads((out / "batch-0.json").read_text())
    assert (first["modelId"], first["source"], len(first["features"])) == ("tiny-llama", "1-itda-res", 50)
    features = _features(out)
    assert [f["index"] for f in features] == list(range(n_atoms))
    density = dict(_rows(store, f"SELECT atom, density FROM atom_stats WHERE dict_id = {dict_id}"))
    assert all(f["density"] == pytest.approx(density[f["index"]], abs=1e-12) for f in features)
    codes: dict[tuple[int, int, int], float] = {}
    for atom, doc, pos, coef in _rows(store, f"SELECT atom, doc_id, position, coef FROM codes "
                                             f"WHERE dict_id = {dict_id}"):
        codes[(atom, doc, pos)] = coef
    tops = _rows(store, f"SELECT atom, rank, doc_id, position, coef FROM atom_top_contexts "
                        f"WHERE dict_id = {dict_id} AND rank <= {TOP_N} ORDER BY atom, rank")
    quants = _rows(store, f"SELECT q.atom, q.bin_lo, q.bin_hi, q.bin_count / s.n_active, q.doc_id, q.position, q.coef "
                          f"FROM atom_quantiles q JOIN atom_stats s USING (dict_id, atom) WHERE q.dict_id = {dict_id} "
                          "ORDER BY q.atom, q.bin DESC, q.coef DESC, q.doc_id, q.position")
    expected: dict[int, list[tuple]] = {}
    for atom, _, doc, pos, coef in tops:
        expected.setdefault(atom, []).append((None, None, None, doc, pos, coef))
    for atom, lo, hi, frac, doc, pos, coef in quants:
        expected.setdefault(atom, []).append((lo, hi, frac, doc, pos, coef))
    texts = dict(_rows(store, "SELECT doc_id, text FROM documents"))
    doc_positions = _doc_positions(store, dict_id)
    source_tokens = dict(_rows(store, f"SELECT atom, token_text FROM atoms WHERE dict_id = {dict_id}"))
    for f in features:
        want = expected.get(f["index"], [])
        assert len(f["activations"]) == len(want)
        for act, (lo, hi, frac, doc, pos, coef) in zip(f["activations"], want, strict=True):
            assert (act["quantileMin"], act["quantileMax"]) == (lo, hi)
            assert act["quantileFraction"] == (None if frac is None else pytest.approx(frac))
            positions = doc_positions[doc]  # window None: the whole document
            assert len(act["tokens"]) == len(act["values"]) == len(positions)
            assert texts[doc].startswith("".join(act["tokens"]).removeprefix("<bos>"))
            hit = positions.index(pos)
            assert act["values"][hit] == pytest.approx(coef)
            assert act["values"] == pytest.approx([coef if p == pos else codes.get((f["index"], doc, p), 0.0)
                                                   for p in positions])
        token = source_tokens[f["index"]]
        text = f["explanations"][0]["text"]
        assert text.startswith("source: ") and (f"«{token.strip()}»" in text or not token.strip())
        assert f["explanations"][0]["methodName"] == "itda-source"
        assert f["topLogits"] is None and f["bottomLogits"] is None
    meta = json.loads((out / "itda-export.json").read_text())
    assert meta["logits"].startswith("omitted: no model") and meta["n_features"] == n_atoms


def test_records_rebuild_with_the_neuronpedia_client(tiny, tmp_path, monkeypatch):
    pytest.importorskip("neuronpedia", reason="the neuronpedia client is not installed")
    from neuronpedia.np_activation import Activation
    from neuronpedia.np_explanation import Explanation
    from neuronpedia.np_feature import Feature, Logit
    from neuronpedia.requests.feature_request import MAX_FEATURES_PER_BATCH, FeatureRequest

    dict_id = tiny["ids"][("llama", 0)]
    model = load_model(tiny["names"]["llama"], device="cpu")
    out = export_neuronpedia(tiny["path"], dict_id, tmp_path / "np", top_n=TOP_N, window=4, model=model)
    sent = []
    monkeypatch.setattr(FeatureRequest, "send_request", lambda self, method, uri, json=None: sent.append(json))
    for path in sorted(out.glob("batch-*.json")):
        batch = json.loads(path.read_text(encoding="utf-8"))
        assert len(batch["features"]) <= MAX_FEATURES_PER_BATCH
        m, s = batch["modelId"], batch["source"]
        features = [Feature(
            modelId=m, source=s, index=f["index"], density=f["density"],
            top_logits=[Logit(**x) for x in f["topLogits"]], bottom_logits=[Logit(**x) for x in f["bottomLogits"]],
            explanations=[Explanation(modelId=m, source=s, index=f["index"], text=e["text"], method=e["methodName"],
                                      explainer_model=e["modelName"]) for e in f["explanations"]],
            activations=[Activation(modelId=m, source=s, index=f["index"], **a) for a in f["activations"]],
        ) for f in batch["features"]]
        FeatureRequest(api_key="test").upload_batch(m, s, features)
        assert sent[-1] == batch  # exactly what the client would post


def test_logits_come_from_the_models_unembedding(tiny, tmp_path):
    store, dict_id = tiny["path"], tiny["ids"][("llama", 2)]
    model = load_model(tiny["names"]["llama"], device="cpu")
    out = export_neuronpedia(store, dict_id, tmp_path / "np", model=lambda name: load_model(name, device="cpu"),
                             n_logits=5)
    features = _features(out)
    with connect_readonly(store) as con:
        vectors = atom_vectors(con, dict_id)
    for f in features[:10]:
        effect = logit_effect(model, vectors[f["index"]].copy(), top=5)
        assert [x["value"] for x in f["topLogits"]] == pytest.approx(effect["promoted"]["logit"].tolist())
        assert [x["token"] for x in f["bottomLogits"]] == [model.tokenizer.decode([int(i)])
                                                          for i in effect["suppressed"]["token_id"]]
    assert json.loads((out / "itda-export.json").read_text())["logits"].startswith("included")
    bert_dict = tiny["ids"][("bert", 1)]
    bert = load_model(tiny["names"]["bert"], device="cpu")
    out = export_neuronpedia(store, bert_dict, tmp_path / "bert", model=bert)
    assert all(f["topLogits"] is None for f in _features(out))
    assert "no LM head" in json.loads((out / "itda-export.json").read_text())["logits"]
    with pytest.raises(ITDAError, match="is not dictionary"):
        export_neuronpedia(store, bert_dict, tmp_path / "wrong", model=model)


def test_saedashboard_batches(tiny, tmp_path):
    store, dict_id = tiny["path"], tiny["ids"][("bert", 0)]
    out = export_neuronpedia(store, dict_id, tmp_path / "sd", format="saedashboard", top_n=TOP_N,
                             window=3, include_vectors=True, source_set="itda-res-k4")
    batch = json.loads((out / "batch-0.json").read_text())
    assert (batch["model_id"], batch["layer"], batch["sae_set"], batch["sae_id_suffix"]) == ("tiny-bert", 0,
                                                                                              "itda-res-k4", None)
    features = _features(out)
    stats = {a: (d, n, mx) for a, d, n, mx in _rows(
        store, f"SELECT atom, density, n_active, max_coef FROM atom_stats WHERE dict_id = {dict_id}")}
    tops = {}
    for atom, coef in _rows(store, f"SELECT atom, coef FROM atom_top_contexts WHERE dict_id = {dict_id} "
                                   f"AND rank <= {TOP_N} ORDER BY atom, rank"):
        tops.setdefault(atom, []).append(coef)
    hist = {}
    for atom, lo, hi, count in _rows(store, f"SELECT atom, lo, hi, count FROM atom_histograms "
                                            f"WHERE dict_id = {dict_id} ORDER BY atom, bin"):
        hist.setdefault(atom, []).append(((lo + hi) / 2, count))
    with connect_readonly(store) as con:
        vectors = atom_vectors(con, dict_id)
    for f in features:
        assert set(f) == DASHBOARD_KEYS
        density, n_active, max_coef = stats[f["feature_index"]]
        assert f["frac_nonzero"] == pytest.approx(density) and f["pos_str"] == [] == f["neg_values"]
        assert f["vector"] == pytest.approx(vectors[f["feature_index"]].tolist())
        assert [(a["bin_min"], a["bin_contains"]) for a in f["activations"]] == [(-1, -1)] * len(f["activations"])
        assert [a["values"][a["qualifying_token_index"]] for a in f["activations"]] == pytest.approx(
            tops.get(f["feature_index"], []))
        assert all(a["bin_max"] == pytest.approx(max_coef) and len(a["tokens"]) <= 7 for a in f["activations"])
        want = hist.get(f["feature_index"], [])
        assert f["freq_hist_data_bar_values"] == pytest.approx([mid for mid, _ in want])
        assert f["freq_hist_data_bar_heights"] == [count for _, count in want]
        assert sum(f["freq_hist_data_bar_heights"]) == n_active
    explanations = json.loads((out / "explanations.json").read_text())
    assert [e["index"] for e in explanations] == [f["feature_index"] for f in features]
    dashboard = pytest.importorskip("sae_dashboard.neuronpedia.neuronpedia_dashboard",
                                    reason="sae-dashboard is not importable here")
    assert dashboard.NeuronpediaDashboardBatch(**batch).to_dict() == batch


def _copy(tiny, tmp_path: Path, *sql: str) -> Path:
    store = tmp_path / "copy.duckdb"
    shutil.copy(tiny["path"], store)
    with connect_write(store) as con:
        for statement in sql:
            con.execute(statement)
    return store


def test_without_codes_only_the_hit_carries_a_value(tiny, tmp_path):
    dict_id = tiny["ids"][("llama", 1)]
    store = _copy(tiny, tmp_path, f"DELETE FROM codes WHERE dict_id = {dict_id}",
                  f"UPDATE index_runs SET codes_kept = false WHERE dict_id = {dict_id}")
    out = export_neuronpedia(store, dict_id, tmp_path / "np", top_n=TOP_N)
    acts = [a for f in _features(out) for a in f["activations"]]
    assert acts and all(sum(v != 0 for v in a["values"]) <= 1 for a in acts)
    assert "only the hit" in json.loads((out / "itda-export.json").read_text())["values"]


def test_bad_input_is_one_line(tiny, tmp_path):
    dict_id = tiny["ids"][("llama", 1)]
    with pytest.raises(ITDAError, match="no dictionary 999"):
        export_neuronpedia(tiny["path"], 999, tmp_path / "a")
    with pytest.raises(ITDAError, match="batch_size"):
        export_neuronpedia(tiny["path"], dict_id, tmp_path / "a", batch_size=129)
    with pytest.raises(ITDAError, match="unknown Neuronpedia format"):
        export_neuronpedia(tiny["path"], dict_id, tmp_path / "a", format="html")  # type: ignore[arg-type]
    store = _copy(tiny, tmp_path, f"DELETE FROM index_runs WHERE dict_id = {dict_id}")
    with pytest.raises(ITDAError, match="run itda index first"):
        export_neuronpedia(store, dict_id, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ITDAError, match="not empty: pass overwrite=True"):
        export_neuronpedia(tiny["path"], dict_id, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_neuronpedia(tiny["path"], dict_id, out, overwrite=True, top_n=1)
    assert not (out / "keep.txt").exists() and (out / "batch-0.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.duckdb", "full"]  # no temporary folder left
