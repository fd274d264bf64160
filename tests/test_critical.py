"""Algorithm 1 and the rho search (Sec. 2.2, 3.5) on subspaces and Grams with planted answers."""

from __future__ import annotations

import math

import pytest
import torch

from ifv.math.critical import (
    best_space,
    cokernel_approximation,
    complement,
    critical_space,
    merge,
    principal_vectors,
    rho_search,
    slerp,
)
from ifv.math.metrics import angular_distance

F64 = torch.float64


def _rotation(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q


def _planted_pair(angles: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a = Q[e_1..e_m], b = Q[cos t_j e_j + sin t_j e_{m+j}] (columns of b shuffled)."""
    m = angles.numel()
    eye = torch.eye(n, dtype=F64)
    q = _rotation(n, seed)
    b = torch.cos(angles) * eye[:, :m] + torch.sin(angles) * eye[:, m:2 * m]
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed + 1))
    return q @ eye[:, :m], q @ b[:, perm]


def _max_angle_deg(u: torch.Tensor, v: torch.Tensor) -> float:
    """Largest principal angle in degrees between two spaces of equal dimension."""
    assert u.shape == v.shape
    return math.degrees(float(principal_vectors(u, v)[0].max()))


def _orth(*vectors: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.stack(vectors, dim=1))
    return q


# --- principal angles and vectors (Knyazev & Argentati 2002) -------------------------------

PLANTED = [1e-7, math.radians(10), math.radians(44), math.radians(46), math.radians(80)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_principal_angles_planted(seed: int) -> None:
    t = torch.tensor(PLANTED, dtype=F64)
    a, b = _planted_pair(t, 12, seed)
    angles, pu, pv = principal_vectors(a, b)
    assert angles.shape == (5,) and pu.shape == (12, 5) and pv.shape == (12, 5)
    assert torch.allclose(angles, t, rtol=0, atol=1e-12)
    # the small angle in relative terms; 1e-9 is the rounding floor of the construction
    # itself (b is only defined to ~eps absolute after the rotation)
    assert abs(float(angles[0]) - 1e-7) / 1e-7 < 1e-7
    # pairing: pu_j^T pv_j = cos t_j, pu in Im a, pv in Im b, both orthonormal
    assert torch.allclose((pu * pv).sum(0), torch.cos(t), atol=1e-14)
    eye = torch.eye(5, dtype=F64)
    assert torch.allclose(pu.T @ pu, eye, atol=1e-13)
    assert torch.allclose(pv.T @ pv, eye, atol=1e-13)
    assert torch.allclose(pu.T @ pv, torch.diag(torch.cos(t)), atol=1e-13)
    assert (pu - a @ (a.T @ pu)).norm() < 1e-13
    assert (pv - b @ (b.T @ pv)).norm() < 1e-13


def test_principal_angles_unequal_dimensions() -> None:
    t = torch.tensor(PLANTED, dtype=F64)
    a, b = _planted_pair(t, 12, 3)
    extra = complement(torch.cat([a, b], dim=1))[:, :2]  # orthogonal to both
    a5 = torch.cat([a, extra], dim=1)  # (12, 7) vs b (12, 5): still the same 5 angles
    for x, y in ((a5, b), (b, a5)):
        angles, pu, pv = principal_vectors(x, y)
        assert angles.shape == (5,)
        assert torch.allclose(angles, t, atol=1e-12)
        assert (pu - x @ (x.T @ pu)).norm() < 1e-13
        assert (pv - y @ (y.T @ pv)).norm() < 1e-13
    angles, pu, pv = principal_vectors(a, a[:, :0])
    assert angles.shape == (0,) and pu.shape == (12, 0) and pv.shape == (12, 0)


def test_cluster_of_tiny_angles_is_resolved() -> None:
    """Cosines of 1e-9, 1e-8 and 1e-7 rad all round to 1: only the sine SVD separates them."""
    t = torch.tensor([1e-9, 1e-8, 1e-7, math.radians(60)], dtype=F64)
    a, b = _planted_pair(t, 10, 6)
    angles, pu, pv = principal_vectors(a, b)
    assert torch.allclose(angles, t, rtol=1e-6, atol=0)
    assert torch.allclose(pu.T @ pv, torch.diag(torch.cos(t)), atol=1e-14)
    # pu_j and pv_j differ by the planted rotation: |pu_j - pv_j| = 2 sin(t_j / 2)
    assert torch.allclose((pu - pv).norm(dim=0), 2 * torch.sin(t / 2), rtol=1e-6, atol=0)


def test_small_angle_survives_where_the_cosine_route_loses_it() -> None:
    """With angles above 45 degrees present, SciPy's subspace_angles (1.17) takes the
    smallest angle from arccos of a cosine, which cannot resolve 1e-9 rad."""
    t = torch.tensor([1e-9, math.radians(46), math.radians(80)], dtype=F64)
    a, b = _planted_pair(t, 8, 4)
    angles, _, _ = principal_vectors(a, b)
    assert abs(float(angles[0]) - 1e-9) / 1e-9 < 1e-5
    cosine_route = torch.arccos(torch.linalg.svdvals(a.T @ b).clamp(-1, 1)).min()
    assert abs(float(cosine_route) - 1e-9) / 1e-9 > 0.5  # the trap is real
    linalg = pytest.importorskip("scipy.linalg")
    theirs = float(min(linalg.subspace_angles(a.numpy(), b.numpy())))
    assert abs(float(angles[0]) - 1e-9) < abs(theirs - 1e-9)


# --- SLERP -----------------------------------------------------------------------------------

def test_slerp_ends_norm_and_midpoint() -> None:
    g = torch.Generator().manual_seed(5)
    p = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=F64), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=F64), dim=-1)
    theta = torch.arccos((p * q).sum(-1))
    for t in torch.linspace(0, 1, 11, dtype=F64):
        s = slerp(p, q, t)
        assert torch.allclose(s.norm(dim=-1), torch.ones(4, dtype=F64), atol=1e-14)
        # the arc: angle to p is t theta, angle to q is (1 - t) theta
        assert torch.allclose(torch.arccos((s * p).sum(-1).clamp(-1, 1)), t * theta, atol=1e-7)
        assert torch.allclose(torch.arccos((s * q).sum(-1).clamp(-1, 1)), (1 - t) * theta,
                              atol=1e-7)
    assert torch.allclose(slerp(p, q, 0.0), p, atol=1e-14)
    assert torch.allclose(slerp(p, q, 1.0), q, atol=1e-14)
    mid = slerp(p, q, 0.5)
    assert torch.allclose(angular_distance(mid, p), torch.rad2deg(theta) / 2, atol=1e-9)
    assert torch.allclose(angular_distance(mid, q), torch.rad2deg(theta) / 2, atol=1e-9)
    # per-row parameters
    ts = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    assert torch.allclose(angular_distance(slerp(p, q, ts), p), torch.rad2deg(ts * theta),
                          atol=1e-9)


def test_slerp_stable_for_equal_and_close_vectors() -> None:
    p = torch.nn.functional.normalize(torch.arange(1.0, 6.0, dtype=F64), dim=0)
    assert torch.allclose(slerp(p, p, 0.3), p, atol=1e-15)
    e = torch.eye(5, dtype=F64)
    q = math.cos(1e-10) * e[0] + math.sin(1e-10) * e[1]
    s = slerp(e[0], q, 0.5)
    assert torch.isfinite(s).all()
    assert abs(float(angular_distance(s, e[0])) - math.degrees(0.5e-10)) < 1e-17


# --- merge (Algorithm 1's while-loop) --------------------------------------------------------

def _spaces_with(common: list[torch.Tensor], n: int, count: int, extra: int, seed: int,
                 tilt_deg: float = 0.0) -> list[torch.Tensor]:
    """count spaces in R^n, each spanned by the common directions (each tilted by tilt_deg
    in a random direction) and `extra` random directions."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        cols = []
        for u in common:
            r = torch.randn(n, generator=g, dtype=F64)
            r = r - (r @ u) * u
            r = r / r.norm()
            tilt = math.radians(tilt_deg)
            cols.append(math.cos(tilt) * u + math.sin(tilt) * r)
        cols += list(torch.randn(n, extra, generator=g, dtype=F64).T)
        q, _ = torch.linalg.qr(torch.stack(cols, dim=1))
        out.append(q)
    return out


ORDERS = ["sequential", "pairwise", "random:0", "random:7"]


@pytest.mark.parametrize("order", ORDERS)
def test_merge_recovers_planted_common_direction(order: str) -> None:
    n = 30
    u = torch.nn.functional.normalize(torch.randn(n, generator=torch.Generator().manual_seed(9),
                                                  dtype=F64), dim=0)
    merged = merge(_spaces_with([u], n, 9, 2, seed=10), order=order)
    assert merged.shape == (n, 1)
    assert float(angular_distance(merged[:, 0], u)) < 1e-6


@pytest.mark.parametrize("order", ORDERS)
def test_merge_with_noise_stays_near_common_direction(order: str) -> None:
    n = 30
    u = torch.eye(n, dtype=F64)[0]
    spaces = _spaces_with([u], n, 9, 2, seed=11, tilt_deg=1.0)
    merged = merge(spaces, order=order)
    assert merged.shape == (n, 1)
    assert float(angular_distance(merged[:, 0], u)) < 1.0


def test_merge_two_common_directions_gives_a_plane() -> None:
    n = 30
    e = torch.eye(n, dtype=F64)
    u1, u2 = e[3], torch.nn.functional.normalize(e[4] + e[7], dim=0)
    for order in ORDERS:
        merged = merge(_spaces_with([u1, u2], n, 8, 2, seed=12), order=order)
        assert merged.shape == (n, 2)
        assert _max_angle_deg(merged, _orth(u1, u2)) < 1e-6


def test_merge_disjoint_and_empty_spaces() -> None:
    e = torch.eye(6, dtype=F64)
    s1, s2, s3 = e[:, :2], e[:, 2:4], e[:, :3]
    for order in ORDERS:
        assert merge([s1, s2], order=order).shape == (6, 0)
        # an empty space absorbs everything, wherever it sits
        assert merge([s3, s1, e[:, :0], s3], order=order).shape == (6, 0)
    assert torch.allclose(merge([s3]), s3)
    with pytest.raises(ValueError, match="order"):
        merge([s1, s3], order="backwards")


def test_merge_weights_interpolate_along_the_arc() -> None:
    """(S, 3) with (T, 1), lines at 20 degrees: t = 1/4 gives the line at 5 degrees from S."""
    e = torch.eye(4, dtype=F64)
    s = e[:, :1]
    a = math.radians(20)
    t = (math.cos(a) * e[:, 0] + math.sin(a) * e[:, 1])[:, None]
    for order in ORDERS:
        merged = merge([s, t], weights=[3.0, 1.0], order=order)
        assert merged.shape == (4, 1)
        assert abs(float(angular_distance(merged[:, 0], s[:, 0])) - 5.0) < 1e-9
        assert abs(float(angular_distance(merged[:, 0], t[:, 0])) - 15.0) < 1e-9
    merged = merge([s, t, t])  # sequential: (S,T) at 10 degrees, weight 2; then T with t=1/3
    assert abs(float(angular_distance(merged[:, 0], s[:, 0])) - (10 + 10 / 3)) < 1e-9


def _line(deg: float) -> torch.Tensor:
    e = torch.eye(3, dtype=F64)
    return (math.cos(math.radians(deg)) * e[:, 0] + math.sin(math.radians(deg)) * e[:, 1])[:, None]


def test_merge_order_matters() -> None:
    """Lines at 40, 0, 80, 40 degrees: the left fold meets 20 vs 80 (60 > 45: empty), the
    balanced tree meets 20 vs 60 (kept: the line at 40 degrees)."""
    spaces = [_line(40), _line(0), _line(80), _line(40)]
    assert merge(spaces, order="sequential").shape == (3, 0)
    tree = merge(spaces, order="pairwise")
    assert tree.shape == (3, 1)
    assert abs(float(angular_distance(tree[:, 0], _line(40)[:, 0]))) < 1e-9
    dims = [merge(spaces, order=f"random:{s}").shape[1] for s in range(12)]
    assert set(dims) == {0, 1}
    assert dims == [merge(spaces, order=f"random:{s}").shape[1] for s in range(12)]
    assert merge(spaces[:3], order="pairwise").shape == (3, 0)  # (40, 0) -> 20, vs 80


def test_merge_drops_pairs_beyond_max_angle() -> None:
    e = torch.eye(4, dtype=F64)
    a = math.radians(50)
    s = e[:, :2]
    t = torch.stack([e[:, 0], math.cos(a) * e[:, 1] + math.sin(a) * e[:, 2]], dim=1)
    assert merge([s, t]).shape == (4, 1)  # the 50-degree pair is dropped
    assert merge([s, t], max_angle=60.0).shape == (4, 2)
    assert merge([s, t], max_angle=0.0).shape == (4, 1)  # exact intersection span{e_1}


# --- co-kernel approximation, critical space, rho search -------------------------------------

def _grams(n: int = 8, n_f: int = 10, n_p: int = 30, dead: bool = False,
           seed: int = 0) -> torch.Tensor:
    """G_i = Dy_i Dy_i^T for random Dy_i whose component along (1,...,1)/sqrt(n_f) is scaled
    by 1e-4 (the softmax direction); with ``dead`` row 4 is scaled by 1e-3 first and the
    (1,...,1) component is removed from the other rows only (a dead class neuron)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        dy = torch.randn(n_f, n_p, generator=g, dtype=F64)
        if dead:
            dy[4] *= 1e-3
            rest = torch.arange(n_f) != 4
            dy[rest] -= (1 - 1e-4) * dy.sum(0) / (n_f - 1)
        else:
            dy -= (1 - 1e-4) * dy.mean(0)
        out.append(dy @ dy.T)
    return torch.stack(out)


def _one(n_f: int = 10) -> torch.Tensor:
    return torch.ones(n_f, dtype=F64) / math.sqrt(n_f)


def test_cokernel_approximation_thresholds_singular_values() -> None:
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(3, 6, 9, generator=g, dtype=F64)
    gram = dy @ dy.transpose(-1, -2)
    u, s, _ = torch.linalg.svd(dy)
    for rho in (0.05, 0.3, 0.7, 0.99):
        spaces = cokernel_approximation(gram, rho)
        for i, space in enumerate(spaces):
            sel = u[i][:, s[i] < rho * s[i, 0]]
            assert space.shape == sel.shape
            if sel.shape[1]:
                assert _max_angle_deg(space, sel) < 1e-6
    assert all(sp.shape == (6, 6) for sp in cokernel_approximation(gram, 1.5))
    assert all(sp.shape == (6, 5) for sp in cokernel_approximation(gram, 1.0))


def test_critical_space_removes_planted_direction() -> None:
    gram = _grams()
    basis = critical_space(gram, 1e-2)
    assert basis.shape == (10, 9)
    assert torch.allclose(basis.T @ basis, torch.eye(9, dtype=F64), atol=1e-12)
    removed = complement(basis)
    assert removed.shape == (10, 1)
    assert float(angular_distance(removed[:, 0], _one())) < 1.0
    # below every sample's smallest ratio nothing is removed; above every ratio nothing is left
    assert critical_space(gram, 1e-7).shape == (10, 10)
    assert critical_space(gram, 1.5).shape == (10, 0)


def test_rho_search_finds_the_softmax_and_the_dead_neuron_spaces() -> None:
    gram = _grams(dead=True)
    found = rho_search(gram)
    by_dim = {c.dim: c for c in found}
    assert [c.dim for c in found] == sorted(by_dim, reverse=True)
    assert 10 not in by_dim and 0 not in by_dim
    c9, c8 = by_dim[9], by_dim[8]
    assert c9.complement.shape == (10, 1) and c8.complement.shape == (10, 2)
    assert float(angular_distance(c9.complement[:, 0], _one())) < 1.0
    e4 = torch.eye(10, dtype=F64)[4]
    assert _max_angle_deg(c8.complement, _orth(_one(), e4)) < 1.0
    assert c9.rho_max < c8.rho_min  # the intervals do not overlap
    # the jump between them sits between the 1e-4 and 1e-3 scales, to tolerance 1e-4
    assert 1e-5 < c9.rho_max < c8.rho_min <= c9.rho_max * (1 + 1e-4)
    assert 1e-5 < c8.rho_min < 1e-2
    for c in found:
        assert torch.allclose(c.basis.T @ c.basis, torch.eye(c.dim, dtype=F64), atol=1e-12)
        assert torch.allclose(c.basis.T @ c.complement, torch.zeros(c.dim, 10 - c.dim,
                                                                    dtype=F64), atol=1e-12)
    with_full = rho_search(gram, include_full=True)
    assert with_full[0].dim == 10 and with_full[0].rho_min == 1e-6
    assert with_full[0].rho_max < c9.rho_min


def test_rho_search_single_planted_direction() -> None:
    found = rho_search(_grams(dead=False))
    c9 = next(c for c in found if c.dim == 9)
    assert float(angular_distance(c9.complement[:, 0], _one())) < 1.0
    assert c9.rho_min < 1e-3 < 1e-1 < c9.rho_max


@pytest.mark.parametrize("order", ["sequential", "pairwise"])
def test_rho_search_intervals_give_their_dimension(order: str) -> None:
    gram = _grams(dead=True, seed=3)
    found = rho_search(gram, order=order)
    assert found
    for c in found:
        assert c.rho_min <= c.rho_max
        mid = math.sqrt(c.rho_min * c.rho_max)
        for rho in (c.rho_min, mid, c.rho_max):
            if order == "sequential" or rho != mid:  # hulls may nest for non-monotone orders
                assert critical_space(gram, rho, order=order).shape == (10, c.dim)
        # just outside an inner bound the dimension differs (unless the bound is lo or hi)
        if c.rho_max < 1.0 and order == "sequential":
            assert critical_space(gram, c.rho_max * (1 + 2e-4)).shape[1] != c.dim


def test_best_space_takes_lowest_median() -> None:
    angles = {
        10: torch.tensor([30.0, 40.0, 50.0]),
        9: torch.tensor([1.0, 2.0, 80.0, math.nan]),
        8: torch.tensor([5.0, 6.0, 7.0]),
    }
    assert best_space(angles) == 9
    angles[8] = torch.tensor([0.5, 1.0, 70.0])
    assert best_space(angles) == 8
    with pytest.raises(ValueError):
        best_space({})
