"""Tests for ifv.math.sampling: Hoyer sparseness, curvilinear search, target sampling (Supp. S2)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from ifv.math.sampling import (
    _hoyer_and_grad,
    canonical,
    curvilinear_search,
    hoyer,
    match_sparseness,
    sample_sparse,
    sample_targets,
    uniform_sphere,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread avoids oversubscription on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- hoyer -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 10, 512])
def test_hoyer_extremes(n):
    e = torch.eye(n, dtype=F64)
    torch.testing.assert_close(hoyer(e), torch.ones(n, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(hoyer(-2.5 * e), torch.ones(n, dtype=F64), atol=1e-12, rtol=0)
    ones = torch.ones(n, dtype=F64)
    assert abs(hoyer(ones).item()) < 1e-12
    signs = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).to(F64)
    assert abs(hoyer(3.0 * signs).item()) < 1e-12


def test_hoyer_hand_computed():
    # ||x||_1 / ||x||_2 = 7 / 5; (sqrt(4) - 1.4) / (sqrt(4) - 1) = 0.6
    x = torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=F64)
    assert hoyer(x).item() == pytest.approx(0.6, abs=1e-14)
    # n = 2: x = (1, 1) / sqrt(2) -> 0; x = (1, 2): ratio 3 / sqrt(5)
    y = torch.tensor([1.0, 2.0], dtype=F64)
    expected = (math.sqrt(2) - 3 / math.sqrt(5)) / (math.sqrt(2) - 1)
    assert hoyer(y).item() == pytest.approx(expected, abs=1e-14)


def test_hoyer_invariances_and_batch_shape():
    x = torch.randn(2, 3, 7, generator=gen(0), dtype=F64)
    h = hoyer(x)
    assert h.shape == (2, 3)
    assert h.dtype == F64
    assert bool(((h >= 0) & (h <= 1)).all())
    signs = torch.where(torch.rand(2, 3, 7, generator=gen(1)) < 0.5, -1.0, 1.0).to(F64)
    torch.testing.assert_close(hoyer(x * signs), h, atol=1e-14, rtol=0)
    torch.testing.assert_close(hoyer(x.abs()), h, atol=1e-14, rtol=0)
    torch.testing.assert_close(hoyer(17.0 * x), h, atol=1e-14, rtol=0)
    # permutation invariance
    torch.testing.assert_close(hoyer(x.flip(-1)), h, atol=1e-14, rtol=0)


def test_hoyer_needs_two_components():
    with pytest.raises(ValueError):
        hoyer(torch.ones(4, 1, dtype=F64))


def test_hoyer_gradient_matches_autograd():
    x = torch.randn(5, 9, generator=gen(2), dtype=F64)
    h, dh = _hoyer_and_grad(x)
    xr = x.clone().requires_grad_(True)
    hr = hoyer(xr)
    (grad,) = torch.autograd.grad(hr.sum(), xr)
    torch.testing.assert_close(h, hr.detach(), atol=1e-14, rtol=0)
    torch.testing.assert_close(dh, grad, atol=1e-12, rtol=0)


def test_uniform_sphere_sparseness_matches_fig_s1():
    """Fig. S1: uniform samples are dense; for a Gaussian, ||x||_1/||x||_2 ~ sqrt(2n/pi)."""
    n = 100
    x = uniform_sphere(4000, n, gen(3))
    assert x.shape == (4000, n)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(4000, dtype=F64), atol=1e-12, rtol=0)
    h = hoyer(x)
    expected = (math.sqrt(n) - math.sqrt(2 * n / math.pi)) / (math.sqrt(n) - 1)
    assert h.mean().item() == pytest.approx(expected, abs=0.01)
    assert h.max().item() < 0.5  # sparse vectors essentially never occur
    # uniform sphere sparseness is far from uniform: the KS test used below would reject it
    assert stats.kstest(h.numpy(), "uniform").pvalue < 1e-10
    # independent, identically distributed coordinates: mean near 0
    assert x.mean(0).abs().max().item() < 0.01


# --- curvilinear search ------------------------------------------------------------------


def rayleigh(a: torch.Tensor):
    """x: (N, n) -> (x^T A x, 2 A x); a: (n, n) or per row (N, n, n)."""

    def fun(x):
        ax = torch.einsum("...ij,...j->...i", a, x) if a.dim() == 3 else x @ a
        return (x * ax).sum(-1), 2.0 * ax

    return fun


def random_symmetric(n: int, seed: int, batch: int | None = None) -> torch.Tensor:
    shape = (n, n) if batch is None else (batch, n, n)
    b = torch.randn(*shape, generator=gen(seed), dtype=F64)
    return (b + b.transpose(-1, -2)) / 2


@pytest.mark.parametrize("n", [2, 6, 40])
def test_curvilinear_search_smallest_eigenvector(n):
    a = random_symmetric(n, seed=10 + n)
    evals, evecs = torch.linalg.eigh(a)
    x0 = uniform_sphere(8, n, gen(n))
    x = curvilinear_search(rayleigh(a), x0)
    assert x.shape == (8, n)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(8, dtype=F64), atol=1e-12, rtol=0)
    cos = (x @ evecs[:, 0]).abs()
    torch.testing.assert_close(cos, torch.ones(8, dtype=F64), atol=1e-9, rtol=0)
    values = (x * (x @ a)).sum(-1)
    torch.testing.assert_close(values, evals[0].expand(8), atol=1e-10, rtol=0)


def test_curvilinear_search_rows_are_independent():
    n, batch = 12, 6
    a = random_symmetric(n, seed=20, batch=batch)
    x0 = uniform_sphere(batch, n, gen(21))
    x = curvilinear_search(rayleigh(a), x0)
    evals, evecs = torch.linalg.eigh(a)
    for i in range(batch):
        assert abs(abs(float(x[i] @ evecs[i, :, 0])) - 1.0) < 1e-9
        single = curvilinear_search(rayleigh(a[i : i + 1]), x0[i : i + 1])
        torch.testing.assert_close(single[0], x[i], atol=1e-12, rtol=0)


def test_curvilinear_search_converged_row_stays_and_1d_input():
    n = 8
    a = random_symmetric(n, seed=30)
    evecs = torch.linalg.eigh(a).eigenvectors
    x0 = torch.stack([evecs[:, 0], uniform_sphere(1, n, gen(31))[0]])
    x = curvilinear_search(rayleigh(a), x0)
    torch.testing.assert_close(x[0], evecs[:, 0], atol=1e-14, rtol=0)
    assert abs(abs(float(x[1] @ evecs[:, 0])) - 1.0) < 1e-9
    # unnormalized 1-D start: normalized first, returned as (n,)
    x1 = curvilinear_search(rayleigh(a[None].expand(1, n, n)), 5.0 * x0[1])
    assert x1.shape == (n,)
    torch.testing.assert_close(x1, x[1], atol=1e-12, rtol=0)


def test_curvilinear_search_respects_max_iter():
    n = 30
    a = random_symmetric(n, seed=40)
    x0 = uniform_sphere(4, n, gen(41))
    x = curvilinear_search(rayleigh(a), x0, max_iter=1)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(4, dtype=F64), atol=1e-12, rtol=0)
    f0 = (x0 * (x0 @ a)).sum(-1)
    f1 = (x * (x @ a)).sum(-1)
    assert bool((f1 < f0).all())  # one accepted descent step
    evals = torch.linalg.eigvalsh(a)
    assert bool((f1 > evals[0] + 1e-3).all())  # but not converged


# --- sparse sampling ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 10, 512])
def test_match_sparseness_reaches_extreme_targets(n):
    s = torch.tensor([0.0, 1e-6, 1e-3, 0.3, 0.999, 1 - 1e-6, 1.0], dtype=F64)
    x0 = uniform_sphere(len(s), n, gen(50 + n))
    x = match_sparseness(x0, s)
    assert x.shape == (len(s), n)
    assert bool((x >= 0).all())
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(len(s), dtype=F64), atol=1e-12, rtol=0)
    err = (hoyer(x) - s).abs()
    assert err.max().item() < 1e-5, err


def test_match_sparseness_chunking_does_not_change_rows():
    s = torch.rand(9, generator=gen(60), dtype=F64)
    x0 = uniform_sphere(9, 10, gen(61))
    whole = match_sparseness(x0, s, chunk_size=10**9)
    chunked = match_sparseness(x0, s, chunk_size=20)  # 2 rows per chunk
    torch.testing.assert_close(chunked, whole, atol=1e-13, rtol=0)
    assert (hoyer(whole) - s).abs().max().item() < 1e-6
    assert match_sparseness(x0[:0], s[:0]).shape == (0, 10)


@pytest.mark.parametrize(("n", "n_f", "seed"), [(400, 64, 0), (300, 10, 1), (150, 512, 2)])
def test_sample_sparse_uniform_sparseness(n, n_f, seed):
    x, s = sample_sparse(n, n_f, gen(seed))
    assert x.shape == (n, n_f) and s.shape == (n,)
    assert x.dtype == F64 and s.dtype == F64
    assert bool((x >= 0).all())
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(n, dtype=F64), atol=1e-12, rtol=0)
    h = hoyer(x)
    err = (h - s).abs()
    assert err.max().item() < 1e-6
    assert (err > 1e-8).float().mean().item() < 0.01
    assert stats.kstest(h.numpy(), "uniform").pvalue > 0.01
    assert stats.kstest(s.numpy(), "uniform").pvalue > 0.01
    # the range is covered at both ends
    assert h.min().item() < 5.0 / n and h.max().item() > 1 - 5.0 / n


def test_sample_sparse_rejects_one_dimension():
    with pytest.raises(ValueError):
        sample_sparse(3, 1, gen(0))


# --- canonical and the target set -------------------------------------------------------


def test_canonical():
    x = canonical([2, 0, 2], 4)
    expected = torch.tensor(
        [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]],
        dtype=F64,
    )
    assert x.dtype == F64
    assert torch.equal(x, expected)
    assert torch.equal(canonical(torch.tensor([1]), 3), torch.tensor([[0.0, 1.0, 0.0]], dtype=F64))
    assert canonical([], 5).shape == (0, 5)
    with pytest.raises(ValueError):
        canonical([4], 4)
    with pytest.raises(ValueError):
        canonical([-1], 4)


def _canonical_indices(x: torch.Tensor) -> torch.Tensor:
    """Indices i of rows that are exactly e_i."""
    assert bool(((x == 0) | (x == 1)).all())
    assert bool((x.sum(-1) == 1).all())
    return x.argmax(-1)


@pytest.mark.parametrize(("n_random", "n_canonical", "n_f"), [(290, 10, 10), (32, 32, 64)])
def test_sample_targets_structure(n_random, n_canonical, n_f):
    x, is_can = sample_targets(n_random, n_canonical, n_f, seed=7)
    n = n_random + n_canonical
    assert x.shape == (n, n_f) and x.dtype == F64
    assert is_can.shape == (n,) and is_can.dtype == torch.bool
    assert bool(is_can[:n_canonical].all()) and not bool(is_can[n_canonical:].any())
    assert bool((x >= 0).all())
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(n, dtype=F64), atol=1e-12, rtol=0)
    idx = _canonical_indices(x[is_can])
    assert len(set(idx.tolist())) == n_canonical  # drawn without replacement
    if n_canonical == n_f:
        assert sorted(idx.tolist()) == list(range(n_f))
    # sparse part: uniform sparseness, almost never exactly canonical
    h = hoyer(x[~is_can])
    assert stats.kstest(h.numpy(), "uniform").pvalue > 0.01
    assert bool((h < 1 - 1e-9).all())


def test_sample_targets_cycles_permutations():
    x, is_can = sample_targets(0, 25, 10, seed=3)
    assert x.shape == (25, 10) and bool(is_can.all())
    idx = _canonical_indices(x).tolist()
    assert sorted(idx[:10]) == list(range(10))
    assert sorted(idx[10:20]) == list(range(10))
    assert len(set(idx[20:])) == 5


def test_sample_targets_deterministic_and_seeded():
    state = torch.get_rng_state()
    a, ca = sample_targets(20, 5, 16, seed=11)
    b, cb = sample_targets(20, 5, 16, seed=11)
    c, _ = sample_targets(20, 5, 16, seed=12)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a, b) and torch.equal(ca, cb)
    assert not torch.equal(a, c)
    assert not torch.equal(a[5:], c[5:])


def test_sample_targets_no_random_part():
    x, is_can = sample_targets(0, 4, 1, seed=0)
    assert torch.equal(x, torch.ones(4, 1, dtype=F64))
    assert bool(is_can.all())
