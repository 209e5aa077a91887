"""What there is to work with: ``itda models`` (the embedded models and whether they are installed) and
``itda corpus-stats`` (documents, characters and tokens of a corpus)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from itda_core.options import CORPUS_HELP


def models() -> None:
    """List the embedded offline models and whether their packages are installed."""
    from itda_core.models.embedded import EMBEDDED_MODELS, installed

    for alias, info in EMBEDDED_MODELS.items():
        state = "installed" if installed(alias) else f"missing: {info.packages}"
        typer.echo(f"{alias:14} {info.hf_name:42} {state}")


def corpus_stats(
    corpus: Annotated[str, typer.Option(help=CORPUS_HELP)] = "default",
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Count tokens with these models' tokenizers (repeatable).")
    ] = None,
    seq_len: Annotated[int, typer.Option(help="Truncation length used for the 'usable tokens' column.")] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Documents, characters and tokens of a corpus (per tokenizer, in full and after truncation)."""
    from itda_core.corpus import load_corpus
    from itda_core.models import load_model

    data = load_corpus(corpus)
    rows = []
    for name in model or []:
        tok = load_model(name, device="cpu").tokenizer
        lengths = [len(ids) for ids in tok([d.text for d in data.documents], add_special_tokens=True)["input_ids"]]
        rows.append(
            {
                "model": name,
                "tokens": sum(lengths),
                "tokens_truncated": sum(min(n, seq_len) for n in lengths),
                "docs_at_least_seq_len": sum(n >= seq_len for n in lengths),
            }
        )
    summary = {
        "corpus": data.corpus_id,
        "documents": len(data),
        "characters": sum(len(d.text) for d in data.documents),
        "sha256": data.sha256,
        "seq_len": seq_len,
        "tokenizers": rows,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"{summary['corpus']}: {summary['documents']:,} documents, {summary['characters']:,} characters")
    for row in rows:
        typer.echo(
            f"  {row['model']:14} {row['tokens']:>10,} tokens, {row['tokens_truncated']:>10,} within "
            f"{seq_len} per document, {row['docs_at_least_seq_len']:,} documents >= {seq_len} tokens"
        )


def register(app: typer.Typer) -> None:
    """Add ``models`` and ``corpus-stats`` to the ``itda`` app."""
    app.command("models")(models)
    app.command("corpus-stats")(corpus_stats)
