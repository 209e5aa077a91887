"""Layer specifications ('all', 'middle', '5', '0-3', '0,4,8-10', '-1'), read with bounds checked first.

Shared by the CLI and the dashboard (whose atom map reads one from its URL), so a spec is untrusted input:
its length is capped, every range is checked against the model's depth before anything is expanded, and an
error quotes at most :data:`QUOTE_CHARS` characters of it.
"""

from __future__ import annotations

from itda_core.errors import ITDAError

MAX_SPEC_CHARS = 1000  # longer than any real list of layers ('0,1,2,...,99' is 289 characters)
QUOTE_CHARS = 80  # what an error message quotes of the input
HELP = "use e.g. 'all', 'middle', '5', '0-3' or '0,4,8-10'"


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, so a message never echoes unbounded input."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def _index(text: str, spec: str) -> int:
    """One layer number, as written (may be negative)."""
    try:
        return int(text)
    except ValueError as err:
        raise ITDAError(f"cannot read layers {clip(spec)!r}; {HELP}") from err


def _absolute(layer: int, n_layers: int, part: str) -> int:
    """A layer index made absolute ('-1' = last), checked to lie in 0..n_layers-1."""
    value = layer + n_layers if layer < 0 else layer
    if not 0 <= value < n_layers:
        raise ITDAError(f"layer {clip(part, 40)!r} out of range: this model has layers 0-{n_layers - 1}")
    return value


def _part(part: str, spec: str, n_layers: int) -> range:
    """The layers of one comma-separated part ('5', '-1' or '2-7'), bounds checked before expanding."""
    if "-" in part[1:]:
        cut = part.index("-", 1)
        lo = _absolute(_index(part[:cut], spec), n_layers, part)
        hi = _absolute(_index(part[cut + 1 :], spec), n_layers, part)
        if hi < lo:
            raise ITDAError(f"layer range {clip(part, 40)!r} runs backwards; write it as {hi}-{lo}")
        return range(lo, hi + 1)
    value = _absolute(_index(part, spec), n_layers, part)
    return range(value, value + 1)


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """Layers from 'all', 'middle', '5', '0-3', '0,4,8-10' or negative indices ('-1' = last), sorted and unique;
    at most ``n_layers`` of them however large the numbers written."""
    if n_layers < 1:
        raise ITDAError("this model has no layers")
    if len(spec) > MAX_SPEC_CHARS:
        raise ITDAError(f"layers {clip(spec)!r} is {len(spec):,} characters long (at most {MAX_SPEC_CHARS}); {HELP}")
    text = spec.strip().lower()
    if text in ("all", "*"):
        return list(range(n_layers))
    if text in ("middle", "mid"):
        return [n_layers // 2]
    chosen: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if part:
            chosen.update(_part(part, spec, n_layers))
    if not chosen:
        raise ITDAError(f"no layers in {clip(spec)!r}; use e.g. 'all', 'middle' or '0-3'")
    return sorted(chosen)
