"""The dashboard's torch thread count for live model runs: chosen from the machine's load, or fixed."""

from __future__ import annotations

import pytest
import torch

from itda_core.errors import ITDAError
from itda_dashboard import live


@pytest.fixture
def keep_threads():
    """Restore torch's process-wide thread count after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_follow_the_idle_cores():
    assert live.threads_for(2, 0.0) == 2
    assert live.threads_for(2, 1.2) == 1  # one busy process: one thread
    assert live.threads_for(2, 12.0) == 1  # never fewer than one
    assert live.threads_for(16, 4.4) == 12
    assert live.threads_for(1, 0.0) == 1


def test_choose_threads_from_load_or_environment(monkeypatch, keep_threads):
    monkeypatch.delenv(live.ENV_THREADS, raising=False)
    monkeypatch.setattr(live.os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    assert live.choose_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setattr(live.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    cpus = len(live.os.sched_getaffinity(0))
    assert live.choose_threads() == cpus == torch.get_num_threads()
    monkeypatch.setenv(live.ENV_THREADS, "1")
    assert live.choose_threads() == 1 and torch.get_num_threads() == 1
    for bad in ("0", "x", str(live.MAX_THREADS + 1)):
        monkeypatch.setenv(live.ENV_THREADS, bad)
        with pytest.raises(ITDAError, match=live.ENV_THREADS):
            live.choose_threads()
