"""The Gram matrix kept between matching_pursuit calls without ``gram=``: reused on the same unchanged atoms
tensor (identical codes), rebuilt after an in-place edit, freed with the atoms, never kept past the budget.

A different tensor with equal values (a copy, or another view of the same memory) is a miss, a second build: the
key is the tensor object and its version, not its values, which would cost a comparison of every entry per call
(see :mod:`itda_core.mp.reuse`).
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Iterator

import pytest
import torch

from itda_core.mp import backends, clear_gram_reuse, gram_matrix, matching_pursuit, reuse
from itda_core.mp import gram as tiers
from tests.mp.helpers import acts, unit_atoms

K = 12  # with 60 tokens over 200 atoms building G pays off: n (k - 2) >= m


@pytest.fixture(autouse=True)
def _nothing_kept() -> Iterator[None]:
    """Every test starts and ends without a kept matrix (another test's atoms may still be alive)."""
    clear_gram_reuse()
    yield
    clear_gram_reuse()


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every Gram matrix built, by patching the builders in :mod:`itda_core.mp.gram`, where they live."""
    builds: list[str] = []
    for name in ("gram_matrix", "gram_matrix_half"):
        real = getattr(tiers, name)
        monkeypatch.setattr(tiers, name, lambda a, _real=real, _name=name: builds.append(_name) or _real(a))
    return builds


def _same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Whether two MP codes are identical, bit for bit."""
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _float16_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make 200 atoms a "large" dictionary, whose auto Gram matrix is a HalfGram (skip without the kernel)."""
    if backends._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    monkeypatch.setattr(tiers, "HALF_FROM_BYTES", 100 * 100 * 4)


@pytest.mark.parametrize(("method", "tier"), [("auto", "float32"), ("auto", "float16"), ("gram", "float32")])
def test_second_call_on_the_same_tensor_reuses_the_matrix(method: str, tier: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if tier == "float16":
        _float16_tier(monkeypatch)
    builds = _count_builds(monkeypatch)
    atoms, x = unit_atoms(200, 16), acts(60, 16)
    first = matching_pursuit(x, atoms, K, method=method)
    assert builds == ["gram_matrix_half" if tier == "float16" else "gram_matrix"]
    again = matching_pursuit(x, atoms, K, method=method)
    other_x = matching_pursuit(acts(60, 16, seed=9), atoms, K, method=method)  # other activations: still a hit
    assert len(builds) == 1
    assert _same(first, again)
    matching_pursuit(x, atoms[:], K, method=method)
    assert len(builds) == 2  # a view of the same memory is another tensor: a miss (the key is the tensor object)
    fresh = matching_pursuit(acts(60, 16, seed=9), atoms.clone(), K, method=method)
    assert len(builds) == 3  # and so is an equal copy
    assert _same(other_x, fresh)  # a hit gives what a fresh build gives


def test_encoding_in_another_dtype_reuses_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # float64 activations: MP converts the float32 atoms each call; the key is the caller's atoms tensor
    builds = _count_builds(monkeypatch)
    atoms, x = unit_atoms(200, 16), acts(60, 16).double()
    first = matching_pursuit(x, atoms, K)
    assert _same(first, matching_pursuit(x, atoms, K)) and len(builds) == 1
    assert first[1].dtype == torch.float64
    matching_pursuit(x.float(), atoms, K)  # float32: another Gram matrix (another compute dtype)
    assert len(builds) == 2


def test_in_place_edits_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = _count_builds(monkeypatch)
    atoms, x = unit_atoms(200, 16), acts(60, 16)
    before = matching_pursuit(x, atoms, K)
    atoms.mul_(1)  # the same values, a new version: rebuilt
    assert _same(matching_pursuit(x, atoms, K), before) and len(builds) == 2
    atoms[:100] = unit_atoms(100, 16, seed=4)  # a real edit, through a view of the tensor
    after = matching_pursuit(x, atoms, K)
    assert len(builds) == 3
    assert not torch.equal(after[0], before[0])
    assert _same(after, matching_pursuit(x, atoms, K, gram=gram_matrix(atoms)))  # the codes follow the new atoms


def test_the_matrix_goes_with_the_atoms() -> None:
    atoms, x = unit_atoms(200, 16), acts(60, 16)
    matching_pursuit(x, atoms, K)
    kept = reuse._kept
    assert kept is not None and kept.box
    gram = weakref.ref(kept.box[0])
    del kept, atoms
    gc.collect()
    assert gram() is None  # freed with the atoms (weak reference), not at the next call
    other = unit_atoms(200, 16, seed=2)
    matching_pursuit(x, other, K)
    assert reuse._kept is not None and reuse._kept.box
    gram = weakref.ref(reuse._kept.box[0])
    clear_gram_reuse()
    gc.collect()
    assert gram() is None and reuse._kept is None


def test_never_kept_past_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = _count_builds(monkeypatch)
    atoms, x = unit_atoms(200, 16), acts(60, 16)
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", str(200 * 200 * 2 - 1))  # not even the float16 matrix fits
    ref = matching_pursuit(x, atoms, K)  # the textbook loop: nothing built, nothing kept
    assert builds == [] and reuse._kept is None
    gram_path = matching_pursuit(x, atoms, K, method="gram")  # "gram" builds past the budget, and drops it
    assert builds == ["gram_matrix"] and reuse._kept is None
    assert _same(matching_pursuit(x, atoms, K, method="gram"), gram_path) and len(builds) == 2
    # kept while it fits; once the budget shrinks below it, the next call frees it and decides afresh
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", str(200 * 200 * 4))
    matching_pursuit(x, atoms, K)
    assert len(builds) == 3 and reuse._kept is not None
    gram = weakref.ref(reuse._kept.box[0])
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", str(200 * 200 * 2 - 1))
    assert _same(matching_pursuit(x, atoms, K), ref)  # the textbook loop again, as without the reuse
    gc.collect()
    assert len(builds) == 3 and reuse._kept is None and gram() is None


def test_a_looser_budget_changes_the_tier_as_a_fresh_call_would(monkeypatch: pytest.MonkeyPatch) -> None:
    if backends._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    builds = _count_builds(monkeypatch)
    atoms, x = unit_atoms(200, 16), acts(60, 16)
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", str(200 * 200 * 3))  # float16 fits, float32 does not
    matching_pursuit(x, atoms, K)
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", str(200 * 200 * 4))  # now float32 fits: what auto_gram picks
    matching_pursuit(x, atoms, K)
    assert builds == ["gram_matrix_half", "gram_matrix"]


def test_small_batches_and_given_matrices_leave_it_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = _count_builds(monkeypatch)
    atoms, x = unit_atoms(200, 16), acts(60, 16)
    matching_pursuit(x[:2], atoms, K)  # too few tokens for G to pay off: the textbook loop, as before
    matching_pursuit(x, atoms, K, gram=gram_matrix(atoms))  # given (built by the unpatched builder): used as is
    assert builds == [] and reuse._kept is None


def test_inference_tensors_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = _count_builds(monkeypatch)
    x = acts(60, 16)
    with torch.inference_mode():
        atoms = unit_atoms(200, 16)  # no version counter: an edit could not be seen
    first = matching_pursuit(x, atoms, K)
    assert _same(first, matching_pursuit(x, atoms, K))
    assert len(builds) == 2 and reuse._kept is None


def test_threads_build_once_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = _count_builds(monkeypatch)
    atoms, x = unit_atoms(200, 16), acts(60, 16)
    start = threading.Barrier(4)
    codes: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode() -> None:
        start.wait()
        codes.append(matching_pursuit(x, atoms, K))

    threads = [threading.Thread(target=encode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(codes) == 4
    assert all(_same(c, codes[0]) for c in codes)


def test_says_once_that_gram_is_the_way(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(reuse, "_told", False)
    x = acts(60, 16)
    with caplog.at_level(logging.INFO, logger="itda_core.mp.reuse"):
        matching_pursuit(x, unit_atoms(200, 16), K)
        matching_pursuit(x, unit_atoms(200, 16, seed=3), K)
    told = [r for r in caplog.records if "gram=" in r.getMessage()]
    assert len(told) == 1 and "GramCache" in told[0].getMessage()
