"""Work over a store: atom statistics on held-out text (``itda index``), evaluation, similarity, atom maps
and the demo. Jobs read and write through :mod:`itda_core.store`, which is persistence only.
"""

from __future__ import annotations

from itda_core.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
