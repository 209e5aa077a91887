"""Fixtures of the dashboard tests: the session's store of tiny models, and the environment pointing at it."""

from __future__ import annotations

import pytest

from tests.stores import build_tiny_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """The store of tiny models every page test reads (built once per session)."""
    return build_tiny_store(tmp_path_factory.mktemp("dash"))


@pytest.fixture
def store_env(tiny_store, monkeypatch):
    """:func:`tiny_store`, with $ITDA_STORE pointing the dashboard at it."""
    monkeypatch.setenv("ITDA_STORE", str(tiny_store["path"]))
    return tiny_store
