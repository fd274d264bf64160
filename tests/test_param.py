"""Parametrizations P (Sec. 3.2, 3.7): P_rgb, P_fft, P_ffte and SRNet's geometry images."""

from __future__ import annotations

import math

import pytest
import torch

from ifv.math.param import FFT, FFTE, PARAMS, RGB, Geometry, frequency_scale, make_param


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _basis(h: int, w: int, ky: int, kx: int, imag: bool) -> torch.Tensor:
    """The pre-sigmoid image of irfft2(ortho) for a single coefficient 1 (or i) at (ky, kx).

    m / sqrt(H W) * Re(c exp(2 pi i (ky y / H + kx x / W))), with m = 1 for the first and
    (even W) last rfft column, which have no conjugate partner in the half spectrum, else 2.
    """
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * (ky * y / h + kx * x / w)
    m = 1 if kx == 0 or (w % 2 == 0 and kx == w // 2) else 2
    wave = -torch.sin(angle) if imag else torch.cos(angle)
    return m / math.sqrt(h * w) * wave


def _roughness(img: torch.Tensor) -> float:
    """Mean squared difference of neighbouring pixels over the image variance."""
    dy = (img[..., 1:, :] - img[..., :-1, :]).pow(2).mean()
    dx = (img[..., :, 1:] - img[..., :, :-1]).pow(2).mean()
    return float((dy + dx) / 2 / img.var())


# ---------------------------------------------------------------------------- P_fft, P_ffte


@pytest.mark.parametrize(("h", "w"), [(16, 16), (12, 9), (7, 10)])
def test_fft_of_own_coefficients_gives_image_back(h: int, w: int) -> None:
    p = FFT(h, w)
    assert p.shape == (3, h, w // 2 + 1, 2)
    assert p.n_p == math.prod(p.shape) == 3 * h * (w // 2 + 1) * 2
    image_logits = torch.randn((4, 3, h, w), generator=_gen(), dtype=torch.float64)
    v = p.coefficients(image_logits)
    assert v.shape == (4, *p.shape)
    torch.testing.assert_close(p.logits(v), image_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(p(v), torch.sigmoid(image_logits), atol=1e-5, rtol=0)
    # float32 too
    torch.testing.assert_close(p.logits(p.coefficients(image_logits.float())),
                               image_logits.float(), atol=1e-5, rtol=0)


def test_ffte_coefficients_invert_too() -> None:
    p = FFTE(10, 13)
    image_logits = torch.randn((2, 3, 10, 13), generator=_gen(1), dtype=torch.float64)
    torch.testing.assert_close(p.logits(p.coefficients(image_logits)), image_logits,
                               atol=1e-10, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(8, 12), (9, 7)])
@pytest.mark.parametrize("imag", [False, True])
def test_fft_basis_functions(h: int, w: int, imag: bool) -> None:
    p = FFT(h, w)
    for ky, kx in [(0, 1), (1, 0), (2, 3), (h - 1, 2), (h // 2, w // 2), (1, w // 2)]:
        v = torch.zeros((1, *p.shape), dtype=torch.float64)
        v[0, 1, ky, kx, int(imag)] = 1.0
        out = p.logits(v)
        torch.testing.assert_close(out[0, 1], _basis(h, w, ky, kx, imag), atol=1e-12, rtol=0)
        assert out[0, 0].abs().max() == 0 and out[0, 2].abs().max() == 0


@pytest.mark.parametrize(("h", "w"), [(8, 12), (9, 7), (16, 16)])
def test_ffte_scale_follows_lucid_formula(h: int, w: int) -> None:
    """scale = 1 / max(sqrt(fy^2 + fx^2), 1 / max(H, W)) ** decay_power, fy, fx in cycles/px."""
    for decay in (1.0, 2.0):
        scale = frequency_scale(h, w, decay)
        assert scale.shape == (h, w // 2 + 1)
        fft, ffte = FFT(h, w), FFTE(h, w, decay_power=decay)
        cases = [(0, 0), (1, 0), (0, 1), (h - 1, 1), (h // 2, 0), (0, w // 2),
                 (h // 2, w // 2), (2, w // 2 - 1)]
        for ky, kx in cases:
            fy = (ky if ky <= (h - 1) // 2 else ky - h) / h  # fftfreq: Nyquist row negative
            fx = kx / w
            expected = 1.0 / max(math.hypot(fy, fx), 1.0 / max(h, w)) ** decay
            assert scale[ky, kx].item() == pytest.approx(expected, rel=1e-12)
            if (ky, kx) == (0, 0):
                assert expected == pytest.approx(max(h, w) ** decay)
            for imag in (False, True):
                v = torch.zeros((1, *fft.shape), dtype=torch.float64)
                v[0, 2, ky, kx, int(imag)] = 1.0
                torch.testing.assert_close(ffte.logits(v)[0, 2],
                                           expected * _basis(h, w, ky, kx, imag),
                                           atol=1e-10, rtol=0)
                torch.testing.assert_close(ffte.logits(v), expected * fft.logits(v),
                                           atol=1e-10, rtol=0)


def test_ffte_images_are_smoother_than_fft_images() -> None:
    fft, ffte = FFT(64, 64), FFTE(64, 64)
    v = torch.randn((4, *fft.shape), generator=_gen(2))
    rough_fft, rough_ffte = _roughness(fft.logits(v)), _roughness(ffte.logits(v))
    assert rough_fft > 1.5  # about 2 for white noise
    # 1/f amplitudes: about 0.57 at 64 x 64 (0.44 at 224 x 224); decay_power 2: about 0.02
    assert rough_ffte < rough_fft / 3
    assert _roughness(FFTE(64, 64, decay_power=2.0).logits(v)) < rough_fft / 30
    # the same for the network inputs at the initial scale (sigmoid still nearly linear)
    v0 = fft.init(4, _gen(3))
    assert _roughness(ffte(v0)) < _roughness(fft(v0)) / 3


def test_fft_init_output_range_and_gradients() -> None:
    for p in (FFT(32, 24), FFTE(32, 24)):
        v = p.init(3, _gen(4))
        assert v.shape == (3, *p.shape)
        assert v.std().item() == pytest.approx(p.init_std, rel=0.1)
        v.requires_grad_(True)
        img = p(v)
        assert img.shape == (3, 3, 32, 24)
        assert torch.all((img > 0) & (img < 1))
        assert (img - 0.5).abs().max() < 0.25  # grey with faint noise
        weights = torch.randn(img.shape, generator=_gen(5))
        (g,) = torch.autograd.grad((img * weights).sum(), v)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        torch.testing.assert_close(p.render(v), img)


def test_fft_works_with_torch_func_vjp_vmap() -> None:
    """ifv.math.jacobian's "vmap" method differentiates P through torch.func."""
    p = FFTE(8, 8)
    v = p.init(2, _gen(6)).double()
    _, vjp_fn = torch.func.vjp(lambda u: p(u).mean((-2, -1)), v)  # (2, 3)
    cot = torch.eye(3, dtype=torch.float64)[:, None, :].expand(3, 2, 3)
    (g,) = torch.func.vmap(vjp_fn)(cot)
    assert g.shape == (3, 2, *p.shape)
    assert g.abs().sum() > 0


# ---------------------------------------------------------------------------- geometry


def _extreme_v(channels: int) -> torch.Tensor:
    vals = torch.tensor([-1e4, -50.0, -20.0, -1.0, 0.0, 1.0, 20.0, 50.0, 1e4])
    grid = torch.cartesian_prod(*([vals] * channels))  # (9^C, C)
    return grid.T.reshape(1, channels, len(vals) ** (channels - 2), len(vals) ** 2)


@pytest.mark.parametrize("mask", ["fixed", "free"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_geometry_ranges_for_extreme_values(mask: str, dtype: torch.dtype) -> None:
    channels = 4 if mask == "free" else 3
    p = Geometry(9 ** (channels - 2), 81, mask=mask)
    v = _extreme_v(channels).to(dtype)
    assert v.shape == (1, *p.shape)
    out = p(v)
    assert out.shape == (1, 5, *p.shape[1:])
    assert torch.isfinite(out).all()
    m, n, d = out[:, 0], out[:, 1:4], out[:, 4]
    torch.testing.assert_close(n.norm(dim=1), torch.ones_like(m), atol=1e-6, rtol=0)
    assert (n[:, 2] >= 0).all()
    assert ((d >= 0) & (d <= 1)).all()
    if mask == "fixed":
        assert (m == 1).all()
    else:
        assert ((m >= -1) & (m <= 1)).all()
        assert m.min() == -1 and m.max() == 1  # the extremes are reached
    r = p.render(v)
    assert r.shape == (1, 4, *p.shape[1:])
    assert ((r >= 0) & (r <= 1)).all()
    torch.testing.assert_close(r, torch.cat(((n + 1) / 2, d[:, None]), 1))


def test_geometry_theta_covers_the_upper_hemisphere() -> None:
    """theta = pi (sigmoid(t) - 1/2); n = (sin th cos phi, sin th sin phi, cos th)."""
    p = Geometry(1, 5)
    t = torch.tensor([-50.0, -1.0, 0.0, 2.0, 50.0], dtype=torch.float64)
    phi = torch.tensor([0.3, -2.0, 1.0, 7.0, 100.0], dtype=torch.float64)
    v = torch.stack((phi, t, torch.zeros(5, dtype=torch.float64)))[None, :, None, :]
    n = p.normal(v)[0, :, 0]
    theta = math.pi * (torch.sigmoid(t) - 0.5)
    expected = torch.stack((theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()))
    torch.testing.assert_close(n, expected, atol=1e-12, rtol=0)
    assert n[2, 2] == 1  # t = 0: facing the viewer
    assert abs(n[2, 0]) < 1e-12 and abs(n[2, 4]) < 1e-12  # t = -+50: on the horizon


@pytest.mark.parametrize("mask", ["fixed", "free"])
def test_geometry_n_p_matches_table_1(mask: str) -> None:
    p = make_param(f"geometry_{mask}", 128, 128)
    assert isinstance(p, Geometry) and p.name == f"geometry_{mask}"
    assert p.n_p == 128 * 128 * (4 if mask == "free" else 3)
    v = p.init(2, _gen(7))
    assert v.shape == (2, *p.shape)
    assert (v[:, 0].abs() <= math.pi).all() and v[:, 0].std() > 1  # phi ~ U(-pi, pi)
    assert v[:, 1:].abs().max() < 0.1
    out = p(v)
    assert out.shape == (2, 5, 128, 128)
    assert (out[:, 3] > 0.99).all()  # normals near (0, 0, 1)
    torch.testing.assert_close(out[:, 4], torch.full_like(out[:, 4], 0.5), atol=0.02, rtol=0)


@pytest.mark.parametrize("mask", ["fixed", "free"])
def test_geometry_gradients_reach_every_variable(mask: str) -> None:
    p = Geometry(6, 7, mask=mask)
    v = (torch.randn((2, *p.shape), generator=_gen(8), dtype=torch.float64)).requires_grad_()
    out = p(v)
    weights = torch.randn(out.shape, generator=_gen(9), dtype=torch.float64)
    (g,) = torch.autograd.grad((out * weights).sum(), v)
    for c in range(p.shape[0]):  # phi, theta, depth[, mask]
        assert (g[:, c] != 0).all(), c
    (g_r,) = torch.autograd.grad((p.render(v) * weights[:, :4]).sum(), v)
    for c in range(3):  # render has no mask channel
        assert (g_r[:, c] != 0).all(), c


def test_geometry_rejects_unknown_mask() -> None:
    with pytest.raises(ValueError, match="fixed, free"):
        Geometry(4, 4, mask="binary")


# ---------------------------------------------------------------------------- make_param


def test_make_param_names() -> None:
    assert PARAMS == ("rgb", "fft", "ffte", "geometry_fixed", "geometry_free")
    expected = {"rgb": RGB, "fft": FFT, "ffte": FFTE, "geometry_fixed": Geometry,
                "geometry_free": Geometry}
    for name in PARAMS:
        p = make_param(name, 16, 12)
        assert type(p) is expected[name]
        assert p.name == name
        assert p.n_p == math.prod(p.shape)
        v = p.init(2, _gen(10))
        assert v.shape == (2, *p.shape)
        r = p.render(v)
        assert r.shape[-2:] == (16, 12) and ((r >= 0) & (r <= 1)).all()
    assert make_param("ffte", 8, 8, decay_power=2.0).decay_power == 2.0
    assert make_param("fft", 8, 8, init_std=0.5).init_std == 0.5
    assert make_param("geometry_free", 8, 8, init_std=0.5).init_std == 0.5


def test_make_param_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown parametrization 'hsv'") as info:
        make_param("hsv", 8, 8)
    for name in PARAMS:
        assert name in str(info.value)


def test_rgb_unchanged() -> None:
    p = RGB(5, 6)
    assert p.shape == (3, 5, 6) and p.n_p == 90 and p.name == "rgb"
    v = p.init(2, _gen(11))
    torch.testing.assert_close(v, torch.randn((2, 3, 5, 6), generator=_gen(11)) * 0.01)
    torch.testing.assert_close(p(v), torch.sigmoid(v))
    torch.testing.assert_close(p.render(v), torch.sigmoid(v))
