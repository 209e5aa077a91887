"""``itda eval``: CE loss score and reconstruction metrics of a saved dictionary on held-out documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from itda_core.errors import ITDAError

HELP = (
    "Evaluate a saved ITDA dictionary on held-out documents: CE loss score (H* - H0) / (H_orig - H0) with "
    "the residual stream after the dictionary's block replaced by its matching-pursuit reconstruction, KL to "
    "the clean model, FVU, MSE, cosine, L0 and dead atoms. Special tokens (BOS/EOS/PAD/CLS/SEP) and padding "
    "are never counted. Encoders get the reconstruction metrics only. With --store, evaluates the store's "
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


def eval_command(
    dictionary: Annotated[
        Path | None,
        typer.Option(
            help=(
                "A dictionary folder written by 'itda train' (config.json + dictionary.safetensors), e.g. "
                "data/dictionaries/smollm2-135m/blocks.15.hook_resid_post. Give this or --store."
            )
        ),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Evaluate the dictionaries held in this store (choose them with --model and --layers) on the "
                "store's held-out documents, and write the figures into its evaluations table (replacing "
                "earlier ones for the same metric, k and corpus). Give this or --dictionary."
            )
        ),
    ] = None,
    layers: Annotated[
        str,
        typer.Option(help="With --store: layers to evaluate, comma-separated, or 'all'."),
    ] = "all",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help=(
                "Model to run (embedded alias, HF id, folder or .gguf). Default: the model recorded in the "
                "dictionary; it must be the model the dictionary was built on. With --store: evaluate only "
                "this model's dictionaries (its name or model id; default all models)."
            ),
        ),
    ] = None,
    corpus: Annotated[
        str,
        typer.Option(
            help=(
                "Corpus the dictionary was trained on: 'default', a .txt/.jsonl file or a HF dataset. "
                "Evaluation uses its held-out split."
            )
        ),
    ] = "default",
    held_out: Annotated[
        float,
        typer.Option(
            help=(
                "Held-out fraction, as given to 'itda train' (the same split is rebuilt; 0 = evaluate on "
                "the whole corpus, which overlaps the training text)."
            )
        ),
    ] = 0.1,
    k: Annotated[
        int | None, typer.Option(help="Matching-pursuit steps (the L0). Default: the dictionary's k.")
    ] = None,
    max_tokens: Annotated[
        int,
        typer.Option(
            help="Tokens to evaluate (non-special, in document order; 0 = the whole held-out split)."
        ),
    ] = 10_000,
    seq_len: Annotated[
        int | None,
        typer.Option(
            help="Tokens per document (longer ones are truncated). Default: the dictionary's seq_len."
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            help=(
                "Documents per forward pass. Keep it small for big vocabularies (logits are batch x seq_len"
                " x vocab)."
            )
        ),
    ] = 4,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help=(
                "Sweep k x dictionary size (crops to the first n atoms) and plot CE loss score vs L0 (HTML,"
                " and PNG when a browser is available for kaleido)."
            ),
        ),
    ] = False,
    ks: Annotated[
        str, typer.Option(help="With --sweep: the k values (L0) to try, comma-separated.")
    ] = "10,20,40,80",
    sizes: Annotated[
        str,
        typer.Option(
            help=(
                "With --sweep: dictionary sizes, comma-separated. Default: a quarter, a half and all of the"
                " atoms."
            )
        ),
    ] = "",
    out: Annotated[
        Path | None,
        typer.Option(
            help=(
                "JSON file for the results: one object, or with --sweep a list of objects (one per size x k). "
                "Default: results.json; with --store none (the store holds them) unless given."
            )
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help=(
                "With --sweep: path stem of the figure (.html and .png are added). Default: next to --out, "
                "named <out>_sweep."
            )
        ),
    ] = None,
    splice_special: Annotated[
        bool,
        typer.Option(
            help=(
                "Also replace the activation at special-token positions (e.g. BOS) by its reconstruction. "
                "They are never counted either way."
            )
        ),
    ] = True,
    exclude_first: Annotated[
        bool,
        typer.Option(
            "--exclude-first",
            help=(
                "Leave each document's first position out of every metric. Useful for models without a BOS "
                "token, whose first token is an attention sink with a huge norm that dominates FVU and MSE."
            ),
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda or cuda:N.")] = "auto",
    hf_split: Annotated[str, typer.Option(help="Split of a Hugging Face dataset corpus.")] = "train",
    text_field: Annotated[
        str, typer.Option(help="Text field of a .jsonl or Hugging Face dataset corpus.")
    ] = "text",
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Evaluate a dictionary: CE loss score, KL, FVU, MSE, cosine, L0 and dead atoms on held-out text."""
    from itda_core.corpus import load_corpus
    from itda_core.dictionary import ITDA
    from itda_core.evaluation import evaluate, plot_sweep, save_figure, sweep_table
    from itda_core.evaluation import sweep as run_sweep
    from itda_core.models import load_model

    if (dictionary is None) == (store is None):
        raise ITDAError("give either --dictionary DIR (one saved dictionary) or --store PATH (a store's dictionaries)")
    if store is not None:
        _eval_store(
            store, model, layers, k=k, sweep=sweep, ks=ks, sizes=sizes, out=out, max_tokens=max_tokens,
            batch_size=batch_size, splice_special=splice_special, exclude_first=exclude_first, device=device,
            progress=progress,
        )  # fmt: skip
        return
    assert dictionary is not None
    out = out or Path("results.json")
    if not 0 <= held_out < 1:
        raise ITDAError(f"--held-out must be in [0, 1) (got {held_out})")
    itda = ITDA.load(_dictionary_folder(dictionary))
    lm = load_model(model or itda.config.model_name, device=device)
    itda.check_model(lm)
    itda = itda.to(lm.device)
    full = load_corpus(corpus, split=hf_split, text_field=text_field)
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
    options = dict(
        max_tokens=max_tokens or None,
        seq_len=seq_len or itda.config.seq_len,
        batch_size=batch_size,
        splice_special=splice_special,
        exclude_first=exclude_first,
        progress=progress,
    )
    if not sweep:
        result = evaluate(lm, itda, docs, k=k, **options)
        result.to_json(out)
        typer.echo(result.summary())
        typer.echo(f"wrote {out}")
        return
    size_list = parse_ints(sizes, "--sizes") or None
    k_list = parse_ints(ks, "--ks")
    if not k_list:
        raise ITDAError("--ks is empty; give e.g. 10,20,40,80")
    df = run_sweep(lm, itda, docs, ks=k_list, sizes=size_list, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(df.to_dict(orient="records"), indent=2, default=str) + "\n")
    typer.echo(sweep_table(df))
    stem = plot or out.with_name(f"{out.stem}_sweep")
    written, message = save_figure(plot_sweep(df), stem)
    typer.echo(f"wrote {out} and {', '.join(str(p) for p in written)}")
    if message:
        typer.echo(f"note: {message}", err=True)


def parse_layers(spec: str) -> list[int] | None:
    """'all' -> None, '3,5' -> [3, 5] (non-negative integers)."""
    if spec.strip().lower() == "all":
        return None
    try:
        values = [int(part) for part in spec.replace(" ", "").split(",") if part]
    except ValueError as err:
        raise ITDAError(f"cannot read --layers {spec!r}; write e.g. 3,15 or all") from err
    if not values or min(values) < 0:
        raise ITDAError(f"--layers must be non-negative integers or 'all' (got {spec!r})")
    return values


def _eval_store(
    store: Path,
    model: str | None,
    layers: str,
    *,
    k: int | None,
    sweep: bool,
    ks: str,
    sizes: str,
    out: Path | None,
    max_tokens: int,
    batch_size: int,
    splice_special: bool,
    exclude_first: bool,
    device: str,
    progress: bool,
) -> None:
    """``itda eval --store``: evaluate the chosen stored dictionaries and write the figures into the store."""
    from itda_core.jobs.evaluation import StoreEvalConfig, evaluate_store

    if sizes:
        raise ITDAError("--sizes is not available with --store (stored dictionaries are evaluated whole)")
    if sweep:
        k_list: list[int] | None = parse_ints(ks, "--ks")
        if not k_list:
            raise ITDAError("--ks is empty; give e.g. 10,20,40,80")
    else:
        k_list = [k] if k is not None else None
    config = StoreEvalConfig(
        ks=k_list,
        max_tokens=max_tokens or None,
        batch_size=batch_size,
        splice_special=splice_special,
        exclude_first=exclude_first,
        device=device,
        progress=progress,
    )
    report = evaluate_store(store, model, parse_layers(layers), config)
    typer.echo(report.summary())
    if out is not None:
        rows = [r.to_dict() | {"dict_id": d} for d, results in report.results.items() for r in results]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2, default=str) + "\n")
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add ``itda eval`` to ``app``."""
    app.command("eval", help=HELP)(eval_command)
