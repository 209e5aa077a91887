"""``itda index --engine ray`` on a local Ray cluster: the same codes, summaries and index-time figures as the
in-process path, with one or two actors and with the dictionaries split over passes; resources sized from the
cluster and refused when they cannot fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from itda_core.config.index import IndexConfig
from itda_core.errors import ITDAError
from itda_core.jobs.index import index_model
from itda_core.jobs.index_ray import gram_passes, plan_resources
from itda_core.store.connection import connect_readonly
from tests.tiny import save_tiny_model, tiny_corpus
from tests.tolerance import gamma

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(400)  # a Ray pool that cannot start must fail the test, not hang CI (400 s: a busy
# 2-core machine took over 120 s for a healthy run)

LAYERS = [0, 1, 2]
# what differs between two runs of the same index (when, how long)
RUN_COLUMNS = {"seconds", "created"}
TABLES = ("codes", "atom_stats", "atom_top_contexts", "atom_quantiles", "atom_histograms")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with a tiny Llama's three layers (not indexed) and the model folder its workers load."""
    from itda_core.config.train import TrainConfig
    from itda_core.models import load_model
    from itda_core.store.writer import write_dictionary
    from itda_core.trainer import Trainer

    root = tmp_path_factory.mktemp("indexray")
    model = load_model(str(save_tiny_model("llama", root / "tiny-llama")), device="cpu")
    corpus = tiny_corpus(n_copies=6)
    train, _held = corpus.split(0.4)
    store = root / "blank.duckdb"
    config = TrainConfig(layers=LAYERS, k=4, threshold=0.02, max_tokens=None, progress=False)
    for itda in Trainer(model, train, config).run().values():
        write_dictionary(store, itda, model, corpus)
    return {"root": root, "store": store, "model": model}


def _index(trained, name: str, **kw) -> Path:
    store = trained["root"] / f"{name}.duckdb"
    shutil.copy(trained["store"], store)
    folder = str(trained["root"] / "tiny-llama")
    from itda_core.models import load_model

    config = IndexConfig(max_tokens=kw.pop("max_tokens", None), batch_size=3, top_n=4, n_quantiles=3,
                         per_quantile=2, hist_bins=6, progress=False, **kw)
    report = index_model(store, trained["model"], config, loader=lambda _name: load_model(folder, device="cpu"))
    assert len(report.indexed) == len(LAYERS) and not report.skipped
    return store


def _tables(store: Path) -> dict[str, list[tuple]]:
    out = {}
    with connect_readonly(store) as con:
        for table in TABLES:
            out[table] = con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        cur = con.execute("SELECT * FROM index_runs ORDER BY dict_id")
        names = [c[0] for c in cur.description]
        out["index_runs"] = [tuple(v for n, v in zip(names, row, strict=True) if n not in RUN_COLUMNS)
                             for row in cur.fetchall()]
        out["quality"] = con.execute("SELECT dict_id, metric, value, corpus_id, n_tokens, details FROM evaluations "
                                     "ORDER BY dict_id, metric").fetchall()
    return out


def _same(a: dict[str, list[tuple]], b: dict[str, list[tuple]]) -> None:
    for table in [*TABLES, "index_runs"]:
        assert a[table] == b[table], table
    assert a["codes"] and a["atom_top_contexts"]
    assert [r[:2] + r[3:5] for r in a["quality"]] == [r[:2] + r[3:5] for r in b["quality"]]
    for x, y in zip(a["quality"], b["quality"], strict=True):  # float64 sums merged in another grouping
        n = x[4]
        assert x[2] == pytest.approx(y[2], rel=4 * gamma(n, torch.float64), abs=1e-300)
        dx, dy = json.loads(x[5]), json.loads(y[5])
        assert {k: v for k, v in dx.items() if k not in ("fvu", "cosine", "mse")} == {
            k: v for k, v in dy.items() if k not in ("fvu", "cosine", "mse")}


def _local(trained, name: str, **kw) -> dict[str, list[tuple]]:
    """The in-process index, on the one intra-op thread each actor gets (Ray sets OMP_NUM_THREADS from its CPUs):
    a CPU forward pass rounds differently on another thread count (by ~1e-9 here), not the engine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _tables(_index(trained, name, **kw))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local(trained):
    return _local(trained, "local")


def test_ray_index_matches_the_local_one(local_ray, trained, local):
    _same(local, _tables(_index(trained, "ray", engine="ray", workers=1)))
    assert ray.is_initialized()  # it joined the fixture's cluster and left it running


def test_two_workers_two_passes_and_a_token_budget(local_ray, trained):
    budget = 50  # cuts a batch, as the local extraction does
    two_per_pass = 6e-3  # GiB: two of the three dictionaries (~170 atoms each) per pass
    assert len(gram_passes({1: 170, 2: 170, 3: 170}, two_per_pass)) == 2
    local = _local(trained, "local-budget", max_tokens=budget)
    ray_tables = _tables(_index(trained, "ray-budget", max_tokens=budget, engine="ray", workers=2,
                                worker_memory_gib=two_per_pass))
    _same(local, ray_tables)
    assert {r[4] for r in ray_tables["index_runs"]} == {budget}


def test_itda_index_engine_ray_on_the_command_line(local_ray, trained, local):
    from typer.testing import CliRunner

    from itda_core.cli.app import app

    store = trained["root"] / "cli.duckdb"
    shutil.copy(trained["store"], store)
    result = CliRunner().invoke(app, ["index", "--store", str(store), "--engine", "ray", "--workers", "1",
                                      "--cpus-per-worker", "0.5", "--device", "cpu", "--max-tokens", "0",
                                      "--batch-size", "3", "--top-n", "4", "--quantiles", "3", "--per-quantile",
                                      "2", "--hist-bins", "6", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"indexed {len(LAYERS)} dictionaries" in result.output
    _same(local, _tables(store))


def test_resources_come_from_the_cluster_and_must_fit():
    cpu2 = {"CPU": 2.0}
    assert plan_resources(IndexConfig(), cpu2) == plan_resources(IndexConfig(workers=1), cpu2)
    one, two = plan_resources(IndexConfig(workers=1), cpu2), plan_resources(IndexConfig(workers=2), cpu2)
    assert (one.workers, one.cpus, one.gpus) == (1, 1.0, 0.0)
    assert (two.workers, two.cpus) == (2, 0.5)  # whole CPUs would starve Ray Data's own tasks: it would hang
    gpus = plan_resources(IndexConfig(), {"CPU": 16.0, "GPU": 4.0})
    assert (gpus.workers, gpus.gpus) == (4, 1.0) and gpus.workers * gpus.cpus <= 15
    nodes = plan_resources(IndexConfig(), {"CPU": 32.0}, nodes=2)
    assert (nodes.workers, nodes.cpus) == (2, 15.0)
    with pytest.raises(ITDAError, match="do not fit"):
        plan_resources(IndexConfig(workers=2, cpus_per_worker=1.0), cpu2)
    with pytest.raises(ITDAError, match="GPUs"):
        plan_resources(IndexConfig(gpus_per_worker=1.0), cpu2)
    with pytest.raises(ITDAError, match="workers"):
        IndexConfig(workers=0)
    with pytest.raises(ITDAError, match="engine"):
        IndexConfig(engine="spark")  # type: ignore[arg-type]
