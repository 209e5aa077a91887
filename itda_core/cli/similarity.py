"""``itda similarity``: Jaccard matrices of saved dictionaries (layer x layer, or model x model)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from itda_core.cli.derive import from_configs
from itda_core.config.similarity import JaccardOptions, StoreSimilarityConfig
from itda_core.errors import ITDAError
from itda_core.options import option

if TYPE_CHECKING:
    import pandas as pd

    from itda_core.dictionary import ITDA

HELP = (
    "Jaccard similarity of saved ITDA dictionaries: the share of source tokens (document, position) two "
    "dictionaries have in common. Give dictionary folders or any folder above them (e.g. the --out of "
    "'itda train'); dictionaries are grouped by the folder that holds them (one group per model run). One "
    "group: its layer x layer matrix. Two groups: layers of the first (rows) x layers of the second. More: "
    "every dictionary against every other. --model-level: one value per pair of groups, from the union of "
    "each group's layers (1..n-1 by default, as in the paper). Dictionaries from different tokenizers are "
    "matched by character spans (see docs/similarity.md). Dictionaries must share the corpus."
)


def _parse_layers(spec: str | None, groups: dict[str, dict[int, ITDA]]) -> list[int] | None:
    """The layers ``--layers`` names, read against the deepest group (None: all)."""
    if spec is None:
        return None
    from itda_core.layers import parse_layers

    n_layers = max(layer for d in groups.values() for layer in d) + 1
    return parse_layers(spec, n_layers)


def _to_json(df: pd.DataFrame, shared: pd.DataFrame | None, kind: str, sources: dict[str, str]) -> str:
    """The matrix (and its shared counts) as JSON, nan written as null."""
    def clean(v: float) -> float | None:
        return None if isinstance(v, float) and math.isnan(v) else v

    data = {
        "kind": kind,
        "method": df.attrs.get("method", ""),
        "rows": [str(i) for i in df.index],
        "columns": [str(c) for c in df.columns],
        "jaccard": [[clean(float(v)) for v in row] for row in df.to_numpy()],
        "sources": sources,
    }
    if shared is not None:
        data["shared"] = [[int(v) for v in row] for row in shared.to_numpy()]
    return json.dumps(data, indent=2)


@dataclass
class SimilarityTarget:
    """What ``itda similarity`` compares and where the matrix goes (the CLI's part; which atoms count is
    :class:`JaccardOptions`, the ``--store`` run's options :class:`StoreSimilarityConfig`)."""

    paths: list[Path] | None = option(
        None, argument=True,
        help="Dictionary folders, or folders above them (searched recursively); with --store optional.")
    model_level: bool = option(
        False, help="One value per pair of models: Jaccard of the union of each model's layers.")
    layers: str | None = option(
        None, help="Only these layers, e.g. '1-11' or '0,4,8' (default: all; with --model-level 1..n-1).")
    method: str = option("auto", help="auto (position keys for one tokenizer, character spans otherwise), keys or "
                         "spans.")
    shared: bool = option(False, help="Also show the number of shared atoms per cell.")
    out: Path | None = option(
        None, help="Save to this .csv or .json file instead of printing (CSV: shared counts go to NAME.shared.csv).")
    digits: int = option(3, help="Decimals when printing.")
    store: Path | None = option(
        None, help="Write Jaccard and the baselines (CKA, SVCCA, relative, R^2) into this store's similarities "
        "table (for the dashboard), for every dictionary in it, or for the given dictionaries (which must be in "
        "it).")


def _warn(message: str) -> None:
    """A library warning (a skipped folder) as one line on stderr."""
    typer.echo(f"warning: {message}", err=True)


def _to_store(store: Path, paths: list[Path], config: StoreSimilarityConfig) -> None:
    """``itda similarity --store``: compute the measures for the store's (or the given) dictionaries."""
    from itda_core.jobs.similarity import store_similarities
    from itda_core.similarity.folders import store_ids

    report = store_similarities(store, store_ids(store, paths, _warn) if paths else None, config)
    typer.echo(report.summary())


def register(app: typer.Typer) -> None:
    """Add ``itda similarity`` to ``app``."""

    @app.command("similarity", help=HELP)
    @from_configs
    def similarity(target: SimilarityTarget, stored: StoreSimilarityConfig, options: JaccardOptions) -> None:
        """Print or save a Jaccard matrix of saved dictionaries, or write the measures into a store."""
        from itda_core.similarity.folders import find_dictionaries, group_dictionaries
        from itda_core.similarity.matrices import jaccard_matrix, labelled_matrix, model_jaccard_matrix

        paths, model_level, method, out = target.paths, target.model_level, target.method, target.out
        if target.store is not None:
            if out is not None or model_level:
                raise ITDAError("--store writes into the store; run without --store for --out or --model-level")
            _to_store(target.store, paths or [], dataclasses.replace(stored, jaccard=options))
            return
        if not paths:
            raise ITDAError("give dictionary folders (or --store PATH to compute for a store's dictionaries)")
        if out is not None and out.suffix.lower() not in (".csv", ".json"):
            raise ITDAError(f"--out must end in .csv or .json (got {out.name})")
        folders = find_dictionaries(paths, _warn)
        groups = group_dictionaries(folders)
        chosen = _parse_layers(target.layers, groups)
        if model_level:
            kind = "model"
            result = model_jaccard_matrix(groups, chosen, method=method, return_shared=True, options=options)
        else:
            if chosen is not None:
                kept = {label: {la: d for la, d in g.items() if la in chosen} for label, g in groups.items()}
                groups = {label: g for label, g in kept.items() if g}
                if not groups:
                    raise ITDAError(f"no dictionaries for layers {chosen}")
            labels = list(groups)
            if len(labels) == 1:
                kind = "layer"
                result = jaccard_matrix(groups[labels[0]], method=method, return_shared=True, options=options)
            elif len(labels) == 2:
                kind = "layer"
                first, second = groups[labels[0]], groups[labels[1]]
                result = jaccard_matrix(first, second, method=method, return_shared=True, options=options)
            else:
                kind = "dictionary"
                items = {f"{label}:L{la}": d for label, g in groups.items() for la, d in g.items()}
                result = labelled_matrix(items, method=method, return_shared=True, options=options)
        df, counts = result
        if kind == "layer":
            names = list(groups)
            df.index.name = f"{names[0]} layer"
            df.columns.name = f"{names[-1]} layer"
            counts.index.name, counts.columns.name = df.index.name, df.columns.name
        sources = {label: str(next(iter(g.values())).config.model_id) for label, g in groups.items()}
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.suffix.lower() == ".json":
                out.write_text(_to_json(df, counts if target.shared else None, kind, sources))
            else:
                df.to_csv(out)
                if target.shared:
                    counts.to_csv(out.with_suffix(".shared.csv"))
            shape = f"{df.shape[0]} x {df.shape[1]}, matched by {df.attrs['method']}"
            typer.echo(f"saved {kind} {options.label} matrix ({shape}) to {out}")
            return
        typer.echo(f"{options.label}, {kind} level, matched by {df.attrs['method']}:")
        typer.echo(df.to_string(float_format=lambda v: f"{v:.{target.digits}f}"))
        if target.shared:
            typer.echo("\nshared atoms:")
            typer.echo(counts.to_string())
