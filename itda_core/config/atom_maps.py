"""Options of ``itda atom-map`` (:class:`UmapParams`): the UMAP settings of a stored atom map."""

from __future__ import annotations

from dataclasses import dataclass

from itda_core.errors import ITDAError
from itda_core.options import option

MAX_EPOCHS = 5000  # bounds an option that only makes a map slower


@dataclass(frozen=True)
class UmapParams:
    """UMAP settings (cosine between unit atoms; a fixed seed makes maps reproducible). 300 epochs, not
    umap-learn's 500 for small data: on real dictionaries as trustworthy (within the spread between seeds)
    and 1.3% fewer neighbours kept on average (0.4-2.8%), in 63% of the optimisation time (200 epochs: 2.8%
    fewer); bench/bench_atom_maps.py measures it, docs/benchmarks.md records it."""

    n_neighbors: int = option(15, help="UMAP neighbours.")
    min_dist: float = option(0.1, help="UMAP minimum distance.")
    metric: str = option("cosine", help="UMAP distance between atoms (unit vectors).", cli=False)
    n_epochs: int = option(300, help="UMAP optimisation epochs (umap-learn uses 500 for maps under 10,000 atoms).")
    seed: int = option(0, help="Random seed (maps are reproducible).")

    def __post_init__(self) -> None:
        """Refuse settings UMAP cannot use, in one line."""
        if self.n_neighbors < 2 or not 0 <= self.min_dist <= 1:
            raise ITDAError("n-neighbors must be >= 2 and min-dist between 0 and 1")
        if not 1 <= self.n_epochs <= MAX_EPOCHS:
            raise ITDAError(f"n-epochs must be between 1 and {MAX_EPOCHS} (got {self.n_epochs})")
