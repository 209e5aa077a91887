"""``itda demo-build``: the default store, one dictionary for every layer of the three embedded models.

Order: SmolLM2 first (train all layers in one pass, write each layer, index them), so its dictionaries are
browsable while MiniLM and then Gemma are still being built. Each model's layers are trained from one
forward pass over the same training documents -- the first ``train_documents`` of the train split of the
default corpus, in a fixed pseudo-random document order so that the budget samples every article rather
than the first few, the same documents for every model (the budget is in documents, not tokens, because
the tokenizers differ and Jaccard needs the same text) -- and indexed on the held-out split. The build is
resumable at (model, layer) granularity: whatever is already in the store (matching the corpus, split and
options) is kept, only the missing layers are trained and only unindexed dictionaries are indexed. A
complete store is recognised from the store alone, without loading any model, so a later launch returns in
well under a second.

Quality: indexing stores every dictionary's FVU and cosine on the held-out tokens it encodes
(:mod:`itda_core.jobs.index_quality`); the CE loss score needs three more forward passes per layer, so the demo
computes it for ``ce_layers`` evenly spaced layers of each causal model on ``ce_tokens`` held-out tokens
(:func:`ce_layers_of`; ``itda eval --store`` computes the others). Encoders predict no next token: no CE score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from itda_core.config.demo import DemoConfig
from itda_core.corpus import Corpus
from itda_core.errors import ITDAError
from itda_core.jobs.index import IndexConfig, index_model, spread
from itda_core.models import LoadedModel
from itda_core.store.connection import connect_readonly
from itda_core.store.recipes import Recipe, other_recipe_count, recipe_dictionaries, recipe_layers
from itda_core.store.writer import write_dictionary


@dataclass
class ModelProgress:
    """Where one model stands: layers with a dictionary, layers indexed, and what this run did."""

    name: str
    n_layers: int | None = None
    present: int = 0
    indexed: int = 0
    trained: int = 0
    newly_indexed: int = 0
    ce_scored: int = 0  # layers whose CE loss score this run computed
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Every layer stored and indexed."""
        return self.n_layers is not None and self.present >= self.n_layers and self.indexed >= self.n_layers


@dataclass
class DemoReport:
    """What :func:`build_demo` did, per model."""

    models: list[ModelProgress] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Every layer stored and indexed."""
        return all(m.complete for m in self.models)

    def summary(self) -> str:
        """One line per model for the CLI."""
        lines = []
        for m in self.models:
            did = (
                f"trained {m.trained}, indexed {m.newly_indexed} in {m.seconds:.0f} s"
                + (f"; then the CE loss score of {m.ce_scored} layers" if m.ce_scored else "")
                if (m.trained or m.newly_indexed)
                else "already complete"
                if m.complete
                else "incomplete"
            )
            lines.append(f"{m.name:14} {m.present}/{m.n_layers} layers, {m.indexed} indexed ({did})")
        lines.append(f"total {self.seconds:.1f} s")
        return "\n".join(lines)


def corpus_id_of(config: DemoConfig) -> str:
    """Id of the demo's full corpus, known without loading it."""
    if config.corpus is not None:
        return config.corpus.corpus_id
    from itda_core.corpus.embedded import CORPUS_ID

    return CORPUS_ID


def train_corpus_id(config: DemoConfig) -> str:
    """The corpus id recorded by dictionaries trained on the demo's train split (as Corpus.split names it)."""
    return f"{corpus_id_of(config)}:train:{config.held_out_fraction:g}:{config.split_seed}"


def recipe(config: DemoConfig) -> Recipe:
    """How the demo's dictionaries are trained (split, k, seq_len, documents, tie rule): a stored dictionary
    counts for the demo when it follows this recipe."""
    return Recipe(train_corpus_id(config), config.k, config.seq_len, config.train_documents, config.init_rule)


def _check_no_other_budget(config: DemoConfig) -> None:
    """Refuse to add dictionaries beside demo dictionaries built on other documents (an older itda's token
    budgets, or another --train-documents) or with another initial-atom rule: one store would then mix
    dictionaries that cannot be compared."""
    if not Path(config.store).is_file():
        return
    with connect_readonly(config.store) as con:
        others = other_recipe_count(con, recipe(config))
    if others:
        raise ITDAError(f"{config.store} holds {others} demo dictionaries built another way (an older itda's "
                        f"token budgets or tie rule: not {config.train_documents} documents with init_rule "
                        f"{config.init_rule!r}); build it again with `itda demo --rebuild` (or use another --store)")


def model_status(config: DemoConfig, name: str, model_id: str | None = None) -> ModelProgress:
    """Layers of model ``name`` (or exactly ``model_id``) present and indexed in the store for this demo."""
    status = ModelProgress(name)
    if not Path(config.store).is_file():
        return status
    with connect_readonly(config.store) as con:
        found = recipe_layers(con, recipe(config), name=name, model_id=model_id)
    if found is not None:
        status.n_layers, status.present, status.indexed = found
    return status


def _demo_dictionaries(
    config: DemoConfig, *, model_id: str | None = None, name: str | None = None
) -> list[tuple[int, int]]:
    """(dict_id, layer) of the demo's dictionaries (same train split, k and seq_len) of one model, by id or name."""
    if not Path(config.store).is_file():
        return []
    with connect_readonly(config.store) as con:
        return recipe_dictionaries(con, recipe(config), model_id=model_id, name=name)


def _map_atoms(config: DemoConfig, name: str, tag: str) -> int:
    """Compute the missing atom maps of model ``name``'s demo dictionaries; returns how many were made."""
    if not config.atom_maps:
        return 0
    from itda_core.jobs.atom_maps import compute_atom_maps, missing_maps

    ids = [d for d, _ in _demo_dictionaries(config, name=name)]
    todo = missing_maps(config.store, ids) if ids else []
    if not todo:
        return 0
    config.log(f"{tag}: computing {len(todo)} atom map(s) (UMAP)")
    start = time.perf_counter()
    done = len(compute_atom_maps(config.store, todo))
    config.log(f"{tag}: {done} atom map(s) stored in {time.perf_counter() - start:.0f} s")
    return done


def ce_layers_of(n_layers: int, count: int) -> list[int]:
    """``count`` evenly spaced layers of a model of ``n_layers`` (the interior points: the quartiles for 3), all of
    them when ``count`` >= ``n_layers``, none for 0."""
    if count <= 0 or n_layers <= 0:
        return []
    if count >= n_layers:
        return list(range(n_layers))
    return sorted({round((i + 1) * (n_layers - 1) / (count + 1)) for i in range(count)})


def score_layers(config: DemoConfig, model: LoadedModel, tag: str) -> int:
    """Compute (and store) the CE loss score of the demo dictionaries of ``model`` at :func:`ce_layers_of`'s
    layers that have none yet, on ``config.ce_tokens`` held-out tokens; returns how many were scored."""
    from itda_core.config.evaluation import DEFAULT_CE_RULE, StoreEvalConfig
    from itda_core.jobs.evaluation import evaluate_store, stored_metric
    from itda_core.store.evaluations import evaluated

    if model.family != "decoder":
        if config.ce_layers:
            config.log(f"{tag}: an encoder, so no CE loss score (FVU and cosine come with the index)")
        return 0
    layers = set(ce_layers_of(model.n_layers, config.ce_layers))
    ids = [d for d, layer in _demo_dictionaries(config, model_id=model.model_id) if layer in layers]
    if not ids:
        return 0
    with connect_readonly(config.store) as con:
        done = evaluated(con, ids, stored_metric("ce_loss_score", DEFAULT_CE_RULE))
    todo = [d for d in ids if d not in done]
    if not todo:
        return 0
    config.log(f"{tag}: CE loss score of {len(todo)} layer(s) on {config.ce_tokens:,} held-out tokens")
    start = time.perf_counter()
    # exclude_first: as the index's figures, leave each document's first position out (on models without BOS it
    # is an attention sink whose norm makes FVU meaningless; on models with BOS it is the BOS, special anyway)
    report = evaluate_store(config.store, dict_ids=todo, loader=lambda _name: model, config=StoreEvalConfig(
        max_tokens=config.ce_tokens, device=config.device, progress=config.progress, exclude_first=True))  # fmt: skip
    for d, why in report.skipped.items():
        config.log(f"{tag}: no CE loss score for dictionary {d}: {why}")
    config.log(f"{tag}: {len(report.results)} CE loss score(s) stored in {time.perf_counter() - start:.0f} s")
    return len(report.results)


def delete_store(path: str | Path) -> None:
    """Remove a store file and its write-ahead log."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def build_demo(config: DemoConfig | None = None) -> DemoReport:
    """Build (or finish) the demo store: train, write and index every layer of each model, in order."""
    from itda_core.trainer import TrainConfig, Trainer

    config = config or DemoConfig()
    log = config.log
    start = time.perf_counter()
    report = DemoReport()
    if config.rebuild:
        delete_store(config.store)
        log(f"removed {config.store}; building from scratch")
    _check_no_other_budget(config)
    statuses = [model_status(config, name) for name in config.models]
    if all(s.complete for s in statuses):
        for name in config.models:  # a store built before atom maps existed gets them now
            _map_atoms(config, name, name)
        report.models = statuses
        report.seconds = time.perf_counter() - start
        return report
    corpus = config.corpus
    loader = config.loader
    if loader is None:
        from itda_core.models import load_model

        def loader(name: str) -> LoadedModel:
            """Load an embedded model on the configured device."""
            return load_model(name, device=config.device)

    for step, (name, status) in enumerate(zip(config.models, statuses, strict=True), start=1):
        tag = f"[{step}/{len(config.models)}] {name}"
        if status.complete:
            log(f"{tag}: all {status.n_layers} layers stored and indexed")
            _map_atoms(config, name, tag)
            report.models.append(status)
            continue
        t0 = time.perf_counter()
        log(f"{tag}: loading the model")
        model = loader(name)
        if corpus is None:
            from itda_core.corpus import load_corpus

            corpus = load_corpus("default")
        train, _held = corpus.split(config.held_out_fraction, config.split_seed)
        # the same documents for every model, in an order whose prefixes sample the whole split
        train = Corpus(train.name, spread(train.documents), train.corpus_id, train.sha256)
        present = {layer for _, layer in _demo_dictionaries(config, model_id=model.model_id)}
        missing = [layer for layer in range(model.n_layers) if layer not in present]
        trained = 0
        if missing:
            log(
                f"{tag}: training {len(missing)} layer(s) on {config.train_documents:,} documents "
                f"({len(present)} already stored)"
            )
            trainer = Trainer(
                model,
                train,
                TrainConfig(
                    layers=missing,
                    k=config.k,
                    init_rule=config.init_rule,
                    max_tokens=None,
                    max_documents=config.train_documents,
                    seq_len=config.seq_len,
                    batch_size=config.batch_size,
                    gram_memory_gib=config.gram_memory_gib,
                    progress=config.progress,
                ),
            )
            dictionaries = trainer.run()
            for itda in dictionaries.values():
                itda.config.stats["document_order"] = (
                    "spread (sha256 of doc_id), see itda_core.jobs.index.spread"
                )
            log(f"{tag}: writing {len(dictionaries)} dictionaries to {config.store}")
            for layer in missing:
                write_dictionary(config.store, dictionaries.pop(layer), model, corpus)
                trained += 1
            del dictionaries
        log(f"{tag}: indexing on up to {config.index_tokens:,} held-out tokens")
        part = index_model(
            config.store,
            model,
            IndexConfig(
                max_tokens=config.index_tokens, batch_size=config.batch_size, progress=config.progress
            ),
        )
        done = model_status(config, name, model.model_id)
        done.trained, done.newly_indexed = trained, len(part.indexed)
        done.seconds = time.perf_counter() - t0
        report.models.append(done)
        log(f"{tag}: ready to browse ({done.present} layers, {done.indexed} indexed, {done.seconds:.0f} s)")
        done.ce_scored = score_layers(config, model, tag)  # browsable meanwhile: the scores join the overview
        _map_atoms(config, name, tag)
        del model
    report.seconds = time.perf_counter() - start
    return report
