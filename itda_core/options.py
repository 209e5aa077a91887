"""Options of the library's configs, declared once: a dataclass field with its help text (and, where the
command line spells it differently, its flag). The CLI derives its options from these fields
(:mod:`itda_core.cli.derive`), so a default or a help text is never written twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def option(default: Any = dataclasses.MISSING, *, help: str, factory: Callable[[], Any] | None = None,
           flag: str | None = None, short: str | None = None, cli: bool = True, argument: bool = False) -> Any:
    """A dataclass field documented by ``help``. ``flag``/``short`` name it on the command line when its field
    name does not (``--skip-special``, ``-m``); ``cli=False`` keeps it out of the CLI (a library-only knob);
    ``argument=True`` makes it a positional argument."""
    meta = {"help": help, "flag": flag, "short": short, "cli": cli, "argument": argument}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def help_of(config: type, name: str) -> str:
    """The help text of one field of a config dataclass (for docs and error messages)."""
    for f in dataclasses.fields(config):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(f"{config.__name__} has no field {name!r}")


# Help texts shared by several configs (written once here).
DEVICE_HELP = "auto (cuda if available), cpu, cuda or cuda:N."
MODEL_HELP = "Embedded alias (smollm2-135m, gemma3-270m, minilm-l6), Hugging Face id, local folder or .gguf file."
CORPUS_HELP = "'default' (embedded English), a .txt/.jsonl file or a Hugging Face dataset name."
