"""The delphi export: the latent cache of a dictionary of the tiny indexed store, checked against its codes and
tokens tables, in the layout delphi 0.1.3's cache writer and loader use (read back with delphi's own
``LatentDataset`` / ``TensorBuffer`` where delphi can be imported)."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from itda_core.errors import ITDAError
from itda_core.export import delphi as D
from itda_core.store.connection import connect_readonly, connect_write
from tests.stores import build_tiny_store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tests' tiny indexed store (a Llama and a BERT, every layer indexed with its codes)."""
    return build_tiny_store(tmp_path_factory.mktemp("delphi-store"), atom_map=False)


def _store(tiny, sql: str) -> list[tuple]:
    with connect_readonly(tiny["path"]) as con:
        return con.execute(sql).fetchall()


def _codes(tiny, dict_id: int) -> list[tuple[int, int, int, float, int]]:
    """(doc_id, position, atom, coef, token_id) of every code with |coef| > 1e-5, from the store."""
    return _store(tiny, f"""
        SELECT c.doc_id, c.position, c.atom, c.coef, t.token_id FROM codes c
        JOIN dictionaries d USING (dict_id)
        JOIN tokens t ON t.tokenizer_id = d.tokenizer_id AND t.seq_len = d.seq_len AND t.corpus_id = d.corpus_id
                     AND t.doc_id = c.doc_id AND t.position = c.position
        WHERE c.dict_id = {dict_id} AND abs(c.coef) > 1e-5""")


def _cache(module: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """config, tokens, locations (latent absolute), activations and the (start, end) of each file."""
    config = json.loads((module / "config.json").read_text())
    edges = sorted(tuple(int(x) for x in p.stem.split("_")) for p in module.glob("*.safetensors"))
    locs, acts, tokens = [], [], None
    for start, end in edges:
        data = load_file(str(module / f"{start}_{end}.safetensors"))
        assert set(data) == {"locations", "activations", "tokens"}
        assert data["locations"].dtype in (np.uint16, np.uint32) and data["activations"].dtype == np.float16
        assert data["tokens"].dtype == np.int64
        loc = data["locations"].astype(np.int64)
        assert loc.shape[1:] == (3,) and len(loc) == len(data["activations"])
        assert (loc[:, 2] <= end - start).all()
        loc[:, 2] += start
        locs.append(loc)
        acts.append(data["activations"].astype(np.float64))
        assert tokens is None or np.array_equal(tokens, data["tokens"])
        tokens = data["tokens"]
    return config, tokens, np.concatenate(locs), np.concatenate(acts), edges


def test_split_cache_holds_every_code(tiny, tmp_path):
    dict_id = tiny["ids"][("llama", 1)]
    module = D.export_delphi(tiny["path"], dict_id, tmp_path / "latents")
    assert module == tmp_path / "latents" / "layers.1"
    assert sorted(p.name for p in module.parent.iterdir()) == ["layers.1"]  # delphi lists its entries as modules
    config, tokens, locs, acts, edges = _cache(module)
    m = _store(tiny, f"SELECT n_atoms FROM dictionaries WHERE dict_id = {dict_id}")[0][0]
    bounds = torch.linspace(0, 2 * m, steps=6).long().tolist()  # delphi's _generate_split_indices, 5 splits
    assert edges == [(a, b - 1) for a, b in itertools.pairwise(bounds)]
    keys = {"dataset_repo", "dataset_split", "dataset_name", "dataset_column", "batch_size", "cache_ctx_len",
            "n_tokens", "n_splits", "model_name", "itda"}
    assert set(config) == keys and config["n_splits"] == 5 and config["model_name"] == tiny["names"]["llama"]
    assert tokens.shape == (config["batch_size"], config["cache_ctx_len"]) and config["n_tokens"] == tokens.size
    n_index = _store(tiny, f"SELECT n_tokens FROM index_runs WHERE dict_id = {dict_id}")[0][0]
    assert config["itda"]["n_tokens_cached"] == n_index <= tokens.size < n_index + tokens.shape[1]
    codes = _codes(tiny, dict_id)
    assert (acts > 0).all() and len(acts) == len(codes) == config["itda"]["n_entries"]
    # atom j with coef > 0 is latent j, with coef < 0 latent m + j, value |coef|: sums and counts per latent
    want_sum, want_n = Counter(), Counter()
    for _, _, atom, coef, _ in codes:
        want_sum[atom + m * (coef < 0)] += abs(coef)
        want_n[atom + m * (coef < 0)] += 1
    got_sum, got_n = Counter(), Counter(locs[:, 2].tolist())
    for latent, a in zip(locs[:, 2].tolist(), acts.tolist(), strict=True):
        got_sum[latent] += a
    assert got_n == want_n
    # float16 as delphi stores them: each value within eps16 / 2 of its own size, so a sum of positive values
    # within eps16 / 2 of the sum (the float64 sums here add nothing that matters); eps16 leaves a factor 2
    eps16 = float(np.finfo(np.float16).eps)
    assert all(abs(got_sum[k] - v) <= eps16 * v for k, v in want_sum.items())
    # each entry sits on the token its code came from
    got = Counter((int(tokens[r, c]), int(j)) for r, c, j in locs.tolist())
    assert got == Counter((tok, atom + m * (coef < 0)) for _, _, atom, coef, tok in codes)
    # the documents' tokens lie where config.itda.document_offsets says
    flat = tokens.reshape(-1)
    for doc_id, offset, n in config["itda"]["document_offsets"]:
        ids = [t for (t,) in _store(tiny, f"""
            SELECT t.token_id FROM tokens t JOIN dictionaries d ON t.tokenizer_id = d.tokenizer_id
            AND t.seq_len = d.seq_len AND t.corpus_id = d.corpus_id
            WHERE d.dict_id = {dict_id} AND t.doc_id = {doc_id} AND NOT (t.special AND d.skip_special_tokens)
            ORDER BY t.position""")]
        assert flat[offset : offset + n].tolist() == ids[:n] and n > 0


def test_positive_and_signed(tiny, tmp_path):
    dict_id = tiny["ids"][("bert", 0)]
    codes = _codes(tiny, dict_id)
    m = _store(tiny, f"SELECT n_atoms FROM dictionaries WHERE dict_id = {dict_id}")[0][0]
    positive = D.export_delphi(tiny["path"], dict_id, tmp_path / "pos", signs="positive")
    assert positive.name == "encoder.layer.0"
    config, _, _, acts, edges = _cache(positive)
    assert edges[-1][1] == m - 1 and config["itda"]["width"] == m
    assert (acts > 0).all() and len(acts) == sum(coef > 0 for *_, coef, _ in codes)
    signed = D.export_delphi(tiny["path"], dict_id, tmp_path / "signed", signs="signed", activation_dtype="float32",
                             n_splits=3, module="bert.encoder.layer.0")
    files = sorted(signed.glob("*.safetensors"))
    assert len(files) == 3 and signed.name == "bert.encoder.layer.0"
    got = Counter()
    for path in files:
        data, start = load_file(str(path)), int(path.stem.split("_")[0])
        assert data["activations"].dtype == np.float32
        for j, a in zip(data["locations"][:, 2].tolist(), data["activations"].tolist(), strict=True):
            got[j + start] += a
    want, size = Counter(), Counter()
    for _, _, atom, coef, _ in codes:
        want[atom] += coef
        size[atom] += abs(coef)
    # float32 values, each within eps32 / 2 of its coefficient's size: a signed sum within eps32 / 2 of the
    # sum of sizes; eps32 leaves a factor 2
    eps32 = float(np.finfo(np.float32).eps)
    assert set(got) == set(want) and all(abs(got[k] - v) <= eps32 * size[k] for k, v in want.items())


def test_documents_layout(tiny, tmp_path):
    dict_id = tiny["ids"][("llama", 0)]
    module = D.export_delphi(tiny["path"], dict_id, tmp_path / "docs", layout="documents")
    config, tokens, locs, _, _ = _cache(module)
    docs = config["itda"]["document_offsets"]
    assert tokens.shape[0] == len(docs) and tokens.shape[1] % 32 == 0
    for row, (doc_id, offset, n) in enumerate(docs):
        assert offset == row * tokens.shape[1]
        ids = [t for (t,) in _store(tiny, f"""
            SELECT t.token_id FROM tokens t JOIN dictionaries d ON t.tokenizer_id = d.tokenizer_id
            AND t.seq_len = d.seq_len AND t.corpus_id = d.corpus_id
            WHERE d.dict_id = {dict_id} AND t.doc_id = {doc_id} ORDER BY t.position""")]
        assert tokens[row, :n].tolist() == ids
    by_row = {row: doc_id for row, (doc_id, _, _) in enumerate(docs)}
    m = config["itda"]["n_atoms"]
    got = Counter((by_row[r], c, j % m) for r, c, j in locs.tolist())  # columns are positions
    assert got == Counter((d, p, a) for d, p, a, _, _ in _codes(tiny, dict_id))


def test_read_back_with_delphis_loader(tiny, tmp_path):
    loader = pytest.importorskip("delphi.latents.loader", reason="delphi (eai-delphi) is not importable here")
    from delphi.config import ConstructorConfig, SamplerConfig
    from transformers import AutoTokenizer

    dict_id = tiny["ids"][("llama", 1)]
    module = D.export_delphi(tiny["path"], dict_id, tmp_path / "latents")
    dataset = loader.LatentDataset(
        tmp_path / "latents", SamplerConfig(n_examples_train=2, n_examples_test=2, n_quantiles=2),
        ConstructorConfig(min_examples=1, n_non_activating=2, example_ctx_len=32),
        tokenizer=AutoTokenizer.from_pretrained(tiny["names"]["llama"]),
    )
    config = json.loads((module / "config.json").read_text())
    assert dataset.modules == ["layers.1"] and tuple(dataset.tokens.shape) == (config["batch_size"], 128)
    counts = Counter()
    for buffer in dataset.buffers:
        locations, activations, _ = buffer.load()
        counts.update(locations[:, 2].tolist())
        assert (activations > 0).all()
    records = [record for _, record in zip(range(3), dataset, strict=False)]
    assert records and all(r.per_token_frequency == counts[r.latent.latent_index] / config["n_tokens"]
                           for r in records)


def _copy(tiny, tmp_path: Path, sql: str) -> Path:
    store = tmp_path / "copy.duckdb"
    shutil.copy(tiny["path"], store)
    with connect_write(store) as con:
        con.execute(sql)
    return store


def test_bad_input_is_one_line(tiny, tmp_path):
    dict_id = tiny["ids"][("llama", 1)]
    with pytest.raises(ITDAError, match="no dictionary 999"):
        D.export_delphi(tiny["path"], 999, tmp_path / "a")
    with pytest.raises(ITDAError, match="no store"):
        D.export_delphi(tmp_path / "missing.duckdb", dict_id, tmp_path / "a")
    with pytest.raises(ITDAError, match="signs"):
        D.export_delphi(tiny["path"], dict_id, tmp_path / "a", signs="abs")  # type: ignore[arg-type]
    store = _copy(tiny, tmp_path, f"DELETE FROM index_runs WHERE dict_id = {dict_id}")
    with pytest.raises(ITDAError, match="run itda index first"):
        D.export_delphi(store, dict_id, tmp_path / "a")
    store.unlink()
    store = _copy(tiny, tmp_path, f"UPDATE index_runs SET codes_kept = false WHERE dict_id = {dict_id}")
    with pytest.raises(ITDAError, match=r"without its codes.*run itda index --reindex"):
        D.export_delphi(store, dict_id, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_never_overwrites_without_asking_and_writes_atomically(tiny, tmp_path, monkeypatch):
    dict_id = tiny["ids"][("llama", 2)]
    out = tmp_path / "latents"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ITDAError, match="not empty: pass overwrite=True"):
        D.export_delphi(tiny["path"], dict_id, out)
    calls = []

    def failing(data, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(data, path)

    real = D.save_file
    monkeypatch.setattr(D, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        D.export_delphi(tiny["path"], dict_id, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents"] and (out / "keep.txt").read_text() == "mine"
    monkeypatch.setattr(D, "save_file", real)
    module = D.export_delphi(tiny["path"], dict_id, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["layers.2"] and (module / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert D.export_delphi(tiny["path"], dict_id, empty).parent == empty  # an empty folder is fine
