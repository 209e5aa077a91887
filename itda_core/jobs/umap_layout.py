"""2-D UMAP layouts of atom vectors (umap-learn), made fast without changing the method: exact cosine
neighbours from one chunked matrix product (torch) instead of umap-learn's small-data path, which calls its
numba cosine once per pair from Python (most of an old map's time); fewer optimisation epochs (measured as
good as 500, docs/benchmarks.md); and many maps laid out at once in worker processes.

A layout stays reproducible: umap-learn runs its optimisation in one thread when given a seed, and here BLAS
is held to one thread too, so a map is the same in this process and in any worker. Workers are never forked
from this process: torch and numba share GNU OpenMP, which aborts a forked child that uses it. They are forked
from multiprocessing's fork server, a fresh process that imports umap-learn once and never torch
(:func:`pool_context`; spawned where there is no fork server), so a worker starts with umap-learn imported;
torch is imported only where the neighbours are found, in this process.

umap-learn's numba kernels on this path take ~17 CPU seconds to compile, and umap-learn does not ask numba to
keep them, so every process paid that. :func:`cache_umap_kernels` turns numba's on-disk cache on for them
(numba keys each entry by the function's source file, its signature and the CPU, and compiles again when any
of these changes), and the first worker compiles under a file lock while the others wait to load what it
wrote: one compilation per machine and umap-learn install, not one per process.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np

from itda_core.config.atom_maps import UmapParams
from itda_core.extras import require

# umap-learn's numba kernels that a cosine map with precomputed neighbours and a seed compiles (module, name)
UMAP_KERNELS = (
    ("umap.umap_", "smooth_knn_dist"),
    ("umap.umap_", "compute_membership_strengths"),
    ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch"),  # the one-thread (seeded) variant
)
COMPILE_LOCK = Path(tempfile.gettempdir()) / "itda-umap-kernels.lock"
_kernels_cached: bool | None = None  # None: not tried in this process; False: numba could not cache here

EXACT_KNN_MAX = 20_000  # rows up to which neighbours are exact; above, umap-learn's NN-descent (approximate)
KNN_CHUNK = 2048  # query rows per matrix product (2048 x 20,000 floats = 160 MB at most)
MAX_WORKERS = 4  # processes at once when the caller does not say
MIN_ATOMS_FOR_WORKERS = 10_000  # about 10 CPU seconds of maps: below, workers' start-up costs more


def cosine_knn(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest rows of each row by cosine distance (1 - cos), itself first at distance 0:
    indices [n, k] int32 and distances [n, k] float32, as umap-learn's ``precomputed_knn`` takes them."""
    import torch

    data = np.asarray(vectors, dtype=np.float32)
    if not data.flags.writeable:  # a store's read-only buffer: torch warns on sharing one (it is only read here)
        data = data.copy()
    x = torch.nn.functional.normalize(torch.from_numpy(data), dim=1)
    n = x.shape[0]
    indices, dists = [], []
    for start in range(0, n, KNN_CHUNK):
        stop = min(start + KNN_CHUNK, n)
        sim = x[start:stop] @ x.T
        rows = torch.arange(stop - start)
        sim[rows, rows + start] = 2.0  # itself first, even beside an identical atom
        value, index = sim.topk(k, dim=1)
        value[:, 0] = 1.0
        indices.append(index.to(torch.int32))
        dists.append((1.0 - value).clamp_min(0.0))
    return torch.cat(indices).numpy(), torch.cat(dists).numpy().astype(np.float32)


def cache_umap_kernels() -> bool:
    """Turn numba's on-disk cache on for :data:`UMAP_KERNELS` (once per process, before they compile); False
    where numba finds nowhere to write one (then each process compiles, as umap-learn alone does)."""
    global _kernels_cached
    if _kernels_cached is None:
        require("umap", "viz", "an atom map")
        try:
            for module, name in UMAP_KERNELS:
                kernel = getattr(importlib.import_module(module), name)
                if not kernel.overloads:  # compiled already (in this process): nothing to load any more
                    kernel.enable_caching()
            _kernels_cached = True
        except (AttributeError, RuntimeError):  # another umap-learn layout, or no writable cache location
            _kernels_cached = False
    return _kernels_cached


def warm_up(run_kernels: bool = True) -> None:
    """Import umap-learn and compile (or load from numba's cache) the kernels a map needs, on a tiny map,
    holding :data:`COMPILE_LOCK`, so that processes started together compile once: the rest wait, then load.
    The import is inside the lock too: on a fresh install it compiles pynndescent's own cached kernels.
    ``run_kernels`` False: the import alone (what the fork server does: two of the kernels run on numba's
    threads, and a process whose GNU OpenMP has run cannot fork workers that use it)."""
    from filelock import FileLock

    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    small = UmapParams(n_neighbors=3, n_epochs=2)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)  # numpy neighbours: a worker never imports torch
    dist = np.clip(1.0 - unit @ unit.T, 0.0, None)
    np.fill_diagonal(dist, -1.0)  # itself first
    index = np.argsort(dist, axis=1, kind="stable")[:, :3].astype(np.int32)
    knn = (index, np.clip(np.take_along_axis(dist, index, axis=1), 0.0, None).astype(np.float32), None)
    with FileLock(str(COMPILE_LOCK)):
        try:
            cache_umap_kernels()
            if run_kernels:
                layout(x, knn, small)
        except Exception:  # an initializer's error would break the pool: the map's own call raises it instead
            pass  # (umap-learn missing...), where the caller sees it


def _line(n: int) -> np.ndarray:
    """Coordinates of a map too small for UMAP (fewer than 4 rows): points on a line."""
    return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, dtype=np.float32)])


def neighbours(vectors: np.ndarray, params: UmapParams) -> tuple[Any, ...]:
    """What umap-learn's ``precomputed_knn`` gets for ``vectors``: exact cosine neighbours up to
    :data:`EXACT_KNN_MAX` rows, else nothing (umap-learn's own NN-descent)."""
    n = len(vectors)
    if n < 4 or n > EXACT_KNN_MAX or params.metric != "cosine":
        return (None, None, None)
    return cosine_knn(vectors, max(2, min(params.n_neighbors, n - 1)))


def layout(vectors: np.ndarray, knn: tuple[Any, ...], params: UmapParams) -> np.ndarray:
    """UMAP coordinates [n, 2] of ``vectors`` given their :func:`neighbours` (numpy and numba only, no
    torch: what a forked worker runs); fewer than 4 rows: a line."""
    n = len(vectors)
    if n < 4:
        return _line(n)
    umap = require("umap", "viz", "an atom map")
    cache_umap_kernels()
    from threadpoolctl import threadpool_limits  # scikit-learn's, so umap-learn's too

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # a seed disables parallelism; no search index with precomputed_knn
        reducer = umap.UMAP(
            n_neighbors=max(2, min(params.n_neighbors, n - 1)),
            min_dist=params.min_dist,
            metric=params.metric,
            n_epochs=params.n_epochs,
            random_state=params.seed,
            init="spectral" if n > 64 else "random",
            precomputed_knn=knn,
        )
        coords = reducer.fit_transform(np.ascontiguousarray(vectors, dtype=np.float32))
    return np.asarray(coords, dtype=np.float32)


def embed(vectors: np.ndarray, params: UmapParams) -> np.ndarray:
    """2-D coordinates [n, 2] of ``vectors`` [n, d] (cosine UMAP with ``params``); fewer than 4 rows: a line."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    return layout(x, neighbours(x, params), params)


def pool_context() -> BaseContext:
    """How the workers start: forked from multiprocessing's fork server, which imports umap-learn once
    (``itda_core.jobs.umap_preload``) and is kept for later pools in this process; spawned where there is no
    fork server (Windows). A fork server already started without the preload still works: each worker's
    :func:`warm_up` then imports umap-learn itself."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["itda_core.jobs.umap_preload"])
    return context


def default_workers(n_maps: int, n_atoms: int) -> int:
    """Processes for ``n_maps`` maps of ``n_atoms`` atoms in all: one per CPU core, at most
    :data:`MAX_WORKERS` and ``n_maps``; this process alone under :data:`MIN_ATOMS_FOR_WORKERS` atoms, where
    starting workers (umap-learn's import in the fork server, ~4 CPU seconds, then the processes) costs more than
    it saves."""
    if n_atoms < MIN_ATOMS_FOR_WORKERS:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS, n_maps))


def embed_many(
    items: Iterable[tuple[Any, np.ndarray]], params: UmapParams, workers: int = 1
) -> Iterator[tuple[Any, np.ndarray]]:
    """``(key, coords)`` for each ``(key, vectors)`` of ``items``, as each map is finished: in this process
    with ``workers`` 1, else in that many worker processes (at most ``2 * workers`` maps in flight, so the
    vectors of a whole store are never all in memory). Every map is the one :func:`embed` makes here: the
    neighbours are found here (torch), the workers run only umap-learn."""
    if workers <= 1:
        for key, vectors in items:
            yield key, embed(vectors, params)
        return
    pending: dict[Future, Any] = {}
    context = pool_context()
    from threadpoolctl import threadpool_limits

    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=warm_up) as pool:
        for _ in range(workers):  # start every worker now: they import umap-learn while vectors are read here
            pool.submit(int)
        try:
            for key, vectors in items:
                x = np.ascontiguousarray(vectors, dtype=np.float32)
                # neighbours here, in one thread: the workers have the cores
                with threadpool_limits(limits=1):
                    knn = neighbours(x, params)
                pending[pool.submit(layout, x, knn, params)] = key
                while len(pending) >= 2 * workers:
                    yield from _finished(pending)
            while pending:
                yield from _finished(pending)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _finished(pending: dict[Future, Any]) -> Iterator[tuple[Any, np.ndarray]]:
    """Wait for at least one pending map; yield the finished ones (a worker's error is raised here)."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        key = pending.pop(future)
        yield key, future.result()
