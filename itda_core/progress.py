"""Progress reporting for long runs: tokens done, tokens/s and ETA on stderr (tqdm underneath)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A thin wrapper over tqdm that can be disabled and carries extra live figures (atoms per layer...)."""

    def __init__(self, total: int | None, unit: str = "tok", desc: str = "", enabled: bool = True) -> None:
        self.start = time.perf_counter()
        self.count = 0
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, unit=unit, desc=desc, unit_scale=True, dynamic_ncols=True, file=sys.stderr, smoothing=0.1
            )

    def update(self, n: int, **postfix: Any) -> None:
        """Advance by ``n`` units and show ``postfix`` figures beside the bar."""
        self.count += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = time.perf_counter() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
