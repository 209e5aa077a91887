"""``itda eval``: CE loss score and reconstruction metrics of a saved dictionary on held-out documents."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

from itda_core.cli.derive import from_configs
from itda_core.cli.options import CorpusChoice, TrainOutput
from itda_core.config.evaluation import DEFAULT_KS, StoreEvalConfig
from itda_core.errors import ITDAError
from itda_core.options import default_of, option

HELP = (
    "Evaluate a saved ITDA dictionary on held-out documents: CE loss score (H* - H0) / (H_orig - H0) with "
    "the residual stream after the dictionary's block replaced by its matching-pursuit reconstruction, KL to "
    "the clean model, FVU, MSE, cosine, L0 and dead atoms. --ce-rule chooses the positions spliced, zero-ablated "
    "and counted (default: as SAEBench); padding is never counted, special tokens never in the reconstruction "
    "metrics. Encoders get the reconstruction metrics only. With --store, evaluates the store's "
    "dictionaries on its held-out documents and records the figures in the store (shown by the dashboard). "
    "See docs/evaluation.md."
)


def parse_ints(spec: str, what: str) -> list[int]:
    """Positive integers from '10,20,40' (empty -> [])."""
    try:
        values = [int(part) for part in spec.replace(" ", "").split(",") if part]
    except ValueError as err:
        raise ITDAError(f"cannot read {what} {spec!r}; write e.g. 10,20,40,80") from err
    bad = [v for v in values if v < 1]
    if bad:
        raise ITDAError(f"{what} must be positive integers (got {bad})")
    return values


def _dictionary_folder(path: Path) -> Path:
    """The folder itself (put back first if a killed save left it only as ``.NAME.old-*``), or a clear error
    listing the dictionaries below it."""
    from itda_core.dictionary import recover

    recover(path)
    if (path / "config.json").is_file():
        return path
    if path.is_dir():
        found = sorted(
            p.parent for p in path.glob("*/config.json") if (p.parent / "dictionary.safetensors").is_file()
        )
        if found:
            names = ", ".join(str(p) for p in found[:6]) + (" ..." if len(found) > 6 else "")
            raise ITDAError(
                f"{path} holds {len(found)} dictionaries; pass one of them to --dictionary: {names}"
            )
    raise ITDAError(f"{path} is not an ITDA dictionary folder (one written by 'itda train')")


def _ints(what: str) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """How a list of positive integers is written on the command line: '10,20,40' (``what`` names it in errors)."""
    return (lambda spec: parse_ints(spec, what), lambda values: ",".join(map(str, values)))


@dataclass
class EvalTarget:
    """What ``itda eval`` evaluates and where the results go (the CLI's part; the evaluation's options are
    :class:`StoreEvalConfig`, the corpus :class:`CorpusChoice`)."""

    dictionary: Path | None = option(
        None, help="A dictionary folder written by 'itda train' (config.json + dictionary.safetensors), e.g. "
        "data/dictionaries/smollm2-135m/blocks.15.hook_resid_post. Give this or --store.")
    store: Path | None = option(
        None, help="Evaluate the dictionaries held in this store (choose them with --model and --layers) on the "
        "store's held-out documents, and write the figures into its evaluations table (replacing earlier ones "
        "for the same metric, CE rule, k and corpus). Give this or --dictionary.")
    layers: str = option(
        "all", help="With --store: layers to evaluate, as for 'itda train' ('all', '3', '0-3', '0,5,10-12', "
        "'-1'), read against each model's depth.")
    model: str | None = option(
        None, short="-m", help="Model to run (embedded alias, HF id, folder or .gguf). Default: the model recorded "
        "in the dictionary; it must be the model the dictionary was built on. With --store: evaluate only this "
        "model's dictionaries (its name or model id; default all models).")
    held_out: float = option(
        default_of(TrainOutput, "held_out"), help="Held-out fraction of the --corpus the dictionary was trained "
        "on, as given to 'itda train' (the same split is rebuilt and evaluated; 0 = evaluate on the whole "
        "corpus, which overlaps the training text).")
    k: int | None = option(None, help="Matching-pursuit steps (the L0). Default: the dictionary's k.")
    seq_len: int | None = option(
        None, help="Tokens per document (longer ones are truncated). Default: the dictionary's seq_len.")
    sweep: bool = option(False, help="Sweep k x dictionary size (crops to the first n atoms) and plot CE loss "
                         "score vs L0 (HTML, and PNG when a browser is available for kaleido).")
    ks: list[int] = option(factory=lambda: list(DEFAULT_KS), text=_ints("--ks"),
                           help="With --sweep: the k values (L0) to try, comma-separated.")
    sizes: list[int] = option(factory=list, text=_ints("--sizes"), help="With --sweep: dictionary sizes, "
                              "comma-separated. Default: a quarter, a half and all of the atoms.")
    out: Path | None = option(
        None, help="JSON file for the results: one object, or with --sweep a list of objects (one per size x k). "
        "Default: results.json; with --store none (the store holds them) unless given.")
    plot: Path | None = option(None, help="With --sweep: path stem of the figure (.html and .png are added). "
                               "Default: next to --out, named OUT_sweep.")


@from_configs
def eval_command(target: EvalTarget, text: CorpusChoice, options: StoreEvalConfig) -> None:
    """Evaluate a dictionary: CE loss score, KL, FVU, MSE, cosine, L0 and dead atoms on held-out text."""
    from itda_core.corpus import load_corpus
    from itda_core.dictionary import ITDA
    from itda_core.evaluation import evaluate, plot_sweep, save_figure, sweep_table
    from itda_core.evaluation import sweep as run_sweep
    from itda_core.models import load_model

    if (target.dictionary is None) == (target.store is None):
        raise ITDAError("give either --dictionary DIR (one saved dictionary) or --store PATH (a store's dictionaries)")
    if target.store is not None:
        _eval_store(target, options)
        return
    assert target.dictionary is not None
    out, held_out = target.out or Path("results.json"), target.held_out
    if not 0 <= held_out < 1:
        raise ITDAError(f"--held-out must be in [0, 1) (got {held_out})")
    itda = ITDA.load(_dictionary_folder(target.dictionary))
    lm = load_model(target.model or itda.config.model_name, device=options.device)
    itda.check_model(lm)
    itda = itda.to(lm.device)
    full = load_corpus(text.corpus, split=text.hf_split, text_field=text.text_field)
    if held_out > 0:
        train_part, docs = full.split(held_out)
        if itda.config.corpus_id and itda.config.corpus_id != train_part.corpus_id:
            typer.echo(
                f"warning: the dictionary was built on {itda.config.corpus_id!r}, not on "
                f"{train_part.corpus_id!r}; the evaluation documents may overlap its training text",
                err=True,
            )
    else:
        docs = full
        typer.echo(
            "warning: --held-out 0 evaluates on the whole corpus, including the training text", err=True
        )
    run = dict(
        max_tokens=options.max_tokens,
        seq_len=target.seq_len or itda.config.seq_len,
        batch_size=options.batch_size,
        ce_rule=options.ce_rule,
        exclude_first=options.exclude_first,
        progress=options.progress,
    )
    if not target.sweep:
        result = evaluate(lm, itda, docs, k=target.k, **run)
        result.to_json(out)
        typer.echo(result.summary())
        typer.echo(f"wrote {out}")
        return
    if not target.ks:
        raise ITDAError("--ks is empty; give e.g. 10,20,40,80")
    df = run_sweep(lm, itda, docs, ks=target.ks, sizes=target.sizes or None, **run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(df.to_dict(orient="records"), indent=2, default=str) + "\n")
    typer.echo(sweep_table(df))
    stem = target.plot or out.with_name(f"{out.stem}_sweep")
    written, message = save_figure(plot_sweep(df), stem)
    typer.echo(f"wrote {out} and {', '.join(str(p) for p in written)}")
    if message:
        typer.echo(f"note: {message}", err=True)


def _eval_store(target: EvalTarget, options: StoreEvalConfig) -> None:
    """``itda eval --store``: evaluate the chosen stored dictionaries and write the figures into the store."""
    from itda_core.jobs.evaluation import evaluate_store

    assert target.store is not None
    if target.sizes:
        raise ITDAError("--sizes is not available with --store (stored dictionaries are evaluated whole)")
    if target.sweep:
        if not target.ks:
            raise ITDAError("--ks is empty; give e.g. 10,20,40,80")
        ks: list[int] | None = target.ks
    else:
        ks = [target.k] if target.k is not None else None
    report = evaluate_store(target.store, target.model, target.layers, dataclasses.replace(options, ks=ks))
    typer.echo(report.summary())
    if target.out is not None:
        rows = [r.to_dict() | {"dict_id": d} for d, results in report.results.items() for r in results]
        target.out.parent.mkdir(parents=True, exist_ok=True)
        target.out.write_text(json.dumps(rows, indent=2, default=str) + "\n")
        typer.echo(f"wrote {target.out}")


def register(app: typer.Typer) -> None:
    """Add ``itda eval`` to ``app``."""
    app.command("eval", help=HELP)(eval_command)
