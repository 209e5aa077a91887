"""Atom map layouts: exact cosine neighbours, reproducible UMAP coordinates, the same maps from worker
processes as from this one, and bounded settings."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from itda_core.config.atom_maps import MAX_EPOCHS, UmapParams
from itda_core.errors import ITDAError
from itda_core.jobs import umap_layout
from itda_core.jobs.umap_layout import cosine_knn, embed, embed_many
from tests.tolerance import cosine_tol

FAST = UmapParams(n_epochs=20)  # few epochs: what is tested holds for any number


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` unit vectors of width ``d`` around 4 random directions (a map with structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, d))
    x = centres[rng.integers(0, 4, n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_cosine_knn_is_exact_in_chunks(monkeypatch):
    monkeypatch.setattr(umap_layout, "KNN_CHUNK", 7)  # several chunks, the last one short
    x = _clustered(50, 12, 0)
    x[3] = x[10]  # a duplicate atom: each copy still lists itself first
    k = 6
    idx, dist = cosine_knn(x, k)
    assert idx.shape == dist.shape == (50, k) and idx.dtype == np.int32 and dist.dtype == np.float32
    assert (idx[:, 0] == np.arange(50)).all() and (dist[:, 0] == 0).all()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = 1.0 - unit.astype(np.float64) @ unit.T.astype(np.float64)
    tol = cosine_tol(12)
    for i in range(50):
        expected = np.sort(np.delete(full[i], i))[: k - 1]
        assert np.allclose(dist[i, 1:], expected, atol=tol), i
        assert np.allclose(full[i, idx[i, 1:]], dist[i, 1:], atol=tol), i
        assert len(set(idx[i].tolist())) == k


def test_cosine_knn_reads_a_read_only_buffer_quietly(recwarn):
    x = _clustered(30, 8, 2)
    frozen = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)  # as a store hands vectors back
    assert not frozen.flags.writeable
    idx, dist = cosine_knn(frozen, 5)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
    expected = cosine_knn(x, 5)
    assert np.array_equal(idx, expected[0]) and np.array_equal(dist, expected[1])


def test_embed_is_reproducible_for_a_seed():
    x = _clustered(120, 16, 1)
    a, b = embed(x, FAST), embed(x, FAST)
    assert a.shape == (120, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b)
    other = embed(x, UmapParams(n_epochs=20, seed=1))
    assert not np.array_equal(a, other)


def test_tiny_inputs_are_a_line():
    for n in range(4):
        coords = embed(_clustered(max(n, 1), 8, 2)[:n], FAST)
        assert coords.shape == (n, 2) and np.array_equal(coords[:, 0], np.arange(n, dtype=np.float32))
    assert embed(_clustered(5, 8, 2), FAST).shape == (5, 2)  # 5 rows: neighbours cut to 4


def test_workers_make_the_same_maps_as_this_process():
    items = [(i, _clustered(70 + 15 * i, 10, 10 + i)) for i in range(4)]
    here = dict(embed_many(items, FAST, workers=1))
    there = dict(embed_many(iter(items), FAST, workers=2))
    assert sorted(there) == [0, 1, 2, 3]
    for key, vectors in items:
        assert there[key].shape == (len(vectors), 2)
        assert np.array_equal(here[key], there[key]), key


def _umap_imported() -> bool:
    """In a worker: whether umap-learn was imported before this task came (the fork server's preload)."""
    import sys

    return "umap" in sys.modules


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_workers_fork_from_a_server_that_imported_umap_once():
    with ProcessPoolExecutor(max_workers=2, mp_context=umap_layout.pool_context()) as pool:
        assert all(pool.submit(_umap_imported).result(timeout=300) for _ in range(4))


def test_worker_errors_are_raised():
    bad = [(i, np.full((80, 6), np.nan, dtype=np.float32)) for i in range(2)]  # refused before any compiling
    with pytest.raises(ValueError):
        dict(embed_many(bad, FAST, workers=2))


def test_a_failing_warm_up_leaves_the_error_to_the_maps_own_call(monkeypatch):
    """The workers' initializer must not raise (that breaks the whole pool with an unclear message)."""

    def broken(*_args, **_kwargs):
        raise ImportError("no umap here")

    monkeypatch.setattr(umap_layout, "layout", broken)
    umap_layout.warm_up()  # no exception


def test_params_are_bounded():
    for bad in ({"n_epochs": 0}, {"n_epochs": MAX_EPOCHS + 1}, {"n_neighbors": 1}, {"min_dist": 2.0}):
        with pytest.raises(ITDAError):
            UmapParams(**bad)


KERNEL_RUN = """
import json, sys
import numpy as np
from itda_core.config.atom_maps import UmapParams
from itda_core.jobs import umap_layout
import importlib
x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
coords = umap_layout.embed(x, UmapParams(n_epochs=20))
stats = {name: [getattr(importlib.import_module(m), name).stats.cache_hits,
                getattr(importlib.import_module(m), name).stats.cache_misses] for m, name in umap_layout.UMAP_KERNELS}
print(json.dumps({"coords": coords.tolist(), "stats": {k: [sum(v[0].values()), sum(v[1].values())]
                                                       for k, v in stats.items()}}))
"""


def test_umap_kernels_compile_once_into_numbas_cache_and_load_as_the_same_maps(tmp_path):
    """A process with a cold numba cache compiles umap-learn's kernels and writes them; the next loads them
    (cache hits, no misses) and makes the same map, to the bit."""
    import importlib
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", KERNEL_RUN], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold = run()
    assert all(misses > 0 for _, misses in cold["stats"].values()), cold["stats"]
    written = {p.name.split("-")[0].split(".")[-1] for p in tmp_path.rglob("*.nbi")}  # module.function-line
    assert {
        getattr(importlib.import_module(m), name).py_func.__name__ for m, name in umap_layout.UMAP_KERNELS
    } <= written
    warm = run()
    assert all(hits > 0 and misses == 0 for hits, misses in warm["stats"].values()), warm["stats"]
    assert warm["coords"] == cold["coords"]
