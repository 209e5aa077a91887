"""Options of ``itda atom-map`` (:class:`UmapParams`): the UMAP settings of a stored atom map."""

from __future__ import annotations

from dataclasses import dataclass

from itda_core.errors import ITDAError
from itda_core.options import option


@dataclass(frozen=True)
class UmapParams:
    """UMAP settings (cosine between unit atoms; a fixed seed makes maps reproducible)."""

    n_neighbors: int = option(15, help="UMAP neighbours.")
    min_dist: float = option(0.1, help="UMAP minimum distance.")
    metric: str = option("cosine", help="UMAP distance between atoms (unit vectors).", cli=False)
    seed: int = option(0, help="Random seed (maps are reproducible).")

    def __post_init__(self) -> None:
        """Refuse settings UMAP cannot use, in one line."""
        if self.n_neighbors < 2 or not 0 <= self.min_dist <= 1:
            raise ITDAError("n-neighbors must be >= 2 and min-dist between 0 and 1")
