"""Layer specifications: the forms the CLI documents, and bounds checked before anything is expanded (a
shared dashboard link or a typo like ``0-20000000`` once took 2 GB and printed a 190 MB error line)."""

from __future__ import annotations

import tracemalloc

import pytest

from itda_core.errors import ITDAError
from itda_core.layers import MAX_SPEC_CHARS, QUOTE_CHARS, clip, parse_layers


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", list(range(6))),
        ("middle", [3]),
        ("2", [2]),
        ("0-2", [0, 1, 2]),
        ("0,4-5", [0, 4, 5]),
        ("-1", [5]),
        ("-2--1", [4, 5]),
        ("1, 1, 0", [0, 1]),
        ("0-5,2-3", list(range(6))),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 6) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [("7", "out of range"), ("a-b", "cannot read"), ("3-1", "backwards"), (",", "no layers"), ("-7", "out of range")],
)
def test_parse_layers_errors(spec, message):
    with pytest.raises(ITDAError, match=message):
        parse_layers(spec, 6)


@pytest.mark.parametrize("spec", ["0-20000000", f"0-{10**12}", f"{-(10**12)}-3", "0-10000000,1"])
def test_huge_range_is_rejected_without_expanding(spec):
    tracemalloc.start()
    try:
        with pytest.raises(ITDAError) as info:
            parse_layers(spec, 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "out of range" in message and "layers 0-29" in message
    assert len(message) < 200 and "\n" not in message
    assert peak < 1_000_000, f"{peak:,} bytes allocated: the range was expanded"


def test_long_spec_is_refused_and_not_echoed():
    spec = ",".join(["99999"] * 50_000)  # 300,000 characters: every layer out of range
    with pytest.raises(ITDAError, match="characters long") as info:
        parse_layers(spec, 30)
    assert len(str(info.value)) < 300
    with pytest.raises(ITDAError) as info:
        parse_layers("x" * (MAX_SPEC_CHARS - 5), 30)
    assert "cannot read" in str(info.value) and len(str(info.value)) < 200


def test_error_quotes_are_clipped():
    assert clip("abc") == "abc"
    long = clip("y" * 500)
    assert len(long) == QUOTE_CHARS and long.endswith("…")
