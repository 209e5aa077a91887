"""Options of ``itda index`` (:class:`IndexConfig`): how much held-out text to encode with every stored
dictionary and how much of each atom's activity to keep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from itda_core.errors import ITDAError
from itda_core.options import option

MAX_WORKERS = 4096  # Ray actors; more than any cluster this is run on
MAX_WORKER_DEVICES = 1024  # CPUs or GPUs one actor may reserve


@dataclass
class IndexConfig:
    """How much held-out text to encode and how much of each atom's activity to keep."""

    max_tokens: int | None = option(
        8192, help="Held-out tokens to encode per model, the density denominator (0 = all held-out documents).")
    top_n: int = option(20, help="Top-activating contexts kept per atom.")
    n_quantiles: int = option(10, flag="--quantiles", help="Equal-probability coefficient bins per atom.")
    per_quantile: int = option(5, help="Sample contexts kept per bin.")
    hist_bins: int = option(32, help="Bins of the signed coefficient histogram.")
    batch_size: int = option(32, help="Documents per forward pass.")
    encode_chunk: int = option(4096, help="Tokens per MP call (bounds memory).", cli=False)
    keep_codes: bool = option(True, help="Also store the raw sparse codes (table 'codes').")
    reindex: bool = option(False, help="Index again dictionaries that already have an index.")
    progress: bool = option(True, help="Show progress bars.")
    timeout: float = option(600.0, help="Longest wait for the store's lock (seconds).", cli=False)
    engine: Literal["local", "ray"] = option(
        "local", help="'local': this process; 'ray': Ray Data actors (each loads the model and the dictionaries "
        "once) on the cluster of RAY_ADDRESS / --ray-address, else a local one; the same summaries.")
    workers: int | None = option(None, help="Ray actors (default: one per GPU, or one per node on CPUs).")
    cpus_per_worker: float | None = option(
        None, help="CPUs each Ray actor reserves (default: the cluster's CPUs, less a share left to Ray Data's "
        "own tasks, over the actors).")
    gpus_per_worker: float | None = option(None, help="GPUs each Ray actor reserves (default: 1 if the cluster "
                                           "has GPUs, else 0).")
    worker_memory_gib: float = option(
        8.0, help="Memory a Ray actor may give dictionaries and their Gram matrices; more dictionaries than fit "
        "are encoded in further passes over the held-out text.")
    ray_address: str | None = option(None, help="Ray cluster to join ('auto', 'ray://host:10001'; default: "
                                      "RAY_ADDRESS, else a local cluster started for the run).")

    def __post_init__(self) -> None:
        if self.max_tokens == 0:  # the CLI's "0 = all"
            self.max_tokens = None
        if min(self.top_n, self.n_quantiles, self.per_quantile) < 1 or self.hist_bins < 2:
            raise ITDAError("top-n, quantiles and per-quantile must be >= 1 and hist-bins >= 2")
        if self.batch_size < 1 or self.encode_chunk < 1:
            raise ITDAError("batch-size and the encode chunk must be >= 1")
        if self.engine not in ("local", "ray"):
            raise ITDAError(f"unknown engine {self.engine!r}; use local or ray")
        if self.workers is not None and not 1 <= self.workers <= MAX_WORKERS:
            raise ITDAError(f"workers must be between 1 and {MAX_WORKERS} (got {self.workers})")
        for name in ("cpus_per_worker", "gpus_per_worker"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_WORKER_DEVICES:
                raise ITDAError(f"{name.replace('_', '-')} must be between 0 and {MAX_WORKER_DEVICES} (got {value})")
        if not 0 < self.worker_memory_gib <= 4096:
            raise ITDAError(f"worker-memory-gib must be in (0, 4096] (got {self.worker_memory_gib})")
