"""Typer commands derived from config dataclasses: a command's parameter annotated with a dataclass becomes
that dataclass's fields as options (help, default and type from the field), and the command receives the
built config. Options are thus declared once, in the config (:func:`itda_core.options.option`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer


def _cli_fields(config: type) -> list[dataclasses.Field]:
    """The fields of ``config`` that appear on the command line."""
    return [f for f in dataclasses.fields(config) if f.init and f.metadata.get("cli", True)]


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory called; as text for a ``text=`` field), or ``...`` if required."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ...
    text = f.metadata.get("text")
    return text[1](value) if text else value


def _field_type(config: type, f: dataclasses.Field) -> Any:
    """The type of one field, resolved in its module (fields the CLI leaves out may name types that are
    imported only for type checking, so the class is not resolved as a whole)."""
    if f.metadata.get("text"):
        return str
    if not isinstance(f.type, str):
        return f.type
    return eval(f.type, vars(sys.modules[config.__module__]))  # an annotation string of the config's own module


def _parameter(f: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    """The Typer parameter for one field: ``--field-name`` (or its ``flag``); a boolean is a flag, with a
    ``--no-x`` form when it is on by default."""
    meta = f.metadata
    help_text = meta.get("help")
    if help_text is None:
        raise TypeError(f"config field {f.name!r} has no help text; declare it with itda_core.options.option")
    if meta.get("argument"):
        info = typer.Argument(help=help_text)
    else:
        name = meta.get("flag") or "--" + f.name.replace("_", "-")
        on_by_default = annotation is bool and _default(f) is True  # a switch that is on needs its --no- form
        decls = [f"{name}/--no-{name[2:]}" if on_by_default else name]
        if meta.get("short"):
            decls.append(meta["short"])
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
        # long choice lists squeeze the option names in an 80-column help; the help text names the choices
        metavar = "CHOICE" if len("|".join(map(str, choices))) > 10 else None
        info = typer.Option(*decls, help=help_text, metavar=metavar)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_default(f),
                             annotation=Annotated[annotation, info])


def from_configs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Expand every parameter of ``fn`` annotated with a dataclass into that dataclass's fields; other
    parameters (annotated for Typer as usual) stay. Two configs with a field of the same name are an error."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    configs: dict[str, tuple[type, list[dataclasses.Field]]] = {}
    seen: dict[str, str] = {}
    for name, param in inspect.signature(fn).parameters.items():
        annotation = hints.get(name, param.annotation)
        if dataclasses.is_dataclass(annotation):
            fields = _cli_fields(annotation)
            configs[name] = (annotation, fields)
            for f in fields:
                params.append(_parameter(f, _field_type(annotation, f)))
                owner = seen.setdefault(f.name, annotation.__name__)
                if owner != annotation.__name__:
                    raise TypeError(f"{fn.__name__}: option {f.name!r} is declared by both {owner} and "
                                    f"{annotation.__name__}")
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
            seen.setdefault(name, fn.__name__)

    @functools.wraps(fn)
    def command(**values: Any) -> Any:
        built = {name: config(**{f.name: _value(f, values.pop(f.name)) for f in fields})
                 for name, (config, fields) in configs.items()}
        return fn(**built, **values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return command



def _value(f: dataclasses.Field, value: Any) -> Any:
    """A command-line value as the field's type (a ``text=`` field parsed from its string)."""
    text = f.metadata.get("text")
    return text[0](value) if text else value
