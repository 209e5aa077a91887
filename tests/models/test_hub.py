"""The hub check (itda_core.models.hub): hub ids that cannot load fail at once, in one line, without retries."""

from __future__ import annotations

import pytest

from itda_core.errors import ITDAError
from itda_core.models import load_model


def test_hub_id_without_network_is_one_line():
    with pytest.raises(ITDAError) as info:
        load_model("someone/definitely-not-a-model-xyz", device="cpu")
    assert "\n" not in str(info.value) and "network" in str(info.value)


@pytest.fixture
def no_network(monkeypatch):
    """Every way load_model could reach the hub fails the test: a connection, or transformers loading an id."""
    import socket

    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "create_connection", forbidden)
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", forbidden)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def test_offline_unknown_hub_id_fails_at_once(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ITDAError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set") as info:
        load_model("someone/definitely-not-a-model-xyz", device="cpu")
    assert "\n" not in str(info.value)


def test_unreachable_hub_fails_after_one_probe(no_network, monkeypatch):
    import socket

    calls = []

    def unreachable(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ITDAError, match=r"cannot reach https://huggingface\.co") as info:
        load_model("someone/definitely-not-a-model-xyz", device="cpu")
    assert "\n" not in str(info.value) and "network" in str(info.value)
    assert len(calls) == 1 and calls[0][1] <= 5


@pytest.mark.parametrize("name", ["not a model", "bad::name", "x" * 300])
def test_invalid_hub_id_fails_without_the_network(no_network, name):
    with pytest.raises(ITDAError, match="valid hub id") as info:
        load_model(name, device="cpu")
    assert len(str(info.value)) < 250


def test_cached_hub_id_loads_offline(no_network, monkeypatch):
    import huggingface_hub
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")

    def from_cache(*args, **kwargs):
        raise OSError("read from the cache")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_cache)
    with pytest.raises(ITDAError, match="read from the cache"):  # went on to transformers, which reads the cache
        load_model("someone/cached-model", device="cpu")
