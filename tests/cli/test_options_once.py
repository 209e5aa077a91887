"""Each option of train, index, demo, similarity, eval, layer matching, convergence and atom-map is declared once, in a
config field: the command's options are exactly the fields of the configs it takes, with their defaults and help, so a
second declaration could not drift from the first."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import pytest
import typer

from itda_core.cli.app import app
from itda_core.config.demo import DemoConfig
from itda_core.config.similarity import (
    ALL_MEASURES,
    ConvergenceConfig,
    LayerMatchingConfig,
    StoreSimilarityConfig,
    parse_measures,
)
from itda_core.config.train import TrainConfig

COMMANDS = [("train",), ("index",), ("demo",), ("demo-build",), ("similarity",), ("eval",),
            ("bench", "layer-matching"), ("convergence",), ("atom-map",), ("export",), ("extract",)]


def _command(path: tuple[str, ...]) -> Any:
    """The Click command Typer builds for ``itda <path>``."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


def _configs(command: Any) -> list[type]:
    """The dataclasses the command's function takes (the parameters :func:`from_configs` expands)."""
    fn = inspect.unwrap(command.callback)
    hints = typing.get_type_hints(fn)
    return [hints[name] for name in inspect.signature(fn).parameters if dataclasses.is_dataclass(hints.get(name))]


def _cli_default(f: dataclasses.Field) -> Any:
    """What the command line should show as the field's default: the default (factory called), as text for a
    field written as text."""
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    text = f.metadata.get("text")
    return text[1](value) if text else value


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_is_a_config_field_with_its_default_and_help(path: tuple[str, ...]) -> None:
    command = _command(path)
    configs = _configs(command)
    assert configs, f"itda {' '.join(path)} takes no configs"
    fields = {f.name: f for config in configs for f in dataclasses.fields(config)
              if f.init and f.metadata.get("cli", True)}
    params = {p.name: p for p in command.params if p.name != "help"}
    assert set(params) == set(fields)  # no option declared by hand beside the configs, none lost
    for name, param in params.items():
        f = fields[name]
        assert param.default == _cli_default(f), name
        assert param.help == f.metadata["help"], name
        if getattr(param, "is_flag", False):  # a switch on by default has its --no- form, one off has none
            assert bool(param.secondary_opts) == (param.default is True), name


def test_dictionary_options_come_from_train() -> None:
    """The benchmarks train dictionaries as ``itda train`` does: its defaults and help, declared there once."""
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for config in (LayerMatchingConfig, ConvergenceConfig):
        for f in dataclasses.fields(config):
            if f.name in ("k", "threshold", "seq_len", "batch_size", "init_rule"):
                assert f.default == train[f.name].default, (config.__name__, f.name)
                assert f.metadata["help"] == train[f.name].metadata["help"], (config.__name__, f.name)
    assert LayerMatchingConfig().init_rule == TrainConfig().init_rule
    demo = {f.name: f for f in dataclasses.fields(DemoConfig)}
    for name in ("k", "init_rule", "seq_len", "batch_size", "gram_memory_gib"):
        assert demo[name].default == train[name].default, name
        assert demo[name].metadata["help"] == train[name].metadata["help"], name


def test_store_similarity_default_measures_are_the_stored_ones() -> None:
    """``itda similarity --store``'s default 'all' names the measures the store accepts (and no more)."""
    measures = next(f for f in dataclasses.fields(StoreSimilarityConfig) if f.name == "measures")
    parse, show = measures.metadata["text"]
    assert show(StoreSimilarityConfig().measures) == "all"
    assert parse("all") == ALL_MEASURES == StoreSimilarityConfig().measures
    assert parse("cka, jaccard,cka") == ("cka", "jaccard")
    assert "r2_no_intercept" in parse_measures("all")  # the benchmark's own measure, not a stored one
