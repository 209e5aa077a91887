"""Huge-page buffers for the Gram matrix: right shape and contents, memory that stays valid, the advice
really applied (Linux smaps), and a plain allocation whenever huge pages are not on offer."""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import pytest
import torch

from itda_core.mp import (
    GramCache,
    gram_matrix,
    gram_matrix_half,
    hugepages,
    matching_pursuit,
    textbook_matching_pursuit,
)
from tests.tolerance import dot_tol, mp_tol

needs_thp = pytest.mark.skipif(not hugepages.huge_pages_available(), reason="no transparent huge pages here")


def _vm_flags(ptr: int) -> set[str]:
    """The VmFlags of the mapping of this process that holds address ``ptr`` (Linux /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= ptr < hi
        elif inside and line.startswith("VmFlags:"):
            return set(line.split()[1:])
    raise AssertionError(f"address {ptr:#x} is in no mapping")


@needs_thp
def test_large_buffer_is_advised_to_use_huge_pages() -> None:
    t = hugepages.empty((1024, 4096), torch.float32)  # 16 MiB
    assert t.shape == (1024, 4096) and t.dtype == torch.float32 and t.is_contiguous()
    assert "hg" in _vm_flags(t.data_ptr())  # MADV_HUGEPAGE was applied to its mapping
    half = hugepages.empty((2048, 4096), torch.float16)
    assert half.dtype == torch.float16 and "hg" in _vm_flags(half.data_ptr())


def test_small_buffers_and_other_dtypes_use_the_ordinary_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("no mapping expected")

    monkeypatch.setattr(hugepages.mmap, "mmap", refuse)
    assert hugepages.empty((16, 16), torch.float32).shape == (16, 16)
    assert hugepages.empty((4096, 4096), torch.int64).dtype == torch.int64


@needs_thp
def test_memory_stays_valid_after_the_tensor_that_made_it_is_gone() -> None:
    t = hugepages.empty((3000, 1000), torch.float32)  # 12 MB, over the threshold
    t.copy_(torch.arange(3_000_000, dtype=torch.float32).reshape(3000, 1000))
    view = t[1000:1002]
    del t
    gc.collect()
    assert torch.equal(view[1, :3], torch.tensor([1001000.0, 1001001.0, 1001002.0]))
    view += 1  # still writable
    assert float(view[0, 0]) == 1000001.0


def test_plain_allocation_when_the_mapping_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("no memory for a mapping")

    monkeypatch.setattr(hugepages.mmap, "mmap", fail)
    monkeypatch.setattr(hugepages, "huge_pages_available", lambda: True)
    t = hugepages.empty((2048, 2048), torch.float32)
    assert t.shape == (2048, 2048) and t.dtype == torch.float32
    t.fill_(2.0)
    assert float(t.sum()) == 2.0 * 2048 * 2048


def test_thp_setting_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = tmp_path / "enabled"
    monkeypatch.setattr(hugepages, "_THP_SETTING", setting)
    assert not hugepages.huge_pages_available()  # unreadable: assume none
    setting.write_text("always madvise [never]\n")
    assert not hugepages.huge_pages_available()
    setting.write_text("always [madvise] never\n")
    assert hugepages.huge_pages_available() == hasattr(mmap, "MADV_HUGEPAGE")


def test_gram_storage_in_huge_pages_gives_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hugepages, "MIN_BYTES", 0)  # every Gram buffer goes through the mapping path
    g = torch.Generator().manual_seed(3)
    atoms = torch.randn(300, 24, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    x = 2.0 * torch.randn(50, 24, generator=g)
    full = gram_matrix(atoms)
    d, k = atoms.shape[1], 12
    # Gram entries are d-term dot products of unit atoms: two computations of one are 2 dot_tol(d) apart
    gram_tol = 2 * dot_tol(d)
    torch.testing.assert_close(full, atoms @ atoms.T, rtol=0, atol=gram_tol)
    cache = GramCache("cpu", torch.float32, half=False)
    for m in (7, 8, 100, 300):  # grows by capacity doubling: each growth is a new mapped buffer
        grown = cache.update(atoms[:m])
        assert isinstance(grown, torch.Tensor)
        torch.testing.assert_close(grown, full[:m, :m], rtol=0, atol=gram_tol)
    ti, tc = textbook_matching_pursuit(x, atoms, k)
    # each path's coefficients are within mp_tol(d, k) |x| of exact MP's (the float16 rows only screen)
    scale = x.norm(dim=1, keepdim=True)
    for gram in (full, grown, gram_matrix_half(atoms)):
        idx, coef = matching_pursuit(x, atoms, k, gram=gram)
        assert torch.equal(idx, ti)
        torch.testing.assert_close(coef / scale, tc / scale, rtol=0, atol=2 * mp_tol(d, k))
