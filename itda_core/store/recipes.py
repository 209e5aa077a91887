"""Dictionaries trained one way (a :class:`Recipe`: training split, k, seq_len, documents seen and initial-atom
rule), looked up per model: what a resumable build (``itda demo-build``, :mod:`itda_core.jobs.demo`) asks a
store to know which layers it still has to train and index."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

# A dictionary follows the recipe's documents and tie rule when its config records both (recorded since budgets
# are documents and since the rule became an option).
_SAME_RECIPE = ("(TRY_CAST(json_extract(d.config, '$.documents_seen') AS INTEGER) = ? "
                "AND json_extract_string(d.config, '$.init_rule') = ?)")


@dataclass(frozen=True)
class Recipe:
    """How a set of dictionaries was trained: on which split, with which k and seq_len, on how many whole
    documents and with which initial-atom tie rule."""

    train_corpus_id: str
    k: int
    seq_len: int
    documents: int
    init_rule: str

    def params(self) -> list[object]:
        """The query parameters: train split, k and seq_len, then those of the documents-and-rule test."""
        return [self.train_corpus_id, self.k, self.seq_len, self.documents, self.init_rule]


def other_recipe_count(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> int:
    """Dictionaries of the recipe's split, k and seq_len trained on other documents or with another tie rule
    (or not recording them): those a build on this recipe must not mix with."""
    row = con.execute(
        "SELECT COUNT(*) FROM dictionaries d WHERE d.train_corpus_id = ? AND d.k = ? AND d.seq_len = ? "
        f"AND NOT COALESCE({_SAME_RECIPE}, false)",
        recipe.params(),
    ).fetchall()
    return int(row[0][0]) if row else 0


def recipe_layers(
    con: duckdb.DuckDBPyConnection, recipe: Recipe, *, name: str | None = None, model_id: str | None = None
) -> tuple[int, int, int] | None:
    """(n_layers, layers present, layers indexed) of the recipe's dictionaries of one model, by id (else by
    name; of several models of that name the most complete); None when no such model is stored."""
    key, params = ("m.model_id = ?", [model_id]) if model_id else ("m.name = ?", [name])
    rows = con.execute(
        f"""
        SELECT m.n_layers,
               COUNT(DISTINCT d.layer) AS present,
               COUNT(DISTINCT d.layer) FILTER (WHERE d.dict_id IN (SELECT dict_id FROM index_runs))
                   AS indexed
        FROM models m LEFT JOIN dictionaries d
             ON d.model_id = m.model_id AND d.train_corpus_id = ? AND d.k = ? AND d.seq_len = ?
             AND {_SAME_RECIPE}
        WHERE {key}
        GROUP BY m.model_id, m.n_layers
        ORDER BY indexed DESC, present DESC""",
        [*recipe.params(), *params],
    ).fetchall()
    return (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None


def recipe_dictionaries(
    con: duckdb.DuckDBPyConnection, recipe: Recipe, *, model_id: str | None = None, name: str | None = None
) -> list[tuple[int, int]]:
    """(dict_id, layer) of the recipe's dictionaries of one model, by id (else by name), by layer."""
    column, value = ("m.model_id", model_id) if model_id is not None else ("m.name", name)
    rows = con.execute(
        f"SELECT d.dict_id, d.layer FROM dictionaries d JOIN models m USING (model_id) WHERE {column} = ? "
        f"AND d.train_corpus_id = ? AND d.k = ? AND d.seq_len = ? AND {_SAME_RECIPE} ORDER BY d.layer",
        [value, *recipe.params()],
    ).fetchall()
    return [(int(d), int(layer)) for d, layer in rows]


__all__ = ["Recipe", "other_recipe_count", "recipe_dictionaries", "recipe_layers"]
