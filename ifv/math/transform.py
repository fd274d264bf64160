"""Transformation robustness: the random transformations FV applies every step.

Lucid and Lucent apply a fresh random transformation T to the image before the network at
every optimization step (pad, jitter, random scale, random rotate), so a realization is a
stationary point of E_T[S_x(N(T(P(v))))] rather than of f_x (``ifv.math.robust``,
docs/robust-ifv.md). Here:

- ops: deterministic, differentiable maps on image batches (B, C, H, W) in [0, 1]
  (``Pad``, ``Crop``, ``Shift``, ``Zoom``, ``Turn``, ``Resize``); they keep the dtype and
  device and are linear in the image, so gradients flow through them.
- steps: random ops (``Jitter``, ``RandomScale``, ``RandomRotate``; ``Pad`` and ``Resize``
  are their own deterministic step) whose ``sample(generator)`` draws one op.
- ``Transform``: a list of steps; ``sample`` draws a fixed ``Sampled`` transform (one draw
  per step for the whole batch, as Lucid and Lucent do), ``samples(n, seed)`` a fixed list
  for the expectation estimate (``apply_each``), ``__call__`` draws and applies (FV).

Each step has a ``convention``: "ifv" (ifv's own: pixel-centre bilinear resampling, a true
rotation about the image centre), "lucid" or "lucent" (the exact arithmetic of those tools).
``standard(size)`` is Lucid's standard set sized to the input; ``lucid()`` and ``lucent()``
reproduce the two tools' default pipelines.

Sources read (values, order and arithmetic; no code copied):
- tensorflow/lucid@6dcc927e (v0.3.10): lucid/optvis/transform.py (``standard_transforms``,
  ``jitter``: tf.random_crop to H - d, offsets in {0..d}; ``random_scale``: size
  int(float32(s) * float32(H)), tf.image.resize_bilinear with its TF1 defaults, no
  half-pixel centres; ``random_rotate``: 3.14 * deg / 180 rad, tf.contrib.image.rotate, whose
  default interpolation is NEAREST with zero fill) and lucid/optvis/render.py (the render
  loop appends no geometric op; the model's value-range map belongs to the network). The
  tfa variant of transform.py (@17f33cfd) has the same values. The rotation's output-to-input
  map is tensorflow/addons tensorflow_addons/image/transform_ops.py
  ``angles_to_projective_transforms``.
- greentfrapp/lucent@6123386c: lucent/optvis/transform.py (``jitter``: kornia translate by
  (dx, dy) in {0..d-1}^2; ``random_scale``: Upsample to ceil(s * H) with align_corners=True,
  then zero padding [pad_y, pad_x, pad_y, pad_x]; ``random_rotate``: kornia rotation about
  ((W-1)/2, (H-1)/2)) and lucent/optvis/render.py (``render_vis`` appends the model's
  normalization, then, if the image is under 224 px on a side or ``fixed_image_size`` is
  set, Upsample(size, bilinear, align_corners=True)). setup.py pins kornia<=0.4.1; in
  kornia v0.4.1 (geometry/transform/imgwarp.py, affwarp.py, geometry/warp/
  homography_warper.py) ``warp_affine`` normalizes pixel matrices for corner-aligned
  coordinates but samples with align_corners=False, so a shift by dx moves the content by
  dx * W / (W - 1) px (bilinear); ``Shift`` and ``Turn`` reproduce that.
The normalization both tools append is a per-channel affine map, which commutes with the
final bilinear resize (its weights sum to 1), so it stays in the network here. The forward
maps are reproduced; the ops keep the image dtype (Lucent's rotate casts to float32) and
differentiate exactly, whereas TF's registered gradient of Lucid's rotation warps the
incoming gradient by the inverse rotation (an approximation of the adjoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ifv.errors import UserError
from ifv.validate import choice, count, number, plain

CONVENTIONS = ("ifv", "lucid", "lucent")
PRESETS = ("standard", "lucid", "lucent")
# The steps of a custom transforms list: {pad: px}, {jitter: px}, {scale: [factors]},
# {rotate: [degrees]} (pad fills with grey; ifv's arithmetic).
STEPS = ("pad", "jitter", "scale", "rotate")
# A validated transforms value: none, a preset's name, or custom steps ((kind, value), ...)
Spec = str | tuple[tuple[str, Any], ...]
# Lucid's and Lucent's ``standard_transforms`` (identical in both).
STANDARD_PAD = 12
STANDARD_JITTER = (8, 4)
STANDARD_SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
STANDARD_ANGLES = tuple(range(-10, 11)) + 5 * (0,)
# Lucid's default parametrization is 128 px; its values are sized for that.
REFERENCE_SIZE = 128
# Lucent's render_vis upsamples images under this many px on a side to this size.
LUCENT_MIN_SIZE = 224

Op = Callable[[Tensor], Tensor]


class Step(Protocol):
    """A random op: ``sample(generator)`` draws one deterministic op."""

    def sample(self, generator: torch.Generator) -> Op: ...


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")


def _draw(n: int, generator: torch.Generator) -> int:
    """A uniform integer in {0, .., n-1} from ``generator``."""
    return int(torch.randint(n, (1,), generator=generator))


# --- deterministic ops --------------------------------------------------------------------


@dataclass(frozen=True)
class Pad:
    """Pad ``width`` px on every side: constant ``value`` or "reflect". Also a step."""

    width: int
    mode: str = "constant"
    value: float = 0.5

    def sample(self, generator: torch.Generator) -> Op:
        return self

    def __call__(self, images: Tensor) -> Tensor:
        if self.width == 0:
            return images
        if self.mode == "constant":
            return F.pad(images, [self.width] * 4, mode="constant", value=self.value)
        return F.pad(images, [self.width] * 4, mode=self.mode)


@dataclass(frozen=True)
class Crop:
    """Lucid's jitter: the (H - d, W - d) window at offset (top, left), both in {0..d}."""

    top: int
    left: int
    d: int

    def __call__(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        if self.d >= min(h, w):
            raise ValueError(f"jitter {self.d} needs images over {self.d} px, got {h}x{w}")
        return images[..., self.top:self.top + h - self.d, self.left:self.left + w - self.d]


def _warp(images: Tensor, m: Sequence[Sequence[float]], corners: bool,
          mode: str = "bilinear") -> Tensor:
    """out(p) = in(m^{-1} p) for the forward pixel map m (2 x 3, source -> output), zeros
    outside. ``corners``: normalize m for corner-aligned coordinates (pixel 0 and W-1 at -1
    and 1) as kornia v0.4.1 does, though sampling is pixel-centred (align_corners=False);
    otherwise pixel-centred throughout, so m acts exactly in pixel coordinates."""
    b, c, h, w = images.shape
    if corners:
        n = torch.tensor([[2 / (w - 1), 0, -1], [0, 2 / (h - 1), -1], [0, 0, 1]],
                         dtype=torch.float64)
    else:
        n = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]],
                         dtype=torch.float64)
    m3 = torch.eye(3, dtype=torch.float64)
    m3[:2] = torch.tensor(m, dtype=torch.float64)
    theta = (n @ torch.linalg.inv(m3) @ torch.linalg.inv(n))[:2]  # output -> source, normalized
    theta = theta.to(images).expand(b, 2, 3)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class Shift:
    """Lucent's jitter: kornia (v0.4.1) translate by (dx, dy) px, bilinear, zero fill (the
    content moves by dx W/(W-1), dy H/(H-1) px, see the module docstring)."""

    dx: int
    dy: int

    def __call__(self, images: Tensor) -> Tensor:
        if self.dx == 0 and self.dy == 0:
            return images
        return _warp(images, [[1, 0, self.dx], [0, 1, self.dy]], corners=True)


def _tf1_bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) weights of TF1's resize_bilinear along one axis (align_corners=False,
    no half-pixel centres): source s = o * n_in / n_out in float32, lerp between floor(s)
    and min(floor(s) + 1, n_in - 1)."""
    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    src = torch.arange(n_out, dtype=torch.float32) * scale
    lo = src.floor()
    lerp = (src - lo).double()
    lo = lo.long()
    hi = (lo + 1).clamp(max=n_in - 1)
    mat = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    mat.index_put_((rows, lo), 1 - lerp, accumulate=True)
    mat.index_put_((rows, hi), lerp, accumulate=True)
    return mat


@dataclass(frozen=True)
class Zoom:
    """Bilinear rescaling by ``scale`` in a tool's arithmetic.

    "ifv": size round(s H) x round(s W), pixel-centred (align_corners=False). "lucid": size
    int(float32(s) float32(H)), TF1 resize_bilinear. "lucent": size ceil(s H), corner-aligned
    (align_corners=True), then zero padding of ceil((H - H')/2) (top, left) and of
    ceil((W - W')/2) (bottom, right) where the image shrank (Lucent pads [pad_y, pad_x,
    pad_y, pad_x]).
    """

    scale: float
    convention: str = "ifv"

    def __post_init__(self) -> None:
        _check(self.convention)

    def __call__(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        s = self.scale
        if self.convention == "ifv":
            size = [max(1, math.floor(s * h + 0.5)), max(1, math.floor(s * w + 0.5))]
            if size == [h, w]:
                return images
            return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if self.convention == "lucid":
            s32 = torch.tensor(s, dtype=torch.float32)
            oh = int(s32 * torch.tensor(float(h), dtype=torch.float32))
            ow = int(s32 * torch.tensor(float(w), dtype=torch.float32))
            my = _tf1_bilinear_matrix(h, oh).to(images)
            mx = _tf1_bilinear_matrix(w, ow).to(images)
            return my @ images @ mx.T
        oh, ow = math.ceil(s * h), math.ceil(s * w)
        pad_x, pad_y = max(0, math.ceil((w - ow) / 2)), max(0, math.ceil((h - oh) / 2))
        out = F.interpolate(images, size=[oh, ow], mode="bilinear", align_corners=True)
        return F.pad(out, [pad_y, pad_x, pad_y, pad_x])


def _round_half_away(t: Tensor) -> Tensor:
    """std::round: halves away from zero (torch.round rounds them to even)."""
    return torch.sign(t) * torch.floor(t.abs() + 0.5)


def _tf_rotate_nearest(images: Tensor, degrees: float) -> Tensor:
    """tf.contrib.image.rotate by Lucid's 3.14 * deg / 180 rad, nearest, zero fill; the
    output-to-input map of angles_to_projective_transforms, in float32 as TF computes it."""
    h, w = images.shape[-2:]
    f32 = torch.float32
    rad = torch.tensor(3.14, dtype=f32) * torch.tensor(float(degrees), dtype=f32) / 180.0
    cos, sin = torch.cos(rad), torch.sin(rad)
    hf, wf = torch.tensor(float(h), dtype=f32), torch.tensor(float(w), dtype=f32)
    x_off = ((wf - 1) - (cos * (wf - 1) - sin * (hf - 1))) / 2.0
    y_off = ((hf - 1) - (sin * (wf - 1) + cos * (hf - 1))) / 2.0
    oy, ox = torch.meshgrid(torch.arange(h, dtype=f32), torch.arange(w, dtype=f32),
                            indexing="ij")
    ix = _round_half_away(cos * ox + -sin * oy + x_off).long()
    iy = _round_half_away(sin * ox + cos * oy + y_off).long()
    inside = ((ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)).flatten().to(images.device)
    index = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).flatten().to(images.device)
    out = images.flatten(-2).index_select(-1, index)
    return torch.where(inside, out, torch.zeros((), dtype=images.dtype,
                                                device=images.device)).unflatten(-1, (h, w))


@dataclass(frozen=True)
class Turn:
    """Rotation by ``degrees`` counterclockwise (as displayed) about the image centre
    ((W-1)/2, (H-1)/2), same size, zero fill.

    "ifv": bilinear, exact in pixel coordinates. "lucid": Lucid's nearest-neighbour TF
    rotation (3.14 for pi). "lucent": kornia v0.4.1 rotation (bilinear, its normalization).
    """

    degrees: float
    convention: str = "ifv"

    def __post_init__(self) -> None:
        _check(self.convention)

    def __call__(self, images: Tensor) -> Tensor:
        if self.degrees == 0:
            return images
        if self.convention == "lucid":
            return _tf_rotate_nearest(images, self.degrees)
        h, w = images.shape[-2:]
        a = math.radians(self.degrees)
        cos, sin = math.cos(a), math.sin(a)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        m = [[cos, sin, (1 - cos) * cx - sin * cy], [-sin, cos, sin * cx + (1 - cos) * cy]]
        return _warp(images, m, corners=self.convention == "lucent")


@dataclass(frozen=True)
class Resize:
    """Bilinear resize to ``size`` = (H, W) (Lucent's final Upsample: align_corners=True).
    Also a step."""

    size: tuple[int, int]
    align_corners: bool = True

    def sample(self, generator: torch.Generator) -> Op:
        return self

    def __call__(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) == tuple(self.size):
            return images
        return F.interpolate(images, size=list(self.size), mode="bilinear",
                             align_corners=self.align_corners)


# --- random steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class Jitter:
    """Random shift. "ifv"/"lucid": ``Crop`` at offsets drawn from {0..d} (the image loses d
    px per axis); "lucent": ``Shift`` by (dx, dy) drawn from {0..d-1} (size kept)."""

    d: int
    convention: str = "ifv"

    def __post_init__(self) -> None:
        _check(self.convention)
        if self.d < (1 if self.convention == "lucent" else 0):
            raise ValueError(f"jitter must be >= {1 if self.convention == 'lucent' else 0}")

    def sample(self, generator: torch.Generator) -> Op:
        if self.convention == "lucent":
            dx = _draw(self.d, generator)
            return Shift(dx, _draw(self.d, generator))
        top = _draw(self.d + 1, generator)
        return Crop(top, _draw(self.d + 1, generator), self.d)


@dataclass(frozen=True)
class RandomScale:
    """``Zoom`` by a factor drawn uniformly from ``scales``."""

    scales: tuple[float, ...]
    convention: str = "ifv"

    def __post_init__(self) -> None:
        _check(self.convention)

    def sample(self, generator: torch.Generator) -> Op:
        return Zoom(self.scales[_draw(len(self.scales), generator)], self.convention)


@dataclass(frozen=True)
class RandomRotate:
    """``Turn`` by an angle in degrees drawn uniformly from ``angles``."""

    angles: tuple[float, ...]
    convention: str = "ifv"

    def __post_init__(self) -> None:
        _check(self.convention)

    def sample(self, generator: torch.Generator) -> Op:
        return Turn(self.angles[_draw(len(self.angles), generator)], self.convention)


# --- pipelines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampled:
    """One fixed transform T: its ops applied in order. images (B, C, H, W) -> (B, C, H', W')."""

    ops: tuple[Op, ...]

    def __call__(self, images: Tensor) -> Tensor:
        for op in self.ops:
            images = op(images)
        return images


@dataclass(frozen=True)
class Transform:
    """A random transformation: ``steps`` applied in order, each drawn anew per sample."""

    steps: tuple[Step, ...]

    def sample(self, generator: torch.Generator) -> Sampled:
        """One draw of every step, in order."""
        return Sampled(tuple(step.sample(generator) for step in self.steps))

    def samples(self, n: int, seed: int) -> list[Sampled]:
        """n fixed transforms from a CPU generator seeded by ``seed``: the same list per seed."""
        generator = torch.Generator().manual_seed(seed)
        return [self.sample(generator) for _ in range(n)]

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Draw one transform and apply it to the batch (what FV does every step)."""
        return self.sample(generator)(images)


def apply_each(samples: Sequence[Op], images: Tensor) -> list[Tensor]:
    """[T_1(images), .., T_K(images)] for a fixed list of transforms (the K samples of the
    expectation estimate); sizes may differ between samples."""
    return [t(images) for t in samples]


def _rounded(x: float) -> int:
    return math.floor(x + 0.5)


def standard(size: int, *, reference: int = REFERENCE_SIZE, resize: bool = False) -> Transform:
    """Lucid's standard set sized to inputs of ``size`` px (ifv's arithmetic).

    Pad 12 r (constant 0.5), jitter 8 r, random scale in {0.9, 0.92, .., 1.1}, random rotate
    in {-10, .., 10} degrees (0 six times as likely), jitter 4 r, with r = size / reference
    and the widths rounded (Lucid's values at ``size == reference``). ``resize``: end with a
    bilinear resize back to size x size (networks with a fixed input size).
    """
    r = size / reference
    steps: list[Step] = [Pad(_rounded(STANDARD_PAD * r), "constant", 0.5),
                         Jitter(_rounded(STANDARD_JITTER[0] * r)),
                         RandomScale(STANDARD_SCALES), RandomRotate(STANDARD_ANGLES),
                         Jitter(_rounded(STANDARD_JITTER[1] * r))]
    if resize:
        steps.append(Resize((size, size), align_corners=False))
    return Transform(tuple(steps))


def lucid() -> Transform:
    """Lucid's ``standard_transforms`` as its render loop applies them (no final resize)."""
    return Transform((Pad(STANDARD_PAD, "constant", 0.5), Jitter(STANDARD_JITTER[0], "lucid"),
                      RandomScale(STANDARD_SCALES, "lucid"),
                      RandomRotate(STANDARD_ANGLES, "lucid"), Jitter(STANDARD_JITTER[1], "lucid")))


def lucent(height: int, width: int | None = None,
           fixed_image_size: int | tuple[int, int] | None = None) -> Transform:
    """Lucent's ``standard_transforms`` as ``render_vis`` applies them to a height x width
    image: then Upsample to ``fixed_image_size`` if given, else to 224 x 224 if a side is
    under 224 px (bilinear, align_corners=True)."""
    width = height if width is None else width
    steps: list[Step] = [Pad(STANDARD_PAD, "constant", 0.5),
                         Jitter(STANDARD_JITTER[0], "lucent"),
                         RandomScale(STANDARD_SCALES, "lucent"),
                         RandomRotate(STANDARD_ANGLES, "lucent"),
                         Jitter(STANDARD_JITTER[1], "lucent")]
    size = fixed_image_size
    if size is None and min(height, width) < LUCENT_MIN_SIZE:
        size = LUCENT_MIN_SIZE
    if size is not None:
        steps.append(Resize((size, size) if isinstance(size, int) else tuple(size)))
    return Transform(tuple(steps))


def preset(name: str, height: int, width: int | None = None) -> Transform:
    """The transformation called ``name`` (one of PRESETS) for height x width inputs
    ("standard" is sized by the shorter side)."""
    width = height if width is None else width
    if name == "standard":
        return standard(min(height, width))
    if name == "lucid":
        return lucid()
    if name == "lucent":
        return lucent(height, width)
    raise ValueError(f"unknown transformation preset {name!r}; valid: {', '.join(PRESETS)}")


# --- the user's transforms value: its grammar, description and building ---------------


def parse(value: Any) -> Spec:
    """A user's ``transforms`` value, validated: none, a preset name, or a custom list of
    steps ({pad: PX}, {jitter: PX}, {scale: [S, ..]}, {rotate: [DEG, ..]}) as ((kind,
    value), ...)."""
    valid = ("none", *PRESETS)
    if isinstance(value, str):
        return choice("transforms", value, valid)
    bad = (f"transforms must be {', '.join(valid)} or a list of steps "
           f"[{{pad: PX}}, {{jitter: PX}}, {{scale: [S, ..]}}, {{rotate: [DEG, ..]}}], "
           f"got {value!r}")
    if not isinstance(value, Sequence) or not value:
        raise UserError(bad)
    steps = []
    for i, step in enumerate(value):
        if not isinstance(step, Mapping) or len(step) != 1:
            raise UserError(bad)
        ((kind, arg),) = step.items()
        key = f"transforms[{i}].{kind}"
        choice(f"transforms[{i}] step", kind, STEPS)
        if kind in ("pad", "jitter"):
            steps.append((kind, count(key, arg)))
            continue
        if isinstance(arg, str) or not isinstance(arg, Sequence) or not arg:
            raise UserError(f"{key} must be a non-empty list of numbers, got {arg!r}")
        if kind == "scale":
            steps.append((kind, tuple(number(key, a, strict=True) for a in arg)))
        else:
            steps.append((kind, tuple(number(key, a, low=-360.0) for a in arg)))
    return tuple(steps)


def build(spec: Spec, height: int, width: int) -> Transform | None:
    """The ``Transform`` of a validated transforms value (``parse``) for height x width
    inputs (None for none)."""
    if spec == "none":
        return None
    if isinstance(spec, str):
        return preset(spec, height, width)
    make: dict[str, Callable[[Any], Step]] = {
        "pad": lambda a: Pad(a, "constant", 0.5), "jitter": Jitter,
        "scale": RandomScale, "rotate": RandomRotate}
    return Transform(tuple(make[kind](arg) for kind, arg in spec))


def describe(spec: Spec) -> str:
    """One string for a transforms value: its name, or the custom steps (``pad=3 jitter=2
    scale=0.9,1.1``)."""
    if isinstance(spec, str):
        return spec
    return " ".join(f"{kind}={','.join(f'{a:g}' for a in arg) if isinstance(arg, tuple) else arg}"
                    for kind, arg in spec)


def from_config(node: Any) -> str | list[Any]:
    """``transforms.*`` of a composed config as a user's value (for ``parse``):
    transforms.name, or with name custom its transforms.steps."""
    if node.name != "custom":
        if node.steps is not None:
            raise UserError("transforms.steps needs transforms=custom")
        return str(node.name)
    if node.steps is None:
        raise UserError("transforms=custom needs transforms.steps=[{pad: PX}, {jitter: PX}, "
                        "{scale: [..]}, {rotate: [..]}]")
    return plain(node.steps)
