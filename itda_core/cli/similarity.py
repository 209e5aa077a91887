"""``itda similarity``: Jaccard matrices of saved dictionaries (layer x layer, or model x model)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from itda_core.errors import ITDAError

if TYPE_CHECKING:
    import pandas as pd

    from itda_core.dictionary import ITDA
    from itda_core.similarity.jaccard import JaccardOptions

HELP = (
    "Jaccard similarity of saved ITDA dictionaries: the share of source tokens (document, position) two "
    "dictionaries have in common. Give dictionary folders or any folder above them (e.g. the --out of "
    "'itda train'); dictionaries are grouped by the folder that holds them (one group per model run). One "
    "group: its layer x layer matrix. Two groups: layers of the first (rows) x layers of the second. More: "
    "every dictionary against every other. --model-level: one value per pair of groups, from the union of "
    "each group's layers (1..n-1 by default, as in the paper). Dictionaries from different tokenizers are "
    "matched by character spans (see docs/similarity.md). Dictionaries must share the corpus."
)


def _looks_like_itda_config(path: Path) -> bool:
    """Whether ``path`` (a config.json) is an ITDA dictionary's config rather than, say, a model's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"model_id", "layer", "d_model"} <= set(data)


def _candidates(path: Path) -> list[Path]:
    """Folders at or below ``path`` holding either file of a dictionary, after repairing killed saves."""
    from itda_core.dictionary import CONFIG_FILE, TENSOR_FILE, recover_folder

    for parent in sorted({p.parent for pattern in (".*.old-*", ".*.tmp-*") for p in path.rglob(pattern)}):
        recover_folder(parent)
    if (path / CONFIG_FILE).is_file() or (path / TENSOR_FILE).is_file():
        return [path]
    return sorted({c.parent for name in (CONFIG_FILE, TENSOR_FILE) for c in path.rglob(name)})


def find_dictionaries(paths: list[Path]) -> list[Path]:
    """Every dictionary folder at or below ``paths``, sorted and without repeats. A dictionary that a killed
    save left only as ``.NAME.old-*`` is put back first; a folder with a dictionary file but not both is an
    error; a hidden folder holding a dictionary (an unfinished save, a backup) is skipped with a warning, so
    that no layer goes missing without a word."""
    from itda_core.dictionary import CONFIG_FILE, TENSOR_FILE, recover

    found: set[Path] = set()
    for path in paths:
        recover(path)
        if not path.exists():
            raise ITDAError(f"{path} does not exist")
        if path.is_file():
            path = path.parent
        for folder in _candidates(path):
            has_config, has_tensors = (folder / CONFIG_FILE).is_file(), (folder / TENSOR_FILE).is_file()
            relative = folder.relative_to(path).parts if folder != path else ()
            if any(part.startswith(".") for part in relative):
                if has_config and has_tensors:
                    typer.echo(f"warning: skipping {folder}: a hidden folder (an unfinished save or a copy); "
                               "pass it by name to compare it", err=True)
                continue
            if has_config and has_tensors:
                found.add(folder.resolve())
            elif has_tensors or _looks_like_itda_config(folder / CONFIG_FILE):
                missing = CONFIG_FILE if has_tensors else TENSOR_FILE
                raise ITDAError(f"{folder} is an incomplete ITDA dictionary (no {missing}); train that layer again "
                                "with 'itda train' or move the folder away")
    if not found:
        raise ITDAError(
            f"no ITDA dictionaries (folders with {CONFIG_FILE} and {TENSOR_FILE}) under "
            f"{', '.join(map(str, paths))}; train some with 'itda train --out DIR'"
        )
    return sorted(found)


def group_dictionaries(folders: list[Path]) -> dict[str, dict[int, ITDA]]:
    """Load the dictionaries and group them by parent folder: ``{label: {layer: ITDA}}``; labels are the
    folder names, or longer paths where two groups would share a name."""
    from itda_core.dictionary import ITDA

    groups: dict[Path, dict[int, ITDA]] = {}
    for folder in folders:
        itda = ITDA.load(folder)
        layers = groups.setdefault(folder.parent, {})
        if itda.config.layer in layers:
            raise ITDAError(
                f"two dictionaries for layer {itda.config.layer} under {folder.parent}; pass them separately"
            )
        layers[itda.config.layer] = itda
    parents = list(groups)
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in parents]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in parents):
            break
        depth += 1
    return {label: dict(sorted(groups[p].items())) for label, p in zip(labels, parents, strict=True)}


def _parse_layers(spec: str | None, groups: dict[str, dict[int, ITDA]]) -> list[int] | None:
    if spec is None:
        return None
    from itda_core.layers import parse_layers

    n_layers = max(layer for d in groups.values() for layer in d) + 1
    return parse_layers(spec, n_layers)


def _to_json(df: pd.DataFrame, shared: pd.DataFrame | None, kind: str, sources: dict[str, str]) -> str:
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


PathsArg = Annotated[
    list[Path] | None,
    typer.Argument(help="Dictionary folders, or folders above them (searched recursively); with --store optional."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option(
        help="Write Jaccard and the baselines (CKA, SVCCA, relative, R^2) into this store's similarities table "
        "(for the dashboard), for every dictionary in it, or for the given dictionaries (which must be in it)."
    ),
]
MeasuresOpt = Annotated[
    str, typer.Option(help="With --store: 'all' or e.g. 'jaccard,cka,cka_normalised,svcca,relative,r2'.")
]
TokensOpt = Annotated[
    int, typer.Option(help="With --store: first N tokens of the stored held-out text for the baselines (paper 100k).")
]
SplitOpt = Annotated[str, typer.Option(help="With --store: stored documents for the baselines: held_out, train, all.")]
DeviceOpt = Annotated[str, typer.Option(help="With --store: auto, cpu, cuda or cuda:N.")]
ModelLevelOpt = Annotated[
    bool,
    typer.Option(
        "--model-level", help="One value per pair of models: Jaccard of the union of each model's layers."
    ),
]
LayersOpt = Annotated[
    str | None,
    typer.Option(help="Only these layers, e.g. '1-11' or '0,4,8' (default: all; with --model-level 1..n-1)."),
]
MethodOpt = Annotated[
    str,
    typer.Option(help="auto (position keys for one tokenizer, character spans otherwise), keys or spans."),
]
SharedOpt = Annotated[bool, typer.Option("--shared", help="Also show the number of shared atoms per cell.")]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        help="Save to this .csv or .json file instead of printing (CSV: shared counts go to NAME.shared.csv)."
    ),
]
DigitsOpt = Annotated[int, typer.Option(help="Decimals when printing.")]
AtomsOpt = Annotated[
    str,
    typer.Option(help="Which atoms count: 'evidence' (all but the initial atoms picked arbitrarily among rows "
                 "seen once) or 'all' (the paper)."),
]
IndexOpt = Annotated[
    str,
    typer.Option(help="'corrected' (0 = the overlap expected by chance for these sizes, 1 = the most they can "
                 "share) or 'raw' (|A n B| / |A u B|, the paper)."),
]
MinAtomsOpt = Annotated[
    int,
    typer.Option(help="A pair where either dictionary counts fewer atoms than this has no value (nan): a handful "
                 "of atoms cannot say how alike two layers are. 0 = always a value."),
]


def _store_ids(store: Path, paths: list[Path]) -> list[int]:
    """The store's dict_ids of the dictionaries under ``paths`` (each must have been written to the store)."""
    from itda_core.dictionary import ITDA
    from itda_core.store.connection import connect_readonly
    from itda_core.store.reader import find_dictionary

    folders = find_dictionaries(paths)
    ids = []
    with connect_readonly(store) as con:
        for folder in folders:
            dict_id = find_dictionary(con, ITDA.load(folder).config)
            if dict_id is None:
                raise ITDAError(f"{folder} is not in {store}; write it first (itda train --store {store})")
            ids.append(dict_id)
    return ids


def _to_store(store: Path, paths: list[Path], measures: str, tokens: int, split: str, device: str,
              options: JaccardOptions) -> None:
    from itda_core.cli.bench import parse_measures
    from itda_core.jobs.similarity import StoreSimilarityConfig, store_similarities

    config = StoreSimilarityConfig(measures=parse_measures(measures), tokens=tokens, split=split, device=device,
                                   jaccard=options)
    report = store_similarities(store, _store_ids(store, paths) if paths else None, config)
    typer.echo(report.summary())


def register(app: typer.Typer) -> None:
    """Add ``itda similarity`` to ``app``."""

    @app.command("similarity", help=HELP)
    def similarity(
        paths: PathsArg = None,
        model_level: ModelLevelOpt = False,
        layers: LayersOpt = None,
        method: MethodOpt = "auto",
        shared: SharedOpt = False,
        out: OutOpt = None,
        digits: DigitsOpt = 3,
        store: StoreOpt = None,
        measures: MeasuresOpt = "all",
        tokens: TokensOpt = 20_000,
        split: SplitOpt = "held_out",
        device: DeviceOpt = "auto",
        atoms: AtomsOpt = "evidence",  # JaccardOptions' defaults (kept literal so that --help imports no torch)
        index: IndexOpt = "raw",
        min_atoms: MinAtomsOpt = 32,
    ) -> None:
        from itda_core.similarity.jaccard import JaccardOptions
        from itda_core.similarity.matrices import jaccard_matrix, labelled_matrix, model_jaccard_matrix

        options = JaccardOptions(atoms=atoms, index=index, min_atoms=min_atoms)
        if store is not None:
            if out is not None or model_level:
                raise ITDAError("--store writes into the store; run without --store for --out or --model-level")
            _to_store(store, paths or [], measures, tokens, split, device, options)
            return
        if not paths:
            raise ITDAError("give dictionary folders (or --store PATH to compute for a store's dictionaries)")
        if out is not None and out.suffix.lower() not in (".csv", ".json"):
            raise ITDAError(f"--out must end in .csv or .json (got {out.name})")
        folders = find_dictionaries(paths)
        groups = group_dictionaries(folders)
        chosen = _parse_layers(layers, groups)
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
                out.write_text(_to_json(df, counts if shared else None, kind, sources))
            else:
                df.to_csv(out)
                if shared:
                    counts.to_csv(out.with_suffix(".shared.csv"))
            shape = f"{df.shape[0]} x {df.shape[1]}, matched by {df.attrs['method']}"
            typer.echo(f"saved {kind} {options.label} matrix ({shape}) to {out}")
            return
        typer.echo(f"{options.label}, {kind} level, matched by {df.attrs['method']}:")
        typer.echo(df.to_string(float_format=lambda v: f"{v:.{digits}f}"))
        if shared:
            typer.echo("\nshared atoms:")
            typer.echo(counts.to_string())
