"""Near-ties: every path stays greedy up to rounding where near-duplicate atoms let paths differ."""

from __future__ import annotations

import pytest
import torch

from itda_core.mp import (
    matching_pursuit,
    reconstruct,
    textbook_matching_pursuit,
)
from tests.mp.helpers import GRAM_PATHS, acts, assert_greedy_up_to_rounding, run_path, unit_atoms
from tests.tolerance import mp_tol

# --------------------------------------------------------------------------------------------------
# Near-ties: ITDA dictionaries hold near-duplicate atoms (a batch adds similar tokens together), and there
# two correct MP implementations may break a near-tie differently. What every path must guarantee is that
# each step is a greedy MP step up to float rounding, and that the reconstruction stays as close as the
# near-duplicates allow -- not that the indices equal the textbook loop's.
# --------------------------------------------------------------------------------------------------


def near_duplicate_dictionary(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Atoms in clusters of near-duplicates (distances 0 to 1e-5, around float32 rounding of a correlation)
    around orthonormal centres, shuffled as batch adds leave them; inputs that combine ``s`` centres with
    well-separated coefficients, so that only near-duplicates ever tie. Returns (atoms, x, delta, s), delta
    the largest distance between two atoms of a cluster."""
    d, clusters, s, n = 32, 24, 5, 400
    g = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:clusters]
    noise = torch.randn(clusters, 5, d, generator=g, dtype=torch.float64)
    noise /= noise.norm(dim=2, keepdim=True)
    eps = torch.tensor([0.0, 1e-7, 3e-7, 1e-6, 1e-5], dtype=torch.float64)
    members = centres[:, None, :] + eps[None, :, None] * noise
    members /= members.norm(dim=2, keepdim=True)
    atoms64 = members.reshape(-1, d)[torch.randperm(clusters * 5, generator=g)]
    atoms = atoms64.float()
    atoms /= atoms.norm(dim=1, keepdim=True)
    pick = torch.stack([torch.randperm(clusters, generator=g)[:s] for _ in range(n)])
    # |coefficients| 3, 2.4, 1.92, ... (ratio 0.8), random signs: at every step one cluster clearly leads
    mags = 3.0 * 0.8 ** torch.arange(s, dtype=torch.float64)
    signs = torch.randint(0, 2, (n, s), generator=g).double() * 2 - 1
    x = torch.einsum("ns,nsd->nd", mags * signs, centres[pick]).float()
    delta = float(torch.cdist(members, members).amax())
    return atoms, x, delta, s


@pytest.mark.parametrize("path", [*GRAM_PATHS, "textbook", "auto"])
def test_near_duplicates_every_path_is_greedy_up_to_rounding(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x, delta, s = near_duplicate_dictionary()
    k = 12
    if path in ("textbook", "auto"):
        got = matching_pursuit(x, atoms, k, method=path)
    else:
        got = run_path(path, x, atoms, k, monkeypatch)
    assert_greedy_up_to_rounding(x, atoms, *got)
    ref = textbook_matching_pursuit(x, atoms, k)
    # The reconstruction: while a centre's share is left, every greedy step picks a member of its cluster;
    # taking one member for another moves the residual by at most 2 delta |r| (I - a a^T is a projection),
    # so after s steps both residuals are under 2 s delta |x| (plus rounding), and so is any later one.
    scale = x.norm(dim=1, keepdim=True)
    bound = (2 * (2 * s * delta + mp_tol(atoms.shape[1], k))) * scale
    diff = (reconstruct(*got, atoms) - reconstruct(*ref, atoms)).norm(dim=1, keepdim=True)
    assert (diff <= bound).all(), f"reconstructions {float((diff / scale).max()):.2e} |x| apart"
    if path != "textbook":
        # the regime is exercised: within clusters the choices depend on rounding, and correlations within
        # 1e-7 |x| of each other are ordered differently by different summation orders
        assert (got[0] != ref[0]).any(dim=1).sum() > 0, "no near-tie resolved differently: not the near-tie regime"


def test_greedy_check_catches_a_second_best_choice() -> None:
    # the checker above must fail codes that take the runner-up at one step where the gap is real
    atoms, x = unit_atoms(300, 24), acts(50, 24)
    idx, coef = textbook_matching_pursuit(x, atoms, 6)
    assert_greedy_up_to_rounding(x, atoms, idx, coef)
    corr = x @ atoms.T
    second = corr.abs().topk(2, dim=1).indices[:, 1]
    bad_idx, bad_coef = idx.clone(), coef.clone()
    bad_idx[:, 0], bad_coef[:, 0] = second, corr.gather(1, second[:, None])[:, 0]
    with pytest.raises(AssertionError, match="short of the best"):
        assert_greedy_up_to_rounding(x, atoms, bad_idx, bad_coef)
    scaled = coef.clone()
    scaled[:, 0] *= 1 + 1e-3
    with pytest.raises(AssertionError, match="off its correlation"):
        assert_greedy_up_to_rounding(x, atoms, idx, scaled)
