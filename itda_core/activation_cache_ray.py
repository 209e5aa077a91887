"""``itda extract --engine ray``: the activation cache's batches extracted by Ray Data actors (each loads the model
once), streamed back in order to the writer (:mod:`itda_core.activation_cache_write`), which shards them as the
local path does. The driver plans the very batches :func:`itda_core.extraction.extract` forms (documents per
batch, the cut at ``max_tokens``); resources as ``itda index --engine ray`` sizes them
(:func:`itda_core.jobs.index_ray.plan_resources`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import torch

from itda_core.config.extract import ActivationCacheConfig
from itda_core.corpus import Corpus, Document
from itda_core.extraction import ActivationBatch
from itda_core.models import LoadedModel
from itda_core.provenance import Provenance


class BatchExtractor:
    """A Ray Data actor: loads the model once, then per row extracts one batch and returns it as safetensors bytes
    (the shard format of one batch)."""

    def __init__(self, loader: Callable[[str], LoadedModel], name: str, model_id: str, layers: list[int],
                 config: ActivationCacheConfig) -> None:
        from itda_core.errors import ITDAError

        self.model = loader(name)
        if self.model.model_id != model_id:
            raise ITDAError(f"a Ray worker loaded {name} as {self.model.model_id}, not {model_id}")
        self.layers, self.config = layers, config

    def __call__(self, table: Any) -> Any:
        """Rows (batch, docs, keep) in, rows (batch, tensors) out."""
        import pyarrow as pa
        from safetensors.torch import save

        from itda_core.activation_cache import TORCH_DTYPES, shard_tensors
        from itda_core.extraction import extract

        out: dict[str, list[Any]] = {"batch": [], "tensors": []}
        for row in table.to_pylist():
            docs = [Document(int(i), t, s) for i, t, s in json.loads(row["docs"])]
            stream = extract(self.model, docs, self.layers, self.config.seq_len, len(docs),
                             skip_special_tokens=self.config.skip_special_tokens, max_tokens=int(row["keep"]),
                             progress=False)
            batch = next(stream)
            stream.close()
            batch.documents = int(row["documents"])
            out["batch"].append(int(row["batch"]))
            out["tensors"].append(save(shard_tensors([batch], self.layers, TORCH_DTYPES[self.config.dtype])))
        return pa.table({"batch": pa.array(out["batch"], pa.int64()), "tensors": pa.array(out["tensors"], pa.binary())})


def plan(model: LoadedModel, corpus: Corpus, config: ActivationCacheConfig) -> list[dict[str, Any]]:
    """The batches :func:`itda_core.extraction.extract` would yield: documents, tokens kept, documents consumed."""
    from itda_core.extraction import _batches
    from itda_core.tokenize import tokenize_documents

    documents = list(corpus.documents)[: config.max_documents] if config.max_documents else list(corpus.documents)
    rows, done = [], 0
    for docs in _batches(documents, config.batch_size):
        n = len(tokenize_documents(model, docs, config.seq_len, config.skip_special_tokens).provenance)
        if n == 0:
            continue
        keep = n if config.max_tokens is None else min(n, config.max_tokens - done)
        rows.append({"batch": len(rows), "docs": json.dumps([[d.doc_id, d.text, d.source] for d in docs]),
                     "keep": keep, "documents": len(docs)})
        done += keep
        if config.max_tokens is not None and done >= config.max_tokens:
            break
    return rows


def _batch(tensors: dict[str, torch.Tensor], layers: list[int]) -> ActivationBatch:
    """One batch back from its shard tensors."""
    from itda_core.activation_cache import NO_PARTIAL

    doc, kept = tensors["batch.partial"][0].tolist()
    return ActivationBatch(acts={layer: tensors[f"acts.{layer}"] for layer in layers},
                           provenance=Provenance.from_tensors(tensors), documents=int(tensors["batch.documents"][0]),
                           complete=tensors["batch.complete"].tolist(),
                           partial=None if doc == NO_PARTIAL else (int(doc), int(kept)))


def ray_batches(model: LoadedModel, corpus: Corpus, layers: list[int], config: ActivationCacheConfig,
                loader: Callable[[str], LoadedModel] | None = None) -> Iterator[ActivationBatch]:
    """The extraction batches of ``corpus``, made by Ray actors, in order."""
    from safetensors.torch import load

    from itda_core.jobs.index_ray import plan_resources, ray_session
    from itda_core.models import load_model

    rows = plan(model, corpus, config)
    if not rows:
        return
    name = model.name
    with ray_session(config) as ray:  # type: ignore[arg-type] # the same Ray fields as IndexConfig's
        nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
        res = plan_resources(config, ray.cluster_resources(), max(1, nodes))  # type: ignore[arg-type]
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = config.progress
        context.execution_options.preserve_order = True  # shards follow the batches' order
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), max(1, 4 * res.workers)))
        actor = {"loader": loader or (lambda _name: load_model(name)), "name": name, "model_id": model.model_id,
                 "layers": layers, "config": config}
        encoded = dataset.map_batches(
            BatchExtractor, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=res.workers),
            num_cpus=res.cpus, num_gpus=res.gpus, fn_constructor_kwargs=actor)
        expected = 0
        for table in encoded.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in table.to_pylist():
                if row["batch"] != expected:  # pragma: no cover - preserve_order keeps them in order
                    raise RuntimeError(f"Ray returned batch {row['batch']} where {expected} was due")
                expected += 1
                yield _batch(load(row["tensors"]), layers)
