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
    "are never counted. Encoders get the reconstruction metrics only. See docs/evaluation.md."
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
    """The folder itself, or a clear error listing the dictionaries below it."""
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
        Path,
        typer.Option(
            help=(
                "A dictionary folder written by 'itda train' (config.json + dictionary.safetensors), e.g. "
                "data/dictionaries/smollm2-135m/blocks.15.hook_resid_post."
            )
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help=(
                "Model to run (embedded alias, HF id, folder or .gguf). Default: the model recorded in the "
                "dictionary; it must be the model the dictionary was built on."
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
        Path,
        typer.Option(
            help=(
                "JSON file for the results: one object, or with --sweep a list of objects (one per size x k)."
            )
        ),
    ] = Path("results.json"),
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


def register(app: typer.Typer) -> None:
    """Add ``itda eval`` to ``app``."""
    app.command("eval", help=HELP)(eval_command)
