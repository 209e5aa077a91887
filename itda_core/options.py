"""Options of the library's configs, declared once: a dataclass field with its help text (and, where the
command line spells it differently, its flag). The CLI derives its options from these fields
(:mod:`itda_core.cli.derive`), so a default or a help text is never written twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def option(default: Any = dataclasses.MISSING, *, help: str, factory: Callable[[], Any] | None = None,
           flag: str | None = None, short: str | None = None, cli: bool = True, argument: bool = False,
           text: tuple[Callable[[str], Any], Callable[[Any], str]] | None = None) -> Any:
    """A dataclass field documented by ``help``. ``flag``/``short`` name it on the command line when its field
    name does not (``--skip-special``, ``-m``); ``cli=False`` keeps it out of the CLI (a library-only knob);
    ``argument=True`` makes it a positional argument; ``text=(parse, show)`` writes a value of another type as
    one string on the command line (a list as ``a,b,c``)."""
    meta = {"help": help, "flag": flag, "short": short, "cli": cli, "argument": argument, "text": text}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _field(config: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(config):
        if f.name == name:
            return f
    raise KeyError(f"{config.__name__} has no field {name!r}")


def help_of(config: type, name: str) -> str:
    """The help text of one field of a config dataclass (another config that shares the option reuses it)."""
    return str(_field(config, name).metadata.get("help", ""))


def default_of(config: type, name: str) -> Any:
    """The default of one field of a config dataclass (another config that shares the option reuses it)."""
    f = _field(config, name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def comma_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (a list option written as one string)."""
    return [part.strip() for part in text.split(",") if part.strip()]


COMMA_LIST = (comma_list, ",".join)


# Help texts shared by several configs (written once here).
DEVICE_HELP = "auto (cuda if available), cpu, cuda or cuda:N."
MODEL_HELP = "Embedded alias (smollm2-135m, gemma3-270m, minilm-l6), Hugging Face id, local folder or .gguf file."
CORPUS_HELP = "'default' (embedded English), a .txt/.jsonl file or a Hugging Face dataset name."
