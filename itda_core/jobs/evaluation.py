"""Evaluate dictionaries held in a store on the store's held-out documents and record the figures there.

:func:`evaluate_store` is what ``itda eval --store`` calls (and what a demo build can call). For every
chosen dictionary it runs :func:`~itda_core.evaluation.run.evaluate_many` (one pass over the held-out text
per model and layer, the clean and zero-ablated runs shared by all dictionaries and k of that layer) and
writes one ``evaluations`` row per metric: ``value`` is the figure, ``corpus_id`` the evaluated held-out
split, ``n_tokens`` the counted tokens and ``details`` the whole :class:`EvalResult` as JSON (k and CE rule
included). The metrics that depend on the CE rule (``ce_loss_score``, ``kl_div``) are named with it,
``ce_loss_score:saebench``, so that figures of two rules are never one column; rows written before the rule
was recorded are named so at the next write (their details' ``splice_special`` gives their rule).
Each dictionary's rows are written in ONE transaction that first deletes its earlier rows for the same
metric, k and corpus, so re-running replaces figures instead of piling them up; a dictionary rewritten
while it was being evaluated is skipped (its figures would describe the old atoms).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itda_core.config.evaluation import StoreEvalConfig  # apart from torch (the CLI's help reads it)
from itda_core.corpus import Corpus
from itda_core.errors import ITDAError
from itda_core.evaluation.run import EvalResult, evaluate_many
from itda_core.models import LoadedModel

log = logging.getLogger(__name__)

# The EvalResult fields stored as rows (the dashboard shows one column per metric); the rest is in details.
STORED_METRICS = ("ce_loss_score", "kl_div", "fvu", "mse", "cosine", "dead_fraction")
# Those whose value depends on the CE rule (which positions are spliced, zero-ablated and counted): stored
# under ``metric:rule``. The reconstruction metrics are over the same tokens under every rule.
RULE_METRICS = ("ce_loss_score", "kl_div")


def stored_metric(metric: str, ce_rule: str) -> str:
    """The ``evaluations.metric`` of an EvalResult field: ``ce_loss_score:saebench`` for a metric that depends
    on the CE rule, the field's name for the others."""
    return f"{metric}:{ce_rule}" if metric in RULE_METRICS else metric


def stored_metrics(ce_rule: str) -> list[str]:
    """The ``evaluations.metric`` names one evaluation under ``ce_rule`` writes (when every value exists)."""
    return [stored_metric(m, ce_rule) for m in STORED_METRICS]


@dataclass
class StoreEvalReport:
    """What :func:`evaluate_store` did: results per dictionary, dictionaries skipped (with why), timings."""

    results: dict[int, list[EvalResult]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    eval_seconds: float = 0.0
    write_seconds: float = 0.0

    def summary(self) -> str:
        """A few lines for the CLI: one per evaluated (dictionary, k), then the skipped ones."""
        lines = []
        for dict_id, results in self.results.items():
            for r in results:
                score = "n/a" if r.ce_loss_score is None else f"{r.ce_loss_score:.4f}"
                fvu = "n/a" if r.fvu is None else f"{r.fvu:.4f}"
                lines.append(
                    f"dict {dict_id} {r.model_name} L{r.layer} ({r.dictionary_size:,} atoms) k={r.k}: "
                    f"CE loss score {score}, FVU {fvu} on {r.tokens:,} held-out tokens"
                )
        n = sum(len(v) for v in self.results.values())
        lines.append(
            f"stored {n} evaluation(s) of {len(self.results)} dictionaries (evaluation {self.eval_seconds:.1f} s, "
            f"store {self.write_seconds:.1f} s)"
        )
        lines += [f"skipped dict {d}: {why}" for d, why in self.skipped.items()]
        return "\n".join(lines)


def _layers_of(spec: str, rows: list[dict]) -> set[tuple[str, int]]:
    """The (model id, layer) pairs a layer spec ('all', '0-3', '-1', ... as ``itda train --layers``) names,
    read against each model's depth; a model too shallow for it is left out, unless every model is."""
    from itda_core.layers import parse_layers

    depths: dict[str, int] = {}
    for r in rows:
        depth = int(r["n_layers"] or int(r["layer"]) + 1)  # a model row without its depth: the deepest layer seen
        depths[r["model_id"]] = max(depths.get(r["model_id"], 0), depth)
    wanted: set[tuple[str, int]] = set()
    error: ITDAError | None = None
    for model_id, depth in depths.items():
        try:
            wanted.update((model_id, layer) for layer in parse_layers(spec, depth))
        except ITDAError as err:
            error = err
    if not wanted and error is not None:
        raise error
    return wanted


def _chosen(store: Path, model: str | None, layers: Sequence[int] | str | None,
            dict_ids: Sequence[int] | None) -> list[dict]:
    """The store's dictionaries matching a model (name or id), layers (a list, or a spec read against each
    model's depth) and ids, as dicts of columns."""
    from itda_core.store.catalog import dictionary_layers
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store) as con:
        rows = dictionary_layers(con)
    if not rows:
        raise ITDAError(f"store {store} holds no dictionaries; build some with `itda train --store {store}`")
    if model is not None:
        rows = [r for r in rows if model in (r["model_name"], r["model_id"])]
        if not rows:
            raise ITDAError(f"store {store} has no dictionaries of model {model!r}")
    if isinstance(layers, str):
        pairs = _layers_of(layers, rows)
        rows = [r for r in rows if (r["model_id"], int(r["layer"])) in pairs]
        if not rows:
            raise ITDAError(f"store {store} has no dictionaries at layers {layers!r}" + (
                f" of {model}" if model else ""))  # fmt: skip
    elif layers is not None:
        wanted = {int(layer) for layer in layers}
        rows = [r for r in rows if int(r["layer"]) in wanted]
        if not rows:
            raise ITDAError(f"store {store} has no dictionaries at layers {sorted(wanted)}" + (
                f" of {model}" if model else ""))  # fmt: skip
    if dict_ids is not None:
        rows = [r for r in rows if int(r["dict_id"]) in {int(d) for d in dict_ids}]
        if not rows:
            raise ITDAError(f"store {store} has none of the dictionaries {list(dict_ids)}")
    return rows


def held_out_corpus(store: str | Path, corpus_id: str, timeout: float = 30.0) -> Corpus | None:
    """The store's held-out documents of ``corpus_id`` as the Corpus ``load_corpus(...).split(f, seed)[1]``
    gives (same documents, order, id and sha256); None when the corpus has no held-out split."""
    from itda_core.store import evaluations
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store, timeout=timeout) as con:
        return evaluations.held_out_corpus(con, corpus_id)


def evaluation_rows(dict_id: int, result: EvalResult) -> list[tuple[Any, ...]]:
    """The ``evaluations`` rows of one result (created is set by the database): one per stored metric
    that has a value (encoders have no CE loss score)."""
    details = json.dumps(result.to_dict(), default=str)
    rows = []
    for metric in STORED_METRICS:
        value = getattr(result, metric)
        if value is not None:
            rows.append((dict_id, stored_metric(metric, result.ce_rule), float(value), result.corpus_id,
                         result.tokens, details))
    return rows


def write_evaluations(
    store: str | Path, dict_id: int, results: Sequence[EvalResult], written: Any = None, timeout: float = 600.0
) -> str:
    """Replace the dictionary's rows for the same metric (CE rule included), k and corpus by ``results``, in
    one transaction; rows written before the rule was recorded get their rule in their metric's name.

    ``written`` (the dictionary's ``written`` stamp when it was read) guards against a concurrent rewrite.
    Returns '' when written, else why not."""
    from itda_core.store.evaluations import replace_evaluations

    rows = [row for r in results for row in evaluation_rows(dict_id, r)]
    replaced = [(r.corpus_id, r.k) for r in results]
    metrics = sorted({m for r in results for m in stored_metrics(r.ce_rule)})
    return replace_evaluations(store, dict_id, rows, replaced, metrics, written, timeout=timeout,
                               rule_metrics=RULE_METRICS)


def evaluate_store(
    store: str | Path,
    model: str | None = None,
    layers: Sequence[int] | str | None = None,
    config: StoreEvalConfig | None = None,
    *,
    dict_ids: Sequence[int] | None = None,
    loader: Callable[[str], LoadedModel] | None = None,
) -> StoreEvalReport:
    """Evaluate the store's dictionaries (of ``model``, a name or model id, at ``layers``; all by default) on
    the store's held-out documents and write the figures into its ``evaluations`` table. ``layers`` may be a
    spec such as '0-3' or '-1', read against each model's depth (the grammar of ``itda train --layers``).

    ``loader(name) -> LoadedModel`` loads a model (default: :func:`itda_core.models.load_model` on
    ``config.device``). Dictionaries whose corpus has no held-out split, or whose model now loads with
    another model id, are skipped with the reason in the report."""
    from itda_core.store.reader import read_dictionary

    config = config or StoreEvalConfig()
    if config.ks is not None and (not config.ks or min(config.ks) < 1):
        raise ITDAError(f"ks must be positive integers (got {config.ks})")
    store = Path(store)
    if not store.is_file():
        raise ITDAError(f"no store at {store}; build one with `itda demo-build` or `itda train --store {store}`")
    rows = _chosen(store, model, layers, dict_ids)
    if loader is None:
        from itda_core.models import load_model

        def loader(name: str) -> LoadedModel:
            return load_model(name, device=config.device)

    report = StoreEvalReport()
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model_id"], []).append(r)
    for model_id, group in by_model.items():
        lm = loader(group[0]["model_name"])
        if lm.model_id != model_id:
            for r in group:
                report.skipped[int(r["dict_id"])] = f"{r['model_name']} now loads as {lm.model_id}, not {model_id}"
            continue
        passes: dict[tuple[str, int, int], list[dict]] = {}
        for r in group:
            passes.setdefault((r["corpus_id"], int(r["seq_len"]), int(r["layer"])), []).append(r)
        for (corpus_id, seq_len, _layer), targets in passes.items():
            corpus = held_out_corpus(store, corpus_id, timeout=config.timeout)
            if corpus is None:
                for r in targets:
                    report.skipped[int(r["dict_id"])] = (
                        f"corpus {corpus_id} has no held-out documents (train with --held-out to evaluate)"
                    )
                continue
            _evaluate_targets(store, lm, corpus, seq_len, targets, config, report, read_dictionary)
    return report


def _evaluate_targets(
    store: Path,
    lm: LoadedModel,
    corpus: Corpus,
    seq_len: int,
    targets: list[dict],
    config: StoreEvalConfig,
    report: StoreEvalReport,
    read_dictionary: Callable[..., Any],
) -> None:
    """One evaluation pass for the dictionaries of one layer, then one write transaction per dictionary."""
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store, timeout=config.timeout) as con:
        dicts = {int(r["dict_id"]): read_dictionary(con, int(r["dict_id"])).to(lm.device) for r in targets}
    settings, owners = [], []
    for r in targets:
        d = int(r["dict_id"])
        for k in config.ks or [int(r["k"])]:
            settings.append((dicts[d], int(k)))
            owners.append(d)
    t0 = time.perf_counter()
    results = evaluate_many(
        lm,
        settings,
        corpus,
        max_tokens=config.max_tokens,
        seq_len=seq_len,
        batch_size=config.batch_size,
        ce_rule=config.ce_rule,
        exclude_first=config.exclude_first,
        progress=config.progress,
    )
    t1 = time.perf_counter()
    report.eval_seconds += t1 - t0
    for r in targets:
        d = int(r["dict_id"])
        mine = [res for res, owner in zip(results, owners, strict=True) if owner == d]
        why = write_evaluations(store, d, mine, r["written"], timeout=config.timeout)
        if why:
            report.skipped[d] = why
        else:
            report.results[d] = mine
    report.write_seconds += time.perf_counter() - t1


__all__ = [
    "RULE_METRICS",
    "STORED_METRICS",
    "StoreEvalConfig",
    "StoreEvalReport",
    "evaluate_store",
    "evaluation_rows",
    "held_out_corpus",
    "stored_metric",
    "stored_metrics",
    "write_evaluations",
]
