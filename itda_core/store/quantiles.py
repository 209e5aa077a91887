"""Per-atom summaries of signed MP coefficients, as SQL over a codes relation (atom, doc_id, position, coef).

The same SQL runs in `itda index` (over one dictionary's held-out codes) and in the tests (over known
distributions, through :func:`quantile_bins` and :func:`histogram`), so what is tested is what is stored.

Quantile bins: the n nonzero coefficients of an atom, in ascending signed order, are split into
``n_bins`` equal-probability bins. A value goes to bin ``floor(n_bins * (number of values strictly below
it) / n)``: bin b holds the values whose lower quantile lies in [b / n_bins, (b + 1) / n_bins). Tied values
therefore always share a bin, bins never overlap (bin b's largest value <= bin b+1's smallest), the top
value never falls off the end (the rank is at most n - 1), and with fewer values than bins some bins are
simply empty. ``per_bin`` samples are drawn from each bin by a fixed hash of (doc_id, position), so they
are spread over the bin rather than taken from one end, and the choice is reproducible.

Histogram: signed, with zero as a bin edge. Negative coefficients get bins over [min, 0), positive ones
over [0, max]; each side gets a share of ``n_bins`` proportional to its range (at least one bin each when
both signs occur). Only non-empty bins are stored; (lo, hi) are the bin edges.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd


def top_sql(source: str, top_n: int) -> str:
    """The ``top_n`` largest coefficients of every atom, ranked 1.. (ties broken by doc_id, position)."""
    return f"""
        SELECT atom, rank, doc_id, position, coef FROM (
            SELECT atom, doc_id, position, coef,
                   ROW_NUMBER() OVER (PARTITION BY atom ORDER BY coef DESC, doc_id, position) AS rank
            FROM {source} WHERE coef <> 0)
        WHERE rank <= {int(top_n)}
        ORDER BY atom, rank"""


def quantile_sql(source: str, n_bins: int, per_bin: int) -> str:
    """Samples from ``n_bins`` equal-probability bins of each atom's signed coefficients (see module doc)."""
    b, s = int(n_bins), int(per_bin)
    if b < 1 or s < 1:
        raise ValueError("n_bins and per_bin must be at least 1")
    return f"""
        WITH ranked AS (
            SELECT atom, doc_id, position, coef,
                   RANK() OVER (PARTITION BY atom ORDER BY coef) - 1 AS below,
                   COUNT(*) OVER (PARTITION BY atom) AS n
            FROM {source} WHERE coef <> 0),
        binned AS (
            SELECT *, CAST((below * {b}) // n AS INTEGER) AS bin FROM ranked),
        sampled AS (
            SELECT *,
                   ROW_NUMBER() OVER (PARTITION BY atom, bin
                                      ORDER BY hash(doc_id, position), doc_id, position)
                       AS pick,
                   MIN(coef) OVER (PARTITION BY atom, bin) AS bin_lo,
                   MAX(coef) OVER (PARTITION BY atom, bin) AS bin_hi,
                   COUNT(*) OVER (PARTITION BY atom, bin) AS bin_count
            FROM binned)
        SELECT atom, bin, bin / {b}.0 AS q_lo, (bin + 1) / {b}.0 AS q_hi, bin_lo, bin_hi, bin_count,
               CAST(pick AS INTEGER) AS sample, doc_id, position, coef
        FROM sampled
        WHERE pick <= {s}
        ORDER BY atom, bin, coef DESC, doc_id, position"""


def histogram_sql(source: str, n_bins: int) -> str:
    """Signed histogram of each atom's coefficients with zero as an edge (see module doc)."""
    b = int(n_bins)
    if b < 2:
        raise ValueError("a signed histogram needs at least 2 bins")
    return f"""
        WITH ranges AS (
            SELECT atom, MIN(coef)::DOUBLE AS lo, MAX(coef)::DOUBLE AS hi
            FROM {source} WHERE coef <> 0 GROUP BY atom),
        split AS (
            SELECT atom, lo, hi,
                   CASE WHEN hi <= 0 THEN {b}
                        WHEN lo >= 0 THEN 0
                        ELSE GREATEST(1, LEAST({b - 1}, CAST(round({b} * (-lo) / (hi - lo)) AS INTEGER)))
                   END AS n_neg
            FROM ranges),
        assigned AS (
            SELECT c.atom, s.lo, s.hi, s.n_neg, {b} - s.n_neg AS n_pos,
                   CASE WHEN c.coef < 0
                        THEN LEAST(s.n_neg - 1, CAST(floor((c.coef - s.lo) / (-s.lo) * s.n_neg) AS INTEGER))
                        ELSE s.n_neg + LEAST({b} - s.n_neg - 1,
                                             CAST(floor(c.coef / s.hi * ({b} - s.n_neg)) AS INTEGER))
                   END AS bin
            FROM {source} c JOIN split s USING (atom) WHERE c.coef <> 0)
        SELECT atom, bin,
               CASE WHEN bin < n_neg THEN lo + bin * (-lo) / n_neg ELSE (bin - n_neg) * hi / n_pos END AS lo,
               CASE WHEN bin < n_neg THEN lo + (bin + 1) * (-lo) / n_neg
                    ELSE (bin - n_neg + 1) * hi / n_pos END
                   AS hi,
               COUNT(*) AS count
        FROM assigned
        GROUP BY atom, bin, lo, hi, n_neg, n_pos
        ORDER BY atom, bin"""


def _frame(values: np.ndarray) -> pd.DataFrame:
    """A one-atom codes frame whose (doc_id, position) are the value's index (for tests and notebooks)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    return pd.DataFrame(
        {
            "atom": np.zeros(len(values), dtype=np.int32),
            "doc_id": np.arange(len(values), dtype=np.int32),
            "position": np.zeros(len(values), dtype=np.int32),
            "coef": values,
        }
    )


def quantile_bins(values: np.ndarray, n_bins: int = 10, per_bin: int = 5) -> pd.DataFrame:
    """Run :func:`quantile_sql` on one atom's coefficients ``values`` (``doc_id`` = index in ``values``)."""
    con = duckdb.connect()
    try:
        con.register("codes_in", _frame(values))
        return con.execute(quantile_sql("codes_in", n_bins, per_bin)).df()
    finally:
        con.close()


def histogram(values: np.ndarray, n_bins: int = 32) -> pd.DataFrame:
    """Run :func:`histogram_sql` on one atom's coefficients ``values``."""
    con = duckdb.connect()
    try:
        con.register("codes_in", _frame(values))
        return con.execute(histogram_sql("codes_in", n_bins)).df()
    finally:
        con.close()
