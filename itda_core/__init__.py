"""ITDA: Inference-Time Decomposition of Activations.

The public API is small and imported lazily, so that `itda --help` stays instant:
``load_model``, ``load_corpus``, ``extract``, ``matching_pursuit``, ``reconstruct``, ``ITDA``, ``train``,
``jaccard`` (its options and matrices), ``evaluate``. The store lives in ``itda_core.store``.
"""

from __future__ import annotations

from itda_core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ITDAError": "itda_core.errors",
    "load_model": "itda_core.models",
    "LoadedModel": "itda_core.models",
    "load_corpus": "itda_core.corpus",
    "Corpus": "itda_core.corpus",
    "Document": "itda_core.corpus",
    "extract": "itda_core.extraction",
    "ExtractConfig": "itda_core.extraction",
    "ActivationBatch": "itda_core.extraction",
    "Provenance": "itda_core.provenance",
    "matching_pursuit": "itda_core.mp",
    "reconstruct": "itda_core.mp",
    "ITDA": "itda_core.dictionary",
    "train": "itda_core.trainer",
    "TrainConfig": "itda_core.trainer",
    "jaccard": "itda_core.similarity",
    "JaccardOptions": "itda_core.similarity.jaccard",
    "jaccard_by_span": "itda_core.similarity",
    "jaccard_matrix": "itda_core.similarity",
    "model_jaccard": "itda_core.similarity",
    "model_jaccard_matrix": "itda_core.similarity",
    "evaluate": "itda_core.evaluation",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
