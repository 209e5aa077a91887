"""``itda export``: a dictionary for SAELens, Neuronpedia or delphi (see docs/export.md)."""

from __future__ import annotations

import typer

from itda_core.cli.derive import from_configs
from itda_core.config.export import ExportConfig


@from_configs
def export_command(config: ExportConfig) -> None:
    """Export a dictionary to the field's tools: a SAELens folder (SAE.load_from_disk; matching pursuit with
    k steps, signed codes through a [D; -D] decoder), Neuronpedia feature batches (from the store's index:
    density, top contexts with per-token values, logits, the atom's source as its explanation), or delphi's
    latent cache (from the store's held-out codes)."""
    if config.format == "saelens":
        from itda_core.export.saelens import export_saelens

        if config.dictionary is not None:
            from itda_core.dictionary import ITDA

            itda = ITDA.load(config.dictionary)
        else:
            from itda_core.store.reader import load_dictionary

            itda = load_dictionary(config.store, int(config.dict_id))  # type: ignore[arg-type]
        out = export_saelens(itda, config.out, overwrite=config.overwrite)
    elif config.format == "neuronpedia":
        from itda_core.export.neuronpedia import export_neuronpedia
        from itda_core.models import load_model

        model = None if (config.model or "").lower() == "none" else (
            load_model(config.model) if config.model else load_model)
        out = export_neuronpedia(config.store, int(config.dict_id), config.out, model=model,  # type: ignore[arg-type]
                                 overwrite=config.overwrite)
    else:
        from itda_core.export.delphi import export_delphi

        out = export_delphi(config.store, int(config.dict_id), config.out,  # type: ignore[arg-type]
                            overwrite=config.overwrite)
    typer.echo(f"wrote the {config.format} export to {out}")


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``itda`` app."""
    app.command("export")(export_command)
