"""Options of ``itda extract`` (:class:`ActivationCacheConfig`: how activations are read and sharded into a cache)
and of ``itda train --activations`` (:class:`ActivationInput`). The reading options are the trainer's, with its
defaults and help (declared once, in :class:`~itda_core.config.train.TrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from itda_core.config.index import IndexConfig
from itda_core.config.train import TrainConfig
from itda_core.errors import ITDAError
from itda_core.options import default_of, help_of, option

CACHE_DTYPES = ("float32", "float16", "bfloat16")
MAX_SHARD_TOKENS = 1 << 24  # a shard bigger than this would not fit most machines' memory at d_model 4096


def _train(name: str, **extra: object) -> object:
    """A field read as ``itda train`` reads it: TrainConfig's default and help."""
    return option(default_of(TrainConfig, name), help=help_of(TrainConfig, name), **extra)  # type: ignore[arg-type]


def _ray(name: str) -> object:
    """A Ray field as ``itda index`` declares it: IndexConfig's default and help."""
    return option(default_of(IndexConfig, name), help=help_of(IndexConfig, name))


@dataclass
class ActivationCacheConfig:
    """How ``itda extract`` reads activations and writes them as safetensors shards with a JSON manifest."""

    seq_len: int = _train("seq_len")  # type: ignore[assignment]
    batch_size: int = _train("batch_size")  # type: ignore[assignment]
    skip_special_tokens: bool = _train("skip_special_tokens", flag="--skip-special")  # type: ignore[assignment]
    max_tokens: int | None = _train("max_tokens")  # type: ignore[assignment]
    max_documents: int | None = _train("max_documents")  # type: ignore[assignment]
    shard_tokens: int = option(16384, help="Tokens per shard file (whole batches; a shard closes once it has this "
                               "many); bounds the memory of writing and reading.")
    dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32", help="Stored precision. float32 trains exactly the dictionaries of an in-process run; half "
        "precision halves the files but rounds every activation (other atoms).")
    overwrite: bool = option(False, help="Replace a non-empty --out folder (it is replaced only once the new "
                             "cache is complete).")
    progress: bool = option(True, help="Show a progress bar with tokens/s and ETA.")
    engine: Literal["local", "ray"] = option(
        "local", help="'local': this process; 'ray': Ray Data actors (each loads the model once) extract the batches, "
        "streamed back in order; the same cache.")
    workers: int | None = _ray("workers")  # type: ignore[assignment]
    cpus_per_worker: float | None = _ray("cpus_per_worker")  # type: ignore[assignment]
    gpus_per_worker: float | None = _ray("gpus_per_worker")  # type: ignore[assignment]
    ray_address: str | None = _ray("ray_address")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.max_tokens == 0:  # the CLI's "0 = no limit"
            self.max_tokens = None
        if not 1 <= self.shard_tokens <= MAX_SHARD_TOKENS:
            raise ITDAError(f"shard-tokens must be between 1 and {MAX_SHARD_TOKENS:,} (got {self.shard_tokens})")
        if self.dtype not in CACHE_DTYPES:
            raise ITDAError(f"unknown dtype {self.dtype!r}; use one of {', '.join(CACHE_DTYPES)}")
        if self.seq_len < 1 or self.batch_size < 1:
            raise ITDAError("seq-len and batch-size must be at least 1")
        IndexConfig(engine=self.engine, workers=self.workers, cpus_per_worker=self.cpus_per_worker,
                    gpus_per_worker=self.gpus_per_worker)  # the same checks as itda index's
        for name in ("max_tokens", "max_documents"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ITDAError(f"{name.replace('_', '-')} must be positive (got {value})")


@dataclass
class ActivationInput:
    """Where ``itda train`` reads activations from instead of running the model."""

    activations: Path | None = option(
        None, help="Train from an activation cache written by 'itda extract' (no model weights needed): its model, "
        "corpus, seq-len, batch size and special-token choice are the cache's; --layers picks among its layers.")
