"""Live work for the dashboard: models and dictionaries cached across reruns, and cached logit effects.

The library does the work (:mod:`itda_core.decompose`: decomposing typed text, an atom's logit effect); the
``cached_*`` wrappers here keep one copy of each model and dictionary per server process
(``st.cache_resource``), so only the first use of a model pays for loading it, and remember which models
could not be loaded.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from itda_core.decompose import logit_effect
from itda_core.dictionary import ITDA
from itda_core.models import LoadedModel
from itda_dashboard import atom_data, data

ENV_DEVICE = "ITDA_DASHBOARD_DEVICE"
ENV_THREADS = "ITDA_DASHBOARD_THREADS"  # a fixed torch thread count for the dashboard's models (1-64)
MAX_THREADS = 64


# ---- threads ------------------------------------------------------------------------------------------------


def threads_for(cpus: int, load: float) -> int:
    """Torch threads for a model run on ``cpus`` cores with ``load`` (the 1-minute load average): the cores
    the other processes leave idle, at least one. On a busy 2-core machine two threads wait on each other
    (a 0.6 s decomposition took 3 s), one thread does not (bench/bench_live_threads.py)."""
    return max(1, min(cpus, round(cpus - load)))


def choose_threads() -> int:
    """Set torch's thread count for the model run that follows, from $ITDA_DASHBOARD_THREADS or else from
    the machine's load now (:func:`threads_for`), and return it.

    ``torch.set_num_threads`` is process-wide: this is called only in the dashboard's server process (by
    :func:`get_model`, just before a page runs a model), never by the library, so training or indexing in
    another process keeps its own setting. Pages of several browser sessions share the process, and so the
    last choice; a choice only changes how fast a run is, never what it computes.
    """
    import torch

    fixed = os.environ.get(ENV_THREADS, "").strip()
    if fixed:
        try:
            n = int(fixed)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_THREADS:
            from itda_core.errors import ITDAError

            raise ITDAError(f"${ENV_THREADS} must be a whole number from 1 to {MAX_THREADS} (got {fixed!r})")
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = threads_for(cpus, load)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# ---- cached resources --------------------------------------------------------------------------------------


def device() -> str:
    """Where the dashboard runs models: $ITDA_DASHBOARD_DEVICE, default cpu."""
    return os.environ.get(ENV_DEVICE, "cpu")


@st.cache_resource(show_spinner=False, max_entries=3)
def cached_model(name: str) -> LoadedModel:
    """A model loaded once per server process (by its name as stored: an alias, a folder, a hub id)."""
    from itda_core.models import load_model

    return load_model(name, device=device())


@st.cache_resource(show_spinner=False, max_entries=6)
def _cached_dictionary(path: str, version: Any, dict_id: int) -> ITDA:
    from itda_core.store.reader import load_dictionary

    itda = load_dictionary(path, dict_id)
    itda.gram()  # computed once, reused by every encode
    return itda


def cached_dictionary(dict_id: int) -> ITDA:
    """A stored dictionary as an ITDA, read once per store version and kept with its Gram matrix."""
    path, v = data.store_key()
    return _cached_dictionary(path, v, int(dict_id))


_LOADED: set[str] = set()
_FAILED: dict[str, str] = {}  # model name -> why it could not be loaded (not retried in this process)


def model_loaded(name: str) -> bool:
    """Whether ``cached_model(name)`` would return at once (the model is already in memory)."""
    return name in _LOADED


def load_error(name: str) -> str | None:
    """Why ``name`` could not be loaded earlier in this process, or None."""
    return _FAILED.get(name)


def forget_error(name: str) -> None:
    """Allow another attempt at loading ``name``."""
    _FAILED.pop(name, None)


def get_model(name: str) -> LoadedModel:
    """The cached model, remembering that it is loaded; a failure is remembered too and re-raised. Every
    caller runs the model next, so this also sets the thread count for that run (:func:`choose_threads`)."""
    choose_threads()
    if name in _FAILED:
        from itda_core.errors import ITDAError

        raise ITDAError(_FAILED[name])
    try:
        model = cached_model(name)
    except Exception as err:  # ITDAError, OSError from the hub, a missing package...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _FAILED[name] = first[:400]
        raise
    _LOADED.add(name)
    return model


def safe_logit_effect(name: str, dict_id: int, atom: int, top: int = 12) -> dict[str, Any] | None:
    """:func:`cached_logit_effect`, or None when the model cannot be loaded (see :func:`load_error`)."""
    try:
        get_model(name)
    except Exception:
        return None
    return cached_logit_effect(name, dict_id, atom, top)


@st.cache_data(show_spinner=False, max_entries=512)
def _logit_effect(name: str, dict_id: int, atom: int, version: Any, top: int) -> dict[str, Any] | None:
    return logit_effect(get_model(name), atom_data.atom_vector(dict_id, atom), top)


def cached_logit_effect(name: str, dict_id: int, atom: int, top: int = 12) -> dict[str, Any] | None:
    """:func:`logit_effect` of a stored atom, cached per atom."""
    return _logit_effect(name, int(dict_id), int(atom), data.store_key()[1], int(top))
