"""Similarity results written into the store's ``similarities`` table, in the form the dashboard reads.

Rows are ``(dict_a, dict_b, method, value, details, created)``. ``method`` is ``jaccard`` or a baseline's
display name (``linear CKA``, ``SVCCA``, ...), which the dashboard lists as a measure beside Jaccard.
Symmetric measures are stored once per unordered pair (``dict_a <= dict_b``, the dashboard looks both ways);
R^2 is stored for both orders (``dict_a`` predicts ``dict_b``). Baselines need activations: each model is
loaded (by its stored name, else its source) and run on the first ``tokens`` tokens of the store's held-out
documents; cross-model baselines are computed only between models that tokenise that text identically.
Everything is written in one transaction, replacing earlier rows of the same (pair, method).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from itda_core.config.similarity import ALL_MEASURES, DEFAULT_OPTIONS, JaccardOptions, StoreSimilarityConfig
from itda_core.errors import ITDAError

__all__ = ["JACCARD", "StoreSimilarityConfig", "StoreSimilarityReport", "method_name", "store_similarities"]

JACCARD = "jaccard"


def method_name(measure: str) -> str:
    """The ``method`` string stored for a measure key (jaccard, cka, ...): the baseline's display name."""
    from itda_core.similarity.baselines import MEASURES

    return JACCARD if measure == JACCARD else MEASURES[measure].name


@dataclass
class StoreSimilarityReport:
    """What was written: rows per method, the dictionaries involved, the skipped pairs (and why)."""

    rows: dict[str, int] = field(default_factory=dict)
    dict_ids: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"wrote {sum(self.rows.values()):,} similarity rows for {len(self.dict_ids)} dictionaries "
                 f"in {self.seconds:.1f} s:"]
        lines += [f"  {method}: {n:,}" for method, n in self.rows.items()]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}: {self.skipped[0]}" + (" ..." if len(self.skipped) > 1 else ""))
        return "\n".join(lines)


def _rows(con: Any, dict_ids: list[int] | None) -> pd.DataFrame:
    """The dictionaries to compare (all, or ``dict_ids``, each of which must be stored)."""
    from itda_core.store.similarities import similarity_targets

    df = similarity_targets(con)
    if dict_ids is not None:
        missing = sorted(set(dict_ids) - set(df["dict_id"].astype(int)))
        if missing:
            raise ITDAError(f"no dictionary {missing[0]} in the store")
        df = df[df["dict_id"].isin(dict_ids)]
    if df.empty:
        raise ITDAError("the store holds no dictionaries; write some with `itda train --store`")
    return df.reset_index(drop=True)


def _corpus(con: Any, corpus_id: str, split: str):  # -> Corpus
    """The store's documents of ``corpus_id`` (the ``split`` part; all of them when that part is empty)."""
    from itda_core.corpus import Corpus, Document
    from itda_core.store.similarities import corpus_documents

    docs = corpus_documents(con, corpus_id)
    part = docs if split == "all" else docs[docs["split"] == split]
    if part.empty:
        part, split = docs, "all"
    if part.empty:
        raise ITDAError(f"the store has no documents of corpus {corpus_id}")
    documents = [Document(int(d), str(t), str(s)) for d, t, s in zip(part["doc_id"], part["text"], part["source"],
                                                                          strict=True)]
    return Corpus(f"{corpus_id}:{split}", documents, f"{corpus_id}:store:{split}")


def _load(name: str, source: str, model_id: str, device: str):  # -> LoadedModel
    """The model behind stored dictionaries: by name, else by source; its id must match the stored one."""
    from itda_core.models import load_model

    errors = []
    for spec in dict.fromkeys(s for s in (name, source) if s):
        try:
            model = load_model(spec, device=device)
        except ITDAError as err:
            errors.append(str(err))
            continue
        if model.model_id != model_id:
            raise ITDAError(f"{spec} now loads as {model.model_id}, but the store's dictionaries were built with "
                            f"{model_id}: the baselines would describe another model")
        return model
    raise ITDAError(f"cannot load model {name or model_id} for the baselines: {errors[0] if errors else 'no name'}")


def _jaccard_rows(con: Any, rows: pd.DataFrame, report: StoreSimilarityReport,
                  options: JaccardOptions = DEFAULT_OPTIONS) -> list[tuple]:
    """One ``jaccard`` row per pair: the value under ``options``, and in ``details`` the counts of both atom
    choices and the chance model's universe, from which any other variant follows (jaccard_index)."""
    from itda_core.similarity.jaccard import ATOM_CHOICES, atom_set, pair_universe, shared_count
    from itda_core.store.reader import read_dictionary

    dicts = {int(d): read_dictionary(con, int(d)) for d in rows["dict_id"]}
    sets = {choice: {d: atom_set(itda, choice) for d, itda in dicts.items()} for choice in ATOM_CHOICES}
    ids = sorted(dicts)
    out = []
    for i, a in enumerate(ids):
        for b in ids[i:]:
            counts: dict[str, dict[str, int]] = {}
            try:
                for choice in ATOM_CHOICES:
                    shared, n_a, n_b, how = shared_count(sets[choice][a], sets[choice][b])
                    counts[choice] = {"shared": shared, "n_a": n_a, "n_b": n_b}
            except ITDAError as err:
                report.skipped.append(f"jaccard {a} x {b}: {err}")
                continue
            universe = pair_universe(sets["all"][a], sets["all"][b])
            c = counts[options.atoms]
            value = options.value(c["shared"], c["n_a"], c["n_b"], universe)
            details = {**c, "matched_by": how, "atoms": options.atoms, "index": options.index,
                       "min_atoms": options.min_atoms, "universe": universe, "counts": counts}
            out.append((a, b, JACCARD, value, details))
    return out


def _baseline_rows(rows: pd.DataFrame, corpora: dict[str, Any], config: StoreSimilarityConfig) -> list[tuple]:
    """Activations per model (one pass each), then every measure between every pair of token-compatible
    dictionaries. Runs without a store connection, so writers are not blocked meanwhile."""
    import torch

    from itda_core.similarity.baselines import MEASURES, collect_activations, shared_cross_products

    measures = [m for m in config.measures if m != JACCARD]
    if not measures:
        return []
    group_keys = ["corpus_id", "tokenizer_id", "seq_len", "skip_special_tokens"]
    items: dict[tuple, list[tuple[int, Any]]] = {}  # token-compatibility key -> [(dict_id, activations)]
    tokens_used: dict[tuple, int] = {}
    for (model_id, *key), group in rows.groupby(["model_id", *group_keys], sort=False, dropna=False):
        first = group.iloc[0]
        model = _load(str(first["model_name"] or ""), str(first["source"] or ""), str(model_id), config.device)
        corpus = corpora[str(first["corpus_id"])]
        layers = sorted(set(group["layer"].astype(int)))
        with torch.no_grad():
            acts = collect_activations(model, corpus, layers, config.tokens, seq_len=int(first["seq_len"]),
                                       batch_size=config.batch_size,
                                       skip_special_tokens=bool(first["skip_special_tokens"]), device=model.device,
                                       progress=config.progress)
        bucket = items.setdefault(tuple(key), [])
        n = len(next(iter(acts.values())))
        tokens_used[tuple(key)] = n
        bucket.extend((int(d), acts[int(layer)]) for d, layer in zip(group["dict_id"], group["layer"], strict=True))
        del model
    out = []
    for key, bucket in items.items():
        n = tokens_used[key]
        bucket.sort(key=lambda t: t[0])
        prepared: dict[str, list[Any]] = {}
        details: dict[str, dict[str, Any]] = {}
        for measure in measures:
            options: dict[str, Any] = {}
            if measure == "svcca":
                options["n_directions"] = config.n_directions
            if measure == "relative":  # the same anchor tokens in every model (rows are the same tokens)
                options.update(n_anchors=config.n_anchors, seed=config.anchor_seed)
            prepared[measure] = [MEASURES[measure].prepare(x, **options) for _, x in bucket]
            details[measure] = {"tokens": n, "split": config.split, "corpus_id": key[0], "measure": measure,
                                **options}
        # pair by pair, so that CKA, feature-normalised CKA and R^2 (both ways) share one cross product
        for i, (a, _) in enumerate(bucket):
            for j in range(i, len(bucket)):
                b = bucket[j][0]
                with shared_cross_products():
                    for measure in measures:
                        m, p = MEASURES[measure], prepared[measure]
                        out.append((a, b, m.name, m.pair(p[i], p[j]), details[measure]))
                        if not m.symmetric and j != i:
                            out.append((b, a, m.name, m.pair(p[j], p[i]), details[measure]))
    return out


def store_similarities(store: str | Path, dict_ids: list[int] | None = None,
                       config: StoreSimilarityConfig | None = None) -> StoreSimilarityReport:
    """Compute Jaccard and the baselines between the store's dictionaries (all, or ``dict_ids``) and write them
    into ``similarities`` in one transaction (replacing earlier rows of the same pair and method)."""
    from itda_core.store.connection import connect_readonly
    from itda_core.store.similarities import replace_similarities

    config = config or StoreSimilarityConfig()
    bad = [m for m in config.measures if m not in ALL_MEASURES]
    if bad or not config.measures:
        raise ITDAError(f"unknown measure(s) {bad}; use any of {', '.join(ALL_MEASURES)}")
    if config.tokens < 2:
        raise ITDAError(f"tokens must be at least 2 (got {config.tokens})")
    if config.split not in ("held_out", "train", "all"):
        raise ITDAError(f"split must be held_out, train or all (got {config.split!r})")
    start = time.perf_counter()
    report = StoreSimilarityReport()
    with connect_readonly(store) as con:
        rows = _rows(con, dict_ids)
        report.dict_ids = [int(d) for d in rows["dict_id"]]
        found = _jaccard_rows(con, rows, report, config.jaccard) if JACCARD in config.measures else []
        baselines = any(m != JACCARD for m in config.measures)
        corpora = {str(c): _corpus(con, str(c), config.split) for c in set(rows["corpus_id"])} if baselines else {}
    found += _baseline_rows(rows, corpora, config)
    if not found:
        raise ITDAError("nothing to write: " + (report.skipped[0] if report.skipped else "no comparable pairs"))
    frame = pd.DataFrame(found, columns=["dict_a", "dict_b", "method", "value", "details"])
    frame["details"] = [json.dumps({**d, "config": asdict(config)}, default=str) for d in frame["details"]]
    replace_similarities(store, frame)
    report.rows = dict(Counter(frame["method"]))
    report.seconds = time.perf_counter() - start
    return report
