"""Store commands: ``itda demo`` (the main job), ``itda index``, ``itda demo-build`` and ``itda store-info``
(see docs/store.md).

Heavy imports happen inside the commands so that ``itda --help`` stays instant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from itda_core.cli.derive import from_configs
from itda_core.config.demo import DemoConfig
from itda_core.config.index import IndexConfig
from itda_core.config.loading import LoadingConfig
from itda_core.options import DEVICE_HELP, option
from itda_core.store.connection import DEFAULT_STORE

StoreOpt = Annotated[Path, typer.Option(help="The DuckDB store file.")]


def print_summary(store: Path) -> None:
    """A short, human-readable description of a store."""
    from itda_core.store.connection import connect_readonly
    from itda_core.store.queries import store_summary

    with connect_readonly(store) as con:
        info = store_summary(con)
    size = store.stat().st_size / 2**20
    typer.echo(f"store {store} ({size:,.1f} MiB, schema v{info['schema_version']})")
    for c in info["corpora"]:
        split = (
            f", held-out fraction {c['held_out_fraction']:g} (seed {c['split_seed']})"
            if c["held_out_fraction"] is not None
            else ""
        )
        typer.echo(f"  corpus {c['corpus_id']}: {c['n_documents']:,} documents{split}")
    if not info["models"]:
        typer.echo("  no models yet")
    for m in info["models"]:
        typer.echo(
            f"  {m['name']:14} {m['n_layers']:>3} layers, d_model {m['d_model']:>4}: {m['n_dictionaries']} "
            f"dictionaries ({m['n_indexed']} indexed), {int(m['n_atoms']):,} atoms"
        )
    counts = info["counts"]
    typer.echo(f"  rows: {counts['atoms']:,} atoms, {counts['tokens']:,} tokens, {counts['codes']:,} codes")


@dataclass
class IndexTarget:
    """Which store and models ``itda index`` encodes with (the CLI's part)."""

    store: Path = option(DEFAULT_STORE, help="The DuckDB store file.")
    model: list[str] | None = option(None, short="-m", help="Only this model (name or id; repeatable).")
    device: str = option("auto", help=DEVICE_HELP)


@from_configs
def index_command(target: IndexTarget, config: IndexConfig, loading: LoadingConfig) -> None:
    """Encode the held-out documents with every stored dictionary (MP, the dictionary's k) and store per-atom
    top contexts, quantile samples, density and a signed coefficient histogram. One forward pass per model
    serves all its layers."""
    from itda_core.jobs.index import index_store
    from itda_core.models.choice import load_up_to
    from itda_core.store.held_out import pending

    deepest: dict[str, int] = {}  # per model, the deepest layer to index: a truncated load stops there
    for r in pending(target.store, reindex=config.reindex) if loading.truncate else []:
        deepest[r["model_name"]] = max(deepest.get(r["model_name"], 0), int(r["layer"]))
    report = index_store(target.store, lambda name: load_up_to(name, deepest.get(name), target.device, loading),
                         config, models=target.model or None)
    typer.echo(report.summary())

@from_configs
def demo_build_command(config: DemoConfig) -> None:
    """Build the default store (a dictionary for every layer of each embedded model, indexed on held-out
    text), or finish one that was interrupted. A complete store returns at once."""
    from itda_core.jobs.demo import build_demo

    report = build_demo(config)
    typer.echo(report.summary())
    print_summary(config.store)

def store_info_command(
    store: StoreOpt = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    upgrade: Annotated[
        bool, typer.Option(help="First bring a store of an older schema version up to this one, in place.")
    ] = False,
) -> None:
    """Summarise a store: schema version, corpora, models with their dictionaries, row counts."""
    if upgrade:
        from itda_core.store.connection import connect_write

        with connect_write(store):  # opening for writing runs the migrations
            pass
    if not as_json:
        print_summary(store)
        return
    from itda_core.store.connection import connect_readonly
    from itda_core.store.queries import store_summary

    with connect_readonly(store) as con:
        info: dict[str, Any] = store_summary(con)
    typer.echo(json.dumps(info, indent=2, default=str))


@dataclass
class ServeOptions:
    """Whether and where ``itda demo`` serves the dashboard."""

    port: int = option(8501, help="Dashboard port on localhost.")
    serve: bool = option(True, help="Start the dashboard (--no-serve: only build the store).")


@from_configs
def demo(config: DemoConfig, serving: ServeOptions) -> None:
    """The main job: build the default store (three embedded models, every layer, trained and indexed;
    resumable) and open the dashboard. The dashboard starts first and shows each model as soon as it is
    stored; a complete store is reused, so a later launch is up in seconds."""
    import contextlib
    import os

    from itda_core.cli.dashboard import child_process, serve_command_line
    from itda_core.jobs.demo import build_demo
    from itda_core.store.connection import ENV_STORE

    store, port = config.store, serving.port
    with contextlib.ExitStack() as stack:  # the dashboard stops with the demo on every exit path (SIGTERM too)
        server = None
        if serving.serve:
            store.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, ENV_STORE: str(store)}
            server = stack.enter_context(child_process(serve_command_line(store, port), env=env))
            typer.echo(f"dashboard: http://localhost:{port} (models appear as they are built; Ctrl-C stops both)")
        report = build_demo(config)
        typer.echo(report.summary())
        if server is not None:
            typer.echo(f"store complete; dashboard still on http://localhost:{port} (Ctrl-C to stop)")
            server.wait()


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``index``, ``demo-build`` and ``store-info`` to the ``itda`` app."""
    app.command("demo")(demo)
    app.command("index")(index_command)
    app.command("demo-build")(demo_build_command)
    app.command("store-info")(store_info_command)
