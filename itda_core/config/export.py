"""Options of ``itda export`` (:class:`ExportConfig`): which dictionary, which format, where."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from itda_core.errors import ITDAError
from itda_core.options import MODEL_HELP, option

FORMATS = ("saelens", "neuronpedia", "delphi")


@dataclass
class ExportConfig:
    """What to export, as what, and where (a dictionary folder, or a dictionary of a store)."""

    format: Literal["saelens", "neuronpedia", "delphi"] = option(
        "saelens", help="'saelens' (a folder sae_lens.SAE.load_from_disk loads), 'neuronpedia' (feature JSON "
        "from a store's index) or 'delphi' (its latent cache, from a store's codes).")
    out: Path = option(Path("export"), help="Folder to write (refused if it holds files, unless --overwrite).")
    dictionary: Path | None = option(
        None, help="A dictionary folder written by 'itda train' (saelens only). Give this or --store with --dict.")
    store: Path | None = option(None, help="The DuckDB store holding the dictionary (every format).")
    dict_id: int | None = option(None, flag="--dict", help="The store's id of the dictionary (itda store-info, "
                                 "the dashboard's atom pages).")
    model: str | None = option(
        None, short="-m", help=f"Neuronpedia: the model for the top/bottom logits ({MODEL_HELP} Default: the one "
        "recorded with the dictionary; 'none' leaves logits out).")
    overwrite: bool = option(False, help="Replace what --out holds.")

    def __post_init__(self) -> None:
        if (self.dictionary is None) == (self.store is None):
            raise ITDAError("give a dictionary folder (--dictionary) or a store (--store with --dict), not both")
        if self.store is not None and self.dict_id is None:
            raise ITDAError("--store needs --dict ID (itda store-info lists the store's dictionaries)")
        if self.dictionary is not None and self.format != "saelens":
            raise ITDAError(f"--format {self.format} reads a store's index: give --store and --dict")
