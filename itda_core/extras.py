"""Optional front-end libraries (the ``viz``, ``dashboard``, ``hub`` and ``embedded`` extras), imported where
they are used: a missing one is a one-line error naming the extra to install, never a bare ImportError."""

from __future__ import annotations

import importlib
from types import ModuleType

from itda_core.errors import ITDAError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` (e.g. ``plotly.graph_objects``) or fail with how to install it: ``pip install
    'itda[EXTRA]'``. ``what`` says what needed it (``"the sweep figure"``)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise ITDAError(f"{what} needs {top}, which is not installed: pip install 'itda[{extra}]' "
                        f"(or pip install {top if top != 'umap' else 'umap-learn'})") from err
