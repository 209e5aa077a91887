"""Work over a store: atom statistics on held-out text (``itda index``), evaluation, similarity, atom maps
and the demo. Jobs read and write through :mod:`itda_core.store`, which is persistence only.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IndexConfig": "itda_core.jobs.index",
    "index_model": "itda_core.jobs.index",
    "index_store": "itda_core.jobs.index",
    "DemoConfig": "itda_core.jobs.demo",
    "build_demo": "itda_core.jobs.demo",
    "StoreEvalConfig": "itda_core.jobs.evaluation",
    "StoreEvalReport": "itda_core.jobs.evaluation",
    "evaluate_store": "itda_core.jobs.evaluation",
    "StoreSimilarityConfig": "itda_core.jobs.similarity",
    "store_similarities": "itda_core.jobs.similarity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the public names lazily (torch and the models load only when a job runs)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'itda_core.jobs' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
