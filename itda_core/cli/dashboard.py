"""Dashboard commands: ``itda serve`` (the Streamlit dashboard) and ``itda atom-map`` (UMAP of atoms, cached
in the store). Heavy imports happen inside the commands so that ``itda --help`` stays instant; nothing
here imports the ``dashboard`` package (the server runs it as a script)."""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from itda_core.cli.derive import from_configs
from itda_core.config.atom_maps import UmapParams
from itda_core.errors import ITDAError
from itda_core.options import option
from itda_core.store.connection import DEFAULT_STORE, ENV_STORE


def app_path() -> Path:
    """``dashboard/app.py``: beside ``itda_core`` (a checkout or an install), found without importing it."""
    here = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
    if here.is_file():
        return here
    spec = importlib.util.find_spec("itda_dashboard")  # the dashboard/ folder, installed under this name
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "app.py"
        if candidate.is_file():
            return candidate
    raise ITDAError("cannot find dashboard/app.py; install itda with its dashboard: pip install -e '.[dashboard]'")


TOOLBAR_MODE = "minimal"  # no Deploy button (nor developer menu) in a local research tool


def serve_command_line(store: Path, port: int = 8501, address: str = "localhost") -> list[str]:
    """The ``streamlit run`` command line that serves the dashboard for ``store``. The settings of the
    checkout's ``.streamlit/config.toml`` are passed as flags too: Streamlit reads that file only from the
    current directory, and ``itda serve`` may run from any."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", TOOLBAR_MODE,
        "--", "--store", str(store),
    ]  # fmt: skip


PR_SET_PDEATHSIG = 1  # prctl option: the signal a child gets when its parent dies (Linux)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # a service manager's stop, a closed terminal


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook (Linux): the child asks the kernel for SIGTERM when its parent dies, even by SIGKILL, and
    exits at once if the parent is already gone. prctl is looked up here, in the parent, not after the fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no libc prctl: the handlers and atexit still stop the child
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def stop_child(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``proc`` if it still runs, and kill it if it has not stopped after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _raise_exit(signum: int, _frame: object) -> None:
    """A stop signal as SystemExit(128 + signum), so ``finally`` blocks (and the child's stop) run."""
    raise SystemExit(128 + signum)


@contextmanager
def child_process(command: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run ``command`` as a child that stops with this process on every exit path: leaving the block (normally,
    an error, Ctrl-C), SIGTERM or SIGHUP (turned into SystemExit while the block runs), interpreter exit
    (atexit) and, on Linux, this process being killed outright (the child gets SIGTERM from the kernel). So
    ``itda demo`` or ``itda serve`` stopped by a service manager never leaves Streamlit serving the port."""
    preexec = _die_with_parent() if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(command, env=env, preexec_fn=preexec)

    def cleanup() -> None:
        stop_child(proc)

    atexit.register(cleanup)
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _raise_exit) for sig in STOP_SIGNALS} if main else {}
    try:
        yield proc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        cleanup()
        atexit.unregister(cleanup)


def serve_command(
    store: Annotated[Path, typer.Option(help="The DuckDB store to browse (read-only).")] = DEFAULT_STORE,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
    address: Annotated[
        str,
        typer.Option(help="Address to listen on; localhost by default (0.0.0.0 exposes it to your network)."),
    ] = "localhost",
) -> None:
    """Start the dashboard (Streamlit) on http://localhost:PORT: browse atoms, decompose text live, compare
    dictionaries. The store is only read, so training and indexing can run at the same time."""
    if not 0 < port < 65536:
        raise ITDAError(f"port must be between 1 and 65535 (got {port})")
    store = store.expanduser()
    if not store.is_file():
        typer.echo(
            f"note: no store at {store} yet; the dashboard explains how to build one (itda demo-build)",
            err=True,
        )
    typer.echo(f"ITDA dashboard for {store} on http://{address}:{port} (Ctrl-C stops it)")
    env = {**os.environ, ENV_STORE: str(store)}
    code = 0
    try:
        with child_process(serve_command_line(store, port, address), env=env) as proc:
            code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C (or a TERM) to `itda serve` stops the server too
        code = 0
    if code:
        raise typer.Exit(code)


@dataclass
class AtomMapTarget:
    """Which dictionaries ``itda atom-map`` maps, and how (the CLI's part; the UMAP settings are UmapParams)."""

    store: Path = option(DEFAULT_STORE, help="The DuckDB store.")
    model: list[str] | None = option(None, short="-m", help="Only this model (name, folder name or id; repeatable).")
    layers: str | None = option(None, help="Only these layers, e.g. '10-12' or '0,5' (default: all).")
    joint: bool = option(False, help="One map of the chosen layers together (per model) instead of one per layer.")
    recompute: bool = option(False, help="Compute again maps that are already stored.")
    workers: int = option(0, help="Processes laying out maps at once (0: one per core, at most 4, from 10,000 atoms).")

    def __post_init__(self) -> None:
        """Refuse a negative or excessive number of workers, in one line."""
        if not 0 <= self.workers <= 64:
            raise ITDAError(f"workers must be between 0 and 64 (got {self.workers})")


@from_configs
def atom_map_command(target: AtomMapTarget, params: UmapParams) -> None:
    """Compute 2-D UMAP maps of dictionaries' atoms (cosine) and cache them in the store (table atom_umap),
    for the dashboard's atom map. Maps already stored and up to date are skipped."""
    from itda_core.jobs.atom_maps import choose_dictionaries, compute_atom_maps, has_map, store_atom_map

    store = target.store
    groups = choose_dictionaries(store, target.model, target.layers)
    if target.joint:
        for model_id, group in groups.items():
            if not target.recompute and has_map(store, group):
                typer.echo(f"{model_id}: joint map of {len(group)} dictionaries already stored")
                continue
            n = store_atom_map(store, group, params)
            typer.echo(f"{model_id}: joint map of {len(group)} dictionaries, {n:,} atoms")
        return
    ids = [d for g in groups.values() for d in g]
    done = compute_atom_maps(store, ids, params, recompute=target.recompute, workers=target.workers,
                             log=typer.echo)
    typer.echo(f"mapped {len(done)} dictionaries ({len(ids) - len(done)} already up to date)")


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``atom-map`` to the ``itda`` app."""
    app.command("serve")(serve_command)
    app.command("atom-map")(atom_map_command)
