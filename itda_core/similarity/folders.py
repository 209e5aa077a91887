"""Saved dictionaries found under folders and grouped by run (what ``itda similarity`` compares): every
dictionary folder at or below the given paths, loaded and grouped by the folder that holds them, and their
ids in a store."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from itda_core.errors import ITDAError

if TYPE_CHECKING:
    from itda_core.dictionary import ITDA

__all__ = ["find_dictionaries", "group_dictionaries", "store_ids"]

log = logging.getLogger(__name__)


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


def find_dictionaries(paths: list[Path], warn: Callable[[str], None] | None = None) -> list[Path]:
    """Every dictionary folder at or below ``paths``, sorted and without repeats. A dictionary that a killed
    save left only as ``.NAME.old-*`` is put back first; a folder with a dictionary file but not both is an
    error; a hidden folder holding a dictionary (an unfinished save, a backup) is skipped with a warning
    (``warn``, default the log), so that no layer goes missing without a word."""
    from itda_core.dictionary import CONFIG_FILE, TENSOR_FILE, recover

    warn = warn or log.warning
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
                    warn(f"skipping {folder}: a hidden folder (an unfinished save or a copy); pass it by name to "
                         "compare it")
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


def store_ids(store: Path, paths: list[Path], warn: Callable[[str], None] | None = None) -> list[int]:
    """The store's dict_ids of the dictionaries under ``paths`` (each must have been written to the store)."""
    from itda_core.dictionary import ITDA
    from itda_core.store.connection import connect_readonly
    from itda_core.store.reader import find_dictionary

    folders = find_dictionaries(paths, warn)
    ids = []
    with connect_readonly(store) as con:
        for folder in folders:
            dict_id = find_dictionary(con, ITDA.load(folder).config)
            if dict_id is None:
                raise ITDAError(f"{folder} is not in {store}; write it first (itda train --store {store})")
            ids.append(dict_id)
    return ids
