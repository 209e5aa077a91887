from __future__ import annotations

import os

import pytest

# Never reach for the hub from tests: offline errors must come at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.tiny import tiny_corpus, tiny_model


@pytest.fixture(scope="session", params=["gpt2", "llama", "bert"])
def any_tiny_model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def corpus():
    return tiny_corpus()
