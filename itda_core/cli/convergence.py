"""``itda convergence``: Jaccard of each training checkpoint's dictionaries against the final checkpoint's,
per layer, as a table and a plotly line plot (logic in :mod:`itda_core.similarity.convergence`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from itda_core.errors import ITDAError

HELP = (
    "Checkpoint convergence (the paper's appendix): train one ITDA per layer for every checkpoint on the same "
    "prompts and report each one's Jaccard against the final checkpoint's (the LAST one given). Checkpoints: "
    "model folders, HF ids, or id@revision (e.g. EleutherAI/pythia-70m@step1000). --out PLOT.html saves the "
    "plot and, next to it, PLOT.csv and PLOT.json (PLOT.png too when kaleido is installed)."
)


def register(app: typer.Typer) -> None:
    """Add ``itda convergence`` to ``app``."""

    @app.command("convergence", help=HELP)
    def convergence(
        extra: Annotated[list[str] | None, typer.Argument(help="More checkpoints (so --checkpoints A B C works).")] = (
            None
        ),
        checkpoints: Annotated[
            list[str] | None, typer.Option("--checkpoints", help="Checkpoints in training order; last = final.")
        ] = None,
        layers: Annotated[str, typer.Option(help="Layers, e.g. 'all' or '0-5'.")] = "all",
        tokens: Annotated[int, typer.Option(help="Tokens per checkpoint for the dictionaries.")] = 100_000,
        k: Annotated[int, typer.Option(help="Matching-pursuit steps (L0).")] = 40,
        threshold: Annotated[float | None, typer.Option(help="Dictionary threshold (default 0.3 / d_model).")] = None,
        corpus: Annotated[str, typer.Option(help="'default', a .txt/.jsonl file or a HF dataset.")] = "default",
        split: Annotated[str, typer.Option(help="train, held_out or all.")] = "train",
        seq_len: Annotated[int, typer.Option(help="Tokens per prompt.")] = 128,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        out: Annotated[Path | None, typer.Option(help="Save the plot as .html (plus .csv/.json tables).")] = None,
        progress: Annotated[bool, typer.Option(help="Show a progress bar per checkpoint.")] = True,
        png: Annotated[bool, typer.Option(help="Also save PLOT.png (needs kaleido and a browser).")] = True,
        steps: Annotated[
            str | None, typer.Option(help="Training step of each checkpoint for the plot's x axis, e.g. 50,100,1000.")
        ] = None,
    ) -> None:
        from itda_core.layers import parse_layers
        from itda_core.similarity.convergence import ConvergenceConfig, checkpoint_convergence, convergence_figure

        names = [*(checkpoints or []), *(extra or [])]
        if len(names) < 2:
            raise ITDAError("give at least two checkpoints: --checkpoints STEP1 STEP2 ... FINAL")
        if out is not None and out.suffix.lower() != ".html":
            raise ITDAError(f"--out must end in .html (got {out.name})")
        if split not in ("train", "held_out", "all"):
            raise ITDAError(f"--split must be train, held_out or all (got {split!r})")
        step_list = None
        if steps is not None:
            try:
                step_list = [int(v) for v in steps.split(",") if v.strip()]
            except ValueError as err:
                raise ITDAError(f"cannot read --steps {steps!r}; give integers like 50,100,1000") from err
            if len(step_list) != len(names):
                raise ITDAError(f"--steps has {len(step_list)} values for {len(names)} checkpoints")
        layer_list = None
        if layers.strip().lower() not in ("all", "*"):
            from itda_core.models import load_model
            from itda_core.similarity.convergence import _split

            name, rev = _split(names[-1])
            layer_list = parse_layers(layers, load_model(name, device="cpu", revision=rev).n_layers)
        config = ConvergenceConfig(layers=layer_list, tokens=tokens, k=k, threshold=threshold, seq_len=seq_len,
                                   corpus=corpus, split=split, device=device, progress=progress)
        result = checkpoint_convergence(names, config)
        frame = result.to_frame()
        typer.echo(f"Jaccard vs the final checkpoint ({result.labels[-1]}), dictionaries on {result.tokens:,} "
                   "tokens each:")
        typer.echo(frame.to_string(float_format=lambda v: f"{v:.3f}"))
        if out is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        fig = convergence_figure(result, steps=step_list)
        frame.to_csv(out.with_suffix(".csv"))
        out.with_suffix(".json").write_text(json.dumps(result.to_dict(), indent=2))
        tables = [out.with_suffix(".csv"), out.with_suffix(".json")]
        if png:  # the PNG is optional: save_figure finds the browser kaleido needs, or says why there is none
            from itda_core.evaluation.sweep import save_figure

            figures, message = save_figure(fig, out)
            if message:
                typer.echo(f"({message})")
        else:
            fig.write_html(str(out), include_plotlyjs=True)
            figures = [out]
        typer.echo("saved " + ", ".join(map(str, [figures[0], *tables, *figures[1:]])))
