"""The DuckDB store: dictionaries, their atoms and sources, held-out activity summaries (see docs/store.md).

Persistence only: :func:`write_dictionary` (``itda train --store``, :mod:`~itda_core.store.writer`),
:func:`read_dictionary` (:mod:`~itda_core.store.reader`), :func:`connect_readonly` (the dashboard) with the
functions of :mod:`itda_core.store.queries`. Work over a store (atom statistics, evaluation,
similarity, atom maps, the demo) lives in :mod:`itda_core.jobs`.
"""

from __future__ import annotations

from itda_core.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_STORE": "itda_core.store.connection",
    "StoreError": "itda_core.store.connection",
    "StoreBusy": "itda_core.store.connection",
    "StoreDamaged": "itda_core.store.connection",
    "connect_readonly": "itda_core.store.connection",
    "connect_write": "itda_core.store.connection",
    "transaction": "itda_core.store.connection",
    "SCHEMA_VERSION": "itda_core.store.schema",
    "SchemaMismatch": "itda_core.store.schema",
    "write_dictionary": "itda_core.store.writer",
    "read_dictionary": "itda_core.store.reader",
    "load_dictionary": "itda_core.store.reader",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
