"""Fixtures of the evaluation tests: the tiny models and the tiny corpus (one of each per test module)."""

from __future__ import annotations

import pytest

from itda_core.corpus import Corpus
from itda_core.models import LoadedModel
from tests.tiny import tiny_corpus, tiny_model


@pytest.fixture(scope="module")
def llama() -> LoadedModel:
    return tiny_model("llama")


@pytest.fixture(scope="module")
def gpt2() -> LoadedModel:
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def bert() -> LoadedModel:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def docs() -> Corpus:
    return tiny_corpus()
