"""``itda convergence``: Jaccard of each training checkpoint's dictionaries against the final checkpoint's,
per layer, as a table and a plotly line plot (logic in :mod:`itda_core.similarity.convergence`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer

from itda_core.cli.derive import from_configs
from itda_core.config.similarity import ConvergenceConfig
from itda_core.errors import ITDAError
from itda_core.options import option

HELP = (
    "Checkpoint convergence (the paper's appendix): train one ITDA per layer for every checkpoint on the same "
    "prompts and report each one's Jaccard against the final checkpoint's (the LAST one given). Checkpoints: "
    "model folders, HF ids, or id@revision (e.g. EleutherAI/pythia-70m@step1000). --out PLOT.html saves the "
    "plot and, next to it, PLOT.csv and PLOT.json (PLOT.png too when kaleido is installed)."
)


@dataclass
class ConvergenceRun:
    """Which checkpoints ``itda convergence`` compares and where the plot goes (the CLI's part; the run's
    options are :class:`ConvergenceConfig`)."""

    extra: list[str] | None = option(None, argument=True, help="More checkpoints (so --checkpoints A B C works).")
    checkpoints: list[str] | None = option(None, help="Checkpoints in training order; last = final.")
    out: Path | None = option(None, help="Save the plot as .html (plus .csv/.json tables).")
    png: bool = option(True, help="Also save PLOT.png (needs kaleido and a browser).")
    steps: str | None = option(None, help="Training step of each checkpoint for the plot's x axis, e.g. 50,100,1000.")


def _steps(spec: str | None, n: int) -> list[int] | None:
    """The ``--steps`` values, one per checkpoint (None when not given)."""
    if spec is None:
        return None
    try:
        steps = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError as err:
        raise ITDAError(f"cannot read --steps {spec!r}; give integers like 50,100,1000") from err
    if len(steps) != n:
        raise ITDAError(f"--steps has {len(steps)} values for {n} checkpoints")
    return steps


def register(app: typer.Typer) -> None:
    """Add ``itda convergence`` to ``app``."""

    @app.command("convergence", help=HELP)
    @from_configs
    def convergence(run: ConvergenceRun, config: ConvergenceConfig) -> None:
        """Train every checkpoint's dictionaries and print (or plot) their Jaccard against the final one's."""
        from itda_core.similarity.convergence import checkpoint_convergence, convergence_figure

        names = [*(run.checkpoints or []), *(run.extra or [])]
        if len(names) < 2:
            raise ITDAError("give at least two checkpoints: --checkpoints STEP1 STEP2 ... FINAL")
        out = run.out
        if out is not None and out.suffix.lower() != ".html":
            raise ITDAError(f"--out must end in .html (got {out.name})")
        step_list = _steps(run.steps, len(names))
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
        if run.png:  # the PNG is optional: save_figure finds the browser kaleido needs, or says why there is none
            from itda_core.evaluation.sweep import save_figure

            figures, message = save_figure(fig, out)
            if message:
                typer.echo(f"({message})")
        else:
            fig.write_html(str(out), include_plotlyjs=True)
            figures = [out]
        typer.echo("saved " + ", ".join(map(str, [figures[0], *tables, *figures[1:]])))
