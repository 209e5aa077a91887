"""The small public API: every name itda_core exports resolves, lazily, to what it says."""

from __future__ import annotations

import pytest

import itda_core


@pytest.mark.parametrize("name", [n for n in itda_core.__all__ if n != "__version__"])
def test_every_export_resolves(name):
    obj = getattr(itda_core, name)
    assert callable(obj) or isinstance(obj, type)
    assert getattr(obj, "__name__", name) == name


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        itda_core.nope  # noqa: B018
