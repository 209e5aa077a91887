"""Activation caches: activations with their provenance in safetensors shards and a JSON manifest, so that
extraction runs where the model is (a cluster) and the greedy build anywhere, without the model's weights.

Layout of a cache folder (written by :func:`itda_core.activation_cache_write.write_cache`, atomically)::

    manifest.json           model identity, layers, reading options, corpus, documents seen, shard list
    shard-00000.safetensors acts.<layer> [n, d_model]; prov.* (Provenance.to_tensors); batch.* (boundaries)

A shard holds whole extraction batches and keeps their boundaries (``batch.rows``), the documents each batch
consumed and saw whole, and the one a token budget cut: the trainer steps on exactly the batches an
in-process run sees, so a float32 cache builds the very same dictionaries. Reading validates the manifest
and every shard against it; anything wrong is a one-line :class:`ITDAError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from itda_core.corpus import Corpus
from itda_core.errors import ITDAError
from itda_core.extraction import ActivationBatch, _complete_before
from itda_core.provenance import Provenance

MANIFEST = "manifest.json"
FORMAT = "itda-activation-cache"
VERSION = 1
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NO_PARTIAL = -1  # batch.partial's value for "no document cut short"


@dataclass(frozen=True)
class TokenizerName:
    """What the trainer records of a tokenizer (its ``name_or_path``), kept by a cache instead of the tokenizer."""

    name_or_path: str


@dataclass
class CachedModel:
    """The identity of the model a cache was extracted with: what the trainer needs instead of a LoadedModel
    (no weights), and what it records in every dictionary's config."""

    model_id: str
    name: str
    d_model: int
    n_layers: int
    architecture: str
    family: str
    tokenizer_name: str
    layers: list[int] = field(default_factory=list)  # the cached layers
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    activation_dtype: str = ""  # the model's precision at extraction ("" in caches written before it was kept)
    cache_dtype: str = ""  # the precision the cache stores them in

    @property
    def tokenizer(self) -> TokenizerName:
        """Stands in for the tokenizer where only its name is read."""
        return TokenizerName(self.tokenizer_name)

    def check_layers(self, layers: list[int]) -> list[int]:
        """Sorted unique layers, each one cached, or a clear error."""
        missing = sorted(set(layers) - set(self.layers))
        if not layers:
            raise ITDAError("no layers given; pass e.g. --layers all (every cached layer)")
        if missing:
            raise ITDAError(f"layer(s) {missing} are not in this cache (it holds layers "
                            f"{','.join(map(str, self.layers))}); pick among those with --layers")
        return sorted(set(layers))


@dataclass
class Shard:
    """One shard file and what the manifest says it holds."""

    file: str
    tokens: int
    batches: int
    bytes: int


@dataclass
class CacheManifest:
    """Everything a cache records about how its activations were made (``manifest.json``)."""

    model: dict[str, Any]  # model_id, name, d_model, n_layers, architecture, family, tokenizer
    layers: list[int]
    seq_len: int
    skip_special_tokens: bool
    batch_size: int
    max_tokens: int | None
    max_documents: int | None
    corpus_id: str
    corpus_sha256: str
    corpus_documents: int  # documents in the corpus (split) that was read
    documents_sha256: str  # which documents were seen whole, in order, and the one cut (as TrainReport)
    tokens: int
    documents: int  # documents consumed
    dtype: str
    shard_tokens: int
    shards: list[Shard]
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> str:
        """The manifest as written to disk."""
        return json.dumps(asdict(self), indent=1)

    def cached_model(self) -> CachedModel:
        """The model identity the trainer records (see :class:`CachedModel`)."""
        m = self.model
        return CachedModel(m["model_id"], m["name"], int(m["d_model"]), int(m["n_layers"]), m["architecture"],
                           m["family"], m["tokenizer"], list(self.layers), activation_dtype=m.get("dtype", ""),
                           cache_dtype=self.dtype)

    def corpus(self) -> Corpus:
        """The read corpus's identity (no documents: the cache holds what the trainer needs of them)."""
        return Corpus(name=self.corpus_id, documents=[], corpus_id=self.corpus_id, sha256=self.corpus_sha256)


_MODEL_KEYS = {"model_id": str, "name": str, "d_model": int, "n_layers": int, "architecture": str, "family": str,
               "tokenizer": str}
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,), "layers": (list,), "seq_len": (int,), "skip_special_tokens": (bool,), "batch_size": (int,),
    "max_tokens": (int, type(None)), "max_documents": (int, type(None)), "corpus_id": (str,),
    "corpus_sha256": (str,), "corpus_documents": (int,), "documents_sha256": (str,), "tokens": (int,),
    "documents": (int,), "dtype": (str,), "shard_tokens": (int,), "shards": (list,), "created": (str,),
    "versions": (dict,), "format": (str,), "version": (int,),
}


def _bad(folder: Path, what: str) -> ITDAError:
    """The one-line error for a damaged cache."""
    return ITDAError(f"{folder} is not a valid activation cache: {what} (write it again with 'itda extract')")


def _parse(folder: Path, data: Any) -> CacheManifest:
    """A manifest from its JSON, every field and shard checked."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _bad(folder, f"{MANIFEST} is not an {FORMAT} manifest")
    if data.get("version") != VERSION:
        raise _bad(folder, f"format version {data.get('version')!r}, this itda reads version {VERSION}")
    names = {f.name for f in fields(CacheManifest)}
    missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
    if missing or unknown:
        raise _bad(folder, f"missing fields {missing}" if missing else f"unknown fields {unknown}")
    for name, types in _TYPES.items():
        value = data[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise _bad(folder, f"field {name!r} has the wrong type ({type(value).__name__})")
    for key, kind in _MODEL_KEYS.items():
        if not isinstance(data["model"].get(key), kind):
            raise _bad(folder, f"model field {key!r} is missing or not a {kind.__name__}")
    if data["model"].get("dtype", "float32") not in TORCH_DTYPES:  # the model's precision (optional: newer caches)
        raise _bad(folder, f"model field 'dtype' {data['model']['dtype']!r} is not one of {', '.join(TORCH_DTYPES)}")
    n_layers, layers = data["model"]["n_layers"], data["layers"]
    if not layers or any(not isinstance(x, int) or not 0 <= x < n_layers for x in layers) or layers != sorted(
            set(layers)):
        raise _bad(folder, f"layers {layers!r} are not sorted unique layers of a {n_layers}-layer model")
    if data["dtype"] not in TORCH_DTYPES or data["model"]["d_model"] < 1:
        raise _bad(folder, f"dtype {data['dtype']!r} / d_model {data['model']['d_model']} unknown")
    shards = []
    for i, s in enumerate(data["shards"]):
        try:
            shard = Shard(**s)
        except TypeError as err:
            raise _bad(folder, f"shard entry {i} is malformed") from err
        ok = (isinstance(shard.file, str) and Path(shard.file).name == shard.file and not shard.file.startswith(".")
              and all(isinstance(v, int) and v >= 1 for v in (shard.tokens, shard.batches, shard.bytes)))
        if not ok:
            raise _bad(folder, f"shard entry {i} is malformed")
        shards.append(shard)
    if sum(s.tokens for s in shards) != data["tokens"] or data["tokens"] < 1:
        raise _bad(folder, f"the shards hold {sum(s.tokens for s in shards):,} tokens, the manifest says "
                           f"{data['tokens']:,}")
    return CacheManifest(**{**data, "shards": shards})


class ActivationCache:
    """A cache folder opened for reading: its manifest validated, its shards read lazily batch by batch."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise ITDAError(f"{folder} has no {MANIFEST}: not an activation cache (or one still being written); "
                            "write one with 'itda extract --out'")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _bad(folder, f"{MANIFEST} cannot be read ({type(err).__name__})") from err
        self.folder = folder
        self.manifest = _parse(folder, data)
        for shard in self.manifest.shards:
            file = folder / shard.file
            if not file.is_file():
                raise _bad(folder, f"shard {shard.file} is missing")
            if file.stat().st_size != shard.bytes:
                raise _bad(folder, f"shard {shard.file} has {file.stat().st_size:,} bytes, the manifest says "
                                   f"{shard.bytes:,} (cut or replaced)")

    @property
    def model(self) -> CachedModel:
        """The model identity (what the trainer needs instead of the model)."""
        return self.manifest.cached_model()

    def batches(self, layers: list[int] | None = None, max_tokens: int | None = None,
                device: str | torch.device = "cpu") -> Iterator[ActivationBatch]:
        """The cached batches in order, float32 on ``device``, with the layers asked for; ``max_tokens`` stops
        early, cutting a batch (and recording the document cut) as :func:`itda_core.extraction.extract` does."""
        from safetensors import SafetensorError, safe_open

        wanted = self.model.check_layers(list(layers) if layers is not None else self.manifest.layers)
        if max_tokens is not None and max_tokens < 1:
            raise ITDAError(f"max_tokens must be positive (got {max_tokens})")
        done = 0
        for shard in self.manifest.shards:
            try:
                with safe_open(str(self.folder / shard.file), framework="pt") as f:
                    tensors = {name: f.get_tensor(name) for name in f.keys()  # noqa: SIM118 - not a dict
                               if not name.startswith("acts.") or int(name[5:]) in wanted}
            except (OSError, SafetensorError, ValueError) as err:
                raise _bad(self.folder, f"shard {shard.file} cannot be read ({err})") from err
            for batch in self._split(shard, tensors, wanted, device):
                if max_tokens is not None and done + len(batch) > max_tokens:
                    batch = _cut(batch, max_tokens - done)
                done += len(batch)
                yield batch
                if max_tokens is not None and done >= max_tokens:
                    return

    def _split(self, shard: Shard, tensors: dict[str, torch.Tensor], layers: list[int],
               device: str | torch.device) -> Iterator[ActivationBatch]:
        """One shard's batches, its tensors checked against the manifest."""
        d = self.manifest.model["d_model"]
        need = [f"acts.{layer}" for layer in layers] + ["batch.rows", "batch.documents", "batch.complete",
                                                         "batch.complete_offsets", "batch.partial"]
        lacking = [name for name in need if name not in tensors]
        if lacking:
            raise _bad(self.folder, f"shard {shard.file} lacks {', '.join(lacking)}")
        try:
            prov = Provenance.from_tensors(tensors)
        except (KeyError, ValueError, UnicodeDecodeError, IndexError) as err:
            raise _bad(self.folder, f"shard {shard.file} has damaged provenance") from err
        rows, offsets = tensors["batch.rows"], tensors["batch.complete_offsets"]
        shapes_ok = (len(prov) == shard.tokens and rows.shape == (shard.batches,) and int(rows.sum()) == shard.tokens
                     and int(rows.min()) >= 1 and offsets.shape == (shard.batches + 1,)
                     and tensors["batch.partial"].shape == (shard.batches, 2)
                     and tensors["batch.documents"].shape == (shard.batches,)
                     and int(offsets[-1]) == tensors["batch.complete"].numel()
                     and all(tensors[f"acts.{layer}"].shape == (shard.tokens, d) for layer in layers))
        if not shapes_ok:
            raise _bad(self.folder, f"shard {shard.file} does not hold the {shard.tokens:,} tokens x {d} of "
                                    f"{shard.batches} batches the manifest lists")
        ends = torch.cumsum(rows, 0).tolist()
        starts = [0, *ends[:-1]]
        complete, partial = tensors["batch.complete"].tolist(), tensors["batch.partial"].tolist()
        for b, (start, end) in enumerate(zip(starts, ends, strict=True)):
            doc, kept = partial[b]
            yield ActivationBatch(
                acts={layer: tensors[f"acts.{layer}"][start:end].to(device=device, dtype=torch.float32)
                      for layer in layers},
                provenance=prov.select(torch.arange(start, end)),
                documents=int(tensors["batch.documents"][b]),
                complete=complete[int(offsets[b]):int(offsets[b + 1])],
                partial=None if doc == NO_PARTIAL else (int(doc), int(kept)),
            )


def _cut(batch: ActivationBatch, cut: int) -> ActivationBatch:
    """The first ``cut`` rows of a batch, with the documents seen whole and the one cut as extract records them."""
    order = list(batch.complete) + ([batch.partial[0]] if batch.partial is not None else [])
    complete, partial = _complete_before(batch.provenance.doc_id, order, cut)
    return ActivationBatch(acts={layer: a[:cut] for layer, a in batch.acts.items()},
                           provenance=batch.provenance.select(torch.arange(cut)), documents=batch.documents,
                           complete=complete, partial=partial)


def shard_tensors(batches: list[ActivationBatch], layers: list[int], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One shard's tensors (the format above): every layer's activations, the provenance and the batch boundaries."""
    out = {f"acts.{layer}": torch.cat([b.acts[layer] for b in batches]).to(device="cpu", dtype=dtype).contiguous()
           for layer in layers}
    out.update(Provenance.concat([b.provenance for b in batches]).to_tensors())
    lengths = torch.tensor([len(b.complete) for b in batches], dtype=torch.int64)
    offsets = torch.zeros(len(batches) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    out["batch.rows"] = torch.tensor([len(b) for b in batches], dtype=torch.int64)
    out["batch.documents"] = torch.tensor([b.documents for b in batches], dtype=torch.int64)
    out["batch.complete"] = torch.tensor([d for b in batches for d in b.complete], dtype=torch.int64)
    out["batch.complete_offsets"] = offsets
    out["batch.partial"] = torch.tensor([list(b.partial) if b.partial is not None else [NO_PARTIAL, NO_PARTIAL]
                                         for b in batches], dtype=torch.int64).reshape(len(batches), 2)
    return out


def open_cache(folder: str | Path) -> ActivationCache:
    """Open and validate an activation cache folder."""
    return ActivationCache(folder)
