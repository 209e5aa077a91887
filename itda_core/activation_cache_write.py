"""Writing an activation cache (:mod:`itda_core.activation_cache`): one forward pass over a corpus, its batches
gathered into safetensors shards of about ``shard_tokens`` tokens, the manifest last. The whole folder is built
beside ``out`` and renamed into place only when complete (:func:`itda_core.export.folders.staged`), so a killed
run leaves no half cache; a non-empty ``out`` is replaced only with ``overwrite``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from itda_core.activation_cache import MANIFEST, TORCH_DTYPES, CacheManifest, Shard, shard_tensors
from itda_core.config.extract import ActivationCacheConfig
from itda_core.corpus import Corpus
from itda_core.dictionary import library_versions
from itda_core.errors import ITDAError
from itda_core.extraction import ActivationBatch, extract
from itda_core.models import LoadedModel, dtype_name
from itda_core.trainer import TrainReport


def write_shards(batches: Iterable[ActivationBatch], folder: Path, layers: list[int], config: ActivationCacheConfig,
                 report: TrainReport, first: int = 0) -> list[Shard]:
    """Write ``batches`` into shards ``shard-<first>...`` of ``folder``, recording documents and tokens in
    ``report``; returns the shards written."""
    from safetensors.torch import save_file

    dtype = TORCH_DTYPES[config.dtype]
    shards: list[Shard] = []
    pending: list[ActivationBatch] = []

    def flush() -> None:
        name = f"shard-{first + len(shards):05d}.safetensors"
        save_file(shard_tensors(pending, layers, dtype), str(folder / name), metadata={"format": "itda-cache"})
        shards.append(Shard(name, sum(len(b) for b in pending), len(pending), (folder / name).stat().st_size))
        pending.clear()

    for batch in batches:
        pending.append(batch)
        report.tokens += len(batch)
        report.documents += batch.documents
        report.complete_documents.extend(batch.complete)
        report.partial_document = batch.partial
        if sum(len(b) for b in pending) >= config.shard_tokens:
            flush()
    if pending:
        flush()
    return shards


def manifest_for(model: LoadedModel, corpus: Corpus, layers: list[int], config: ActivationCacheConfig,
                 report: TrainReport, shards: list[Shard]) -> CacheManifest:
    """The manifest of a cache of ``model``'s ``layers`` over ``corpus`` (what a dictionary's config records)."""
    tokenizer = str(getattr(model.tokenizer, "name_or_path", "")) or model.model_id  # as the trainer records it
    return CacheManifest(
        model={"model_id": model.model_id, "name": model.name, "d_model": model.d_model, "n_layers": model.n_layers,
               "architecture": model.architecture, "family": model.family, "tokenizer": tokenizer,
               "dtype": dtype_name(model.dtype)},
        layers=layers, seq_len=config.seq_len, skip_special_tokens=config.skip_special_tokens,
        batch_size=config.batch_size, max_tokens=config.max_tokens, max_documents=config.max_documents,
        corpus_id=corpus.corpus_id, corpus_sha256=corpus.sha256, corpus_documents=len(corpus.documents),
        documents_sha256=report.documents_sha256(), tokens=report.tokens, documents=report.documents,
        dtype=config.dtype, shard_tokens=config.shard_tokens, shards=shards,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), versions=library_versions(),
    )


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, to replace a non-empty ``out`` without ``overwrite``."""
    if overwrite or not (out.exists() or out.is_symlink()):
        return
    if out.is_file() or out.is_symlink() or any(out.iterdir()):
        raise ITDAError(f"{out} exists and is not empty: pass --overwrite to replace it, or another --out")


def write_cache(model: LoadedModel, corpus: Corpus, layers: Sequence[int], out: str | Path,
                config: ActivationCacheConfig | None = None,
                loader: Callable[[str], LoadedModel] | None = None) -> CacheManifest:
    """Extract ``layers`` of ``model`` over ``corpus`` into a cache folder ``out``; returns its manifest. With
    ``config.engine == "ray"`` Ray actors extract the batches, loading the model with ``loader(name)``."""
    from itda_core.export.folders import staged

    config = config or ActivationCacheConfig()
    out = Path(out)
    check_out(out, config.overwrite)
    wanted = model.check_layers(list(layers))
    report = TrainReport()
    if config.engine == "ray":
        from itda_core.activation_cache_ray import ray_batches

        stream = ray_batches(model, corpus, wanted, config, loader)
    else:
        stream = extract(model, corpus, wanted, config.seq_len, config.batch_size,
                         skip_special_tokens=config.skip_special_tokens, max_tokens=config.max_tokens,
                         progress=config.progress, max_documents=config.max_documents)
    with staged(out, config.overwrite) as tmp:
        try:
            shards = write_shards(stream, tmp, wanted, config, report)
        finally:
            stream.close()
        if report.tokens == 0:
            raise ITDAError("no activations were extracted; is the corpus empty?")
        manifest = manifest_for(model, corpus, wanted, config, report, shards)
        (tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")  # last: a cache without it is no cache
    return manifest
