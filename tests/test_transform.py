"""Transformation robustness ops and presets (ifv.math.transform) against hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from ifv.math import transform as T


def _image(b: int = 2, c: int = 3, h: int = 9, w: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


def test_same_seed_same_sequence() -> None:
    t = T.standard(32)
    a, b, c = t.samples(20, seed=3), t.samples(20, seed=3), t.samples(20, seed=4)
    assert a == b
    assert a != c
    x = _image(h=32, w=32)
    for sa, sb in zip(a, b, strict=True):
        assert torch.equal(sa(x), sb(x))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(t(x, g1), t(x, g2))


@pytest.mark.parametrize("convention", T.CONVENTIONS)
def test_identity_at_zero_strength(convention: str) -> None:
    x = _image()
    jitter = 1 if convention == "lucent" else 0
    t = T.Transform((T.Pad(0), T.Jitter(jitter, convention), T.RandomScale((1.0,), convention),
                     T.RandomRotate((0,), convention), T.Resize((9, 9))))
    for s in t.samples(5, seed=0):
        assert torch.equal(s(x), x)
    for op in (T.Zoom(1.0, convention), T.Shift(0, 0), T.Crop(0, 0, 0)):
        assert torch.equal(op(x), x)
    assert torch.allclose(T.Turn(360.0, "ifv")(x), x, atol=1e-12)


def test_preset_values_and_order() -> None:
    scales = (0.9, 0.92, 0.94, 0.96, 0.98, 1.0, 1.02, 1.04, 1.06, 1.08, 1.1)
    angles = tuple(range(-10, 11)) + (0, 0, 0, 0, 0)
    assert all(math.isclose(a, b) for a, b in zip(T.STANDARD_SCALES, scales, strict=True))
    assert T.STANDARD_ANGLES == angles and len(angles) == 26
    assert T.lucid().steps == (T.Pad(12, "constant", 0.5), T.Jitter(8, "lucid"),
                               T.RandomScale(T.STANDARD_SCALES, "lucid"),
                               T.RandomRotate(angles, "lucid"), T.Jitter(4, "lucid"))
    base = (T.Pad(12, "constant", 0.5), T.Jitter(8, "lucent"),
            T.RandomScale(T.STANDARD_SCALES, "lucent"), T.RandomRotate(angles, "lucent"),
            T.Jitter(4, "lucent"))
    assert T.lucent(128).steps == base + (T.Resize((224, 224), True),)
    assert T.lucent(256, 200).steps == base + (T.Resize((224, 224), True),)
    assert T.lucent(224).steps == base
    assert T.lucent(256, fixed_image_size=(299, 299)).steps == base + (T.Resize((299, 299)),)
    assert T.standard(128).steps == (T.Pad(12, "constant", 0.5), T.Jitter(8),
                                     T.RandomScale(T.STANDARD_SCALES),
                                     T.RandomRotate(angles), T.Jitter(4))
    assert T.preset("lucid", 64) == T.lucid()
    with pytest.raises(ValueError, match="unknown transformation preset"):
        T.preset("kornia", 64)


def test_standard_sizes_scale_with_input() -> None:
    def widths(size: int) -> tuple[int, int, int]:
        pad, j1, _, _, j2 = T.standard(size).steps
        return pad.width, j1.d, j2.d

    assert widths(128) == (12, 8, 4)
    assert widths(256) == (24, 16, 8)
    assert widths(224) == (21, 14, 7)
    assert widths(32) == (3, 2, 1)
    assert widths(64) == (6, 4, 2)
    assert T.standard(32, reference=32).steps == T.standard(128).steps
    assert T.standard(32, resize=True).steps[-1] == T.Resize((32, 32), align_corners=False)
    for s in T.standard(32, resize=True).samples(5, seed=0):
        assert s(_image(h=32, w=32)).shape == (2, 3, 32, 32)


def test_lucid_shapes() -> None:
    """pad 12 -> 152, crop 8 -> 144, scale int(float32(s) 144), rotate, crop 4."""
    x = _image(1, 3, 128, 128)
    for s in T.lucid().samples(8, seed=1):
        pad, crop1, zoom, turn, crop2 = s.ops
        assert 0 <= crop1.top <= 8 and 0 <= crop1.left <= 8 and 0 <= crop2.top <= 4
        side = int(torch.tensor(zoom.scale, dtype=torch.float32)
                   * torch.tensor(144.0, dtype=torch.float32)) - 4
        assert s(x).shape == (1, 3, side, side)
    assert T.Zoom(1.1, "lucid")(_image(1, 1, 140, 140)).shape[-1] == 154


def test_lucent_shapes() -> None:
    """Jitter keeps the size; Lucent's scale pads a shrunk image by ceil((H - H')/2)."""
    for s in T.lucent(128).samples(5, seed=0):
        assert s(_image(1, 3, 128, 128)).shape == (1, 3, 224, 224)
    x = _image(1, 1, 152, 152)
    assert T.Zoom(0.9, "lucent")(x).shape == (1, 1, 153, 153)  # 137 + 2 * 8
    assert T.Zoom(1.1, "lucent")(x).shape == (1, 1, 168, 168)  # ceil(167.2)
    for s in T.lucent(256).samples(5, seed=0):
        zoom = s.ops[2]
        side = math.ceil(zoom.scale * 280)
        side += 2 * max(0, math.ceil((280 - side) / 2))
        assert s(_image(1, 1, 256, 256)).shape == (1, 1, side, side)


def test_lucent_cases_from_its_tests() -> None:
    """Lucent's own unit tests (tests/optvis/test_transform.py) of pad, scale, rotate."""
    ones = torch.ones(1, 3, 2, 2)
    expect = torch.full((1, 3, 4, 4), 0.5)
    expect[..., 1:3, 1:3] = 1
    assert torch.equal(T.Pad(1, "constant", 0.5)(ones), expect)
    assert torch.equal(T.Pad(1, "reflect")(ones), torch.ones(1, 3, 4, 4))
    down = torch.zeros(1, 3, 3, 3)
    down[..., 1, 1] = 1
    assert torch.equal(T.Zoom(0.33, "lucent")(torch.ones(1, 3, 3, 3)), down)
    assert torch.equal(T.Zoom(2, "lucent")(torch.ones(1, 3, 1, 1)), torch.ones(1, 3, 2, 2))
    col = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).expand(1, 3, 2, 2)
    row = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).expand(1, 3, 2, 2)
    assert torch.allclose(T.Turn(90, "lucent")(col), row, atol=1e-6)
    col3 = torch.zeros(1, 3, 3, 3)
    col3[..., 2] = 1
    row3 = torch.zeros(1, 3, 3, 3)
    row3[..., 0, :] = 1
    assert torch.allclose(T.Turn(90, "lucent")(col3), row3, atol=1e-6)


def test_kornia_shift_moves_by_w_over_w_minus_1() -> None:
    """kornia v0.4.1's normalization: a shift by dx moves the content by dx W / (W - 1)."""
    w = 10
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 1, w, w)
    out = T.Shift(2, 0)(ramp)[0, 0, 0]
    j = torch.arange(w, dtype=torch.float64)
    src = j - 2 * w / (w - 1)
    assert torch.allclose(out, src.clamp(min=0), atol=1e-12)  # bilinear; zeros left of 0
    down = T.Shift(0, 3)(ramp.transpose(-1, -2))[0, 0, :, 0]
    assert torch.allclose(down[4:], j[4:] - 3 * w / (w - 1), atol=1e-12)


def test_tf1_resize_bilinear() -> None:
    """TF1 resize_bilinear (no half-pixel centres): source o * in / out, clamped at the end."""
    x = torch.arange(4.0, dtype=torch.float64).expand(1, 1, 4, 4)
    up = T.Zoom(2.0, "lucid")(x)
    assert up.shape == (1, 1, 8, 8)
    assert torch.allclose(up[0, 0, 0], torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.0],
                                                     dtype=torch.float64))
    down = T.Zoom(0.5, "lucid")(x)
    assert torch.allclose(down[0, 0, 0], torch.tensor([0.0, 2.0], dtype=torch.float64))


def test_lucid_rotation_is_nearest_with_zero_fill() -> None:
    x = torch.arange(9.0, dtype=torch.float64).reshape(1, 1, 3, 3)
    r = T.Turn(90, "lucid")(x)
    assert torch.equal(r, torch.rot90(x, 1, dims=(-2, -1)))  # counterclockwise
    r45 = T.Turn(45, "lucid")(_image(1, 1, 8, 8))
    assert r45[0, 0, 0, 0] == 0 and r45[0, 0, -1, -1] == 0  # corners rotated out
    vals = set(_image(1, 1, 8, 8).flatten().tolist()) | {0.0}
    assert set(r45.flatten().tolist()) <= vals  # nearest: no new values


def test_ifv_rotation_is_exact_in_pixels() -> None:
    x = _image(1, 2, 7, 7)
    assert torch.allclose(T.Turn(90)(x), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-12)
    assert torch.allclose(T.Turn(-90)(T.Turn(90)(x)), x, atol=1e-12)
    assert torch.allclose(T.Turn(90, "lucent")(x), torch.rot90(x, 1, dims=(-2, -1)),
                          atol=1e-12)  # square: kornia's normalization cancels


def test_crop_offsets_and_apply_each() -> None:
    x = _image(1, 1, 6, 6)
    assert torch.equal(T.Crop(1, 2, 3)(x), x[..., 1:4, 2:5])
    offsets = {(s.ops[0].top, s.ops[0].left)
               for s in T.Transform((T.Jitter(2),)).samples(200, seed=0)}
    assert offsets == {(i, j) for i in range(3) for j in range(3)}
    shifts = {(s.ops[0].dx, s.ops[0].dy)
              for s in T.Transform((T.Jitter(2, "lucent"),)).samples(200, seed=0)}
    assert shifts == {(i, j) for i in range(2) for j in range(2)}
    samples = T.standard(16).samples(3, seed=2)
    outs = T.apply_each(samples, _image(2, 3, 16, 16))
    assert len(outs) == 3 and all(torch.equal(o, s(_image(2, 3, 16, 16)))
                                  for o, s in zip(outs, samples, strict=True))
    with pytest.raises(ValueError, match="jitter"):
        T.Crop(0, 0, 6)(x)
    with pytest.raises(ValueError, match="convention"):
        T.Zoom(1.0, "opencv")


@pytest.mark.parametrize("op", [
    T.Pad(2, "constant", 0.5), T.Pad(2, "reflect"), T.Crop(1, 0, 2), T.Shift(1, 2),
    T.Zoom(0.8), T.Zoom(1.3, "lucid"), T.Zoom(0.8, "lucent"), T.Turn(17),
    T.Turn(-8, "lucid"), T.Turn(10, "lucent"), T.Resize((7, 9)),
    T.Resize((4, 4), align_corners=False)])
def test_gradcheck(op: T.Op) -> None:
    x = _image(1, 2, 5, 6).requires_grad_(True)
    assert torch.autograd.gradcheck(op, (x,))


def test_gradient_flows_through_presets() -> None:
    for t in (T.lucid(), T.lucent(32), T.standard(32, resize=True)):
        x = _image(1, 3, 32, 32).requires_grad_(True)
        out = t.sample(torch.Generator().manual_seed(0))(x)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
