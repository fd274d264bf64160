"""Parametrizations P: R^{n_p} -> input domain (Sec. 2, 3.2, 3.7).

Every parametrization maps a batch of variables v: (B, *shape) to network inputs and has
``name``, ``shape``, ``channels`` (of the network input it makes), ``n_p`` (= prod(shape)),
``init(n, generator)``, ``__call__(v)`` (the network input) and ``render(v)`` (what SSIM
compares and figures show, in [0, 1]).

- ``rgb``: P_rgb, sigmoid of per-pixel logits (Sec. 3.2).
- ``fft``: P_fft, inverse FFT of the per-channel Fourier coefficients, then the sigmoid
  (Sec. 3.7; spatial de-correlation of Olah et al. 2017).
- ``ffte``: P_ffte, as ``fft`` but the coefficients are first scaled by their frequency
  energy, favouring low frequencies (Sec. 3.7; Lucid's ``fft_image``).
- ``geometry_fixed`` / ``geometry_free``: SRNet's geometry images (mask, normal, depth), with
  the mask fixed to 1 or continuous in [-1, 1] (Sec. 3.7).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor

PARAMS = ("rgb", "fft", "ffte", "geometry_fixed", "geometry_free")
# the parametrizations of images (any number of channels) whose variables follow from the
# image alone (P is invertible on (0, 1)); the geometry ones make SRNet's inputs
IMAGE_PARAMS = ("rgb", "fft", "ffte")


class Parametrization(Protocol):
    """What FV, the Jacobian and the pipeline need from a parametrization P."""

    name: str
    shape: tuple[int, ...]
    channels: int

    @property
    def n_p(self) -> int: ...

    def init(self, n: int, generator: torch.Generator) -> Tensor: ...

    def __call__(self, v: Tensor) -> Tensor: ...

    def render(self, v: Tensor) -> Tensor: ...


class RGB:
    """P_rgb: images in [0, 1] as the sigmoid of an unbounded tensor (Sec. 3.2).

    v: (B, C, H, W) -> images (B, C, H, W); C = 3 (``channels``: 1 for a grayscale network).
    """

    name = "rgb"

    def __init__(self, height: int, width: int, init_std: float = 0.01,
                 channels: int = 3) -> None:
        self.channels = int(channels)
        self.shape = (self.channels, height, width)
        self.init_std = init_std

    @property
    def n_p(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def init(self, n: int, generator: torch.Generator) -> Tensor:
        """Initial parameters: N(0, init_std^2), i.e. a grey image with faint noise."""
        return torch.randn((n, *self.shape), generator=generator) * self.init_std

    def __call__(self, v: Tensor) -> Tensor:
        return torch.sigmoid(v)

    def render(self, v: Tensor) -> Tensor:
        """The image that SSIM compares and figures show: (B, C, H, W) in [0, 1]."""
        return self(v)


def frequency_scale(height: int, width: int, decay_power: float = 1.0) -> Tensor:
    """Lucid's frequency-energy scale of the rfft2 coefficients (Olah et al. 2017).

    scale[ky, kx] = 1 / max(f, 1 / max(H, W)) ** decay_power with
    f = sqrt(fy[ky]^2 + fx[kx]^2), fy = fftfreq(H) (cycles per pixel, signed: the Nyquist
    row of an even H is -1/2) and fx = rfftfreq(W) (0 .. W//2 / W). The DC term gets
    max(H, W) ** decay_power. Returns (H, W//2 + 1), float64.
    """
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    freq = torch.sqrt(fy * fy + fx * fx)
    return 1.0 / freq.clamp_min(1.0 / max(height, width)) ** decay_power


class FFT:
    """P_fft: an image from its Fourier coefficients, then the sigmoid (Sec. 3.7).

    The variables are the real and imaginary parts of the torch.fft.rfft2 coefficients of
    each colour channel, v: (B, 3, H, W//2 + 1, 2) (last axis: real, imaginary). The
    pre-sigmoid image is irfft2(c, s=(H, W), norm="ortho") with c = v[..., 0] + i v[..., 1]:
    the spatial de-correlation of Olah et al. 2017 (Lucid's ``fft_image``). Lucid's colour
    de-correlation and its final division by 4 are not applied: the paper names only the
    spatial de-correlation, and a constant factor only rescales v. The images are
    sigmoid(irfft2(...)): (B, 3, H, W) in [0, 1].

    norm="ortho" makes rfft2/irfft2 inverse to each other with unit-norm Fourier basis
    images, so pixel and coefficient magnitudes are alike (equivalent to Lucid's
    sqrt(H W) factor with its unnormalized-forward / 1/(H W)-inverse convention). The
    imaginary parts of self-conjugate bins (DC, and the Nyquist row/column for even sizes)
    and the conjugate-duplicate halves of the first and (even W) last column do not reach
    the image: n_p = prod(shape) counts them anyway, as Lucid does. Each coefficient of an
    interior column stands for itself and its conjugate partner, so v -> image is not an
    isometry: v ~ N(0, s^2) gives pixels with standard deviation about sqrt(2) s.
    """

    name = "fft"

    def __init__(self, height: int, width: int, init_std: float = 0.01,
                 channels: int = 3) -> None:
        self.height, self.width = height, width
        self.channels = int(channels)
        self.shape = (self.channels, height, width // 2 + 1, 2)
        self.init_std = init_std
        self._scale: Tensor | None = None  # (H, W//2 + 1) frequency weights; None: all 1
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def n_p(self) -> int:
        return math.prod(self.shape)

    def init(self, n: int, generator: torch.Generator) -> Tensor:
        """Initial parameters: coefficients ~ N(0, init_std^2), i.e. grey with faint noise."""
        return torch.randn((n, *self.shape), generator=generator) * self.init_std

    def _weights(self, like: Tensor) -> Tensor | None:
        """The frequency weights on ``like``'s device and dtype (moved there once)."""
        if self._scale is None:
            return None
        where = (like.device, like.dtype)
        if where not in self._copies:
            self._copies[where] = self._scale.to(*where)
        return self._copies[where]

    def logits(self, v: Tensor) -> Tensor:
        """The image before the sigmoid: (B, 3, H, W//2 + 1, 2) -> (B, 3, H, W)."""
        re, im = v[..., 0], v[..., 1]
        w = self._weights(re)
        if w is not None:
            re, im = re * w, im * w
        return torch.fft.irfft2(torch.complex(re, im), s=(self.height, self.width),
                                norm="ortho")

    def coefficients(self, image_logits: Tensor) -> Tensor:
        """The parameters v whose pre-sigmoid image is ``image_logits`` (inverse of logits).

        image_logits: (B, 3, H, W) -> v: (B, 3, H, W//2 + 1, 2).
        """
        c = torch.view_as_real(torch.fft.rfft2(image_logits, norm="ortho"))
        w = self._weights(c)
        return c if w is None else c / w[..., None]

    def __call__(self, v: Tensor) -> Tensor:
        """Network input: sigmoid(logits(v)), (B, 3, H, W) in [0, 1]."""
        return torch.sigmoid(self.logits(v))

    def render(self, v: Tensor) -> Tensor:
        """The image that SSIM compares and figures show: (B, 3, H, W) in [0, 1]."""
        return self(v)


class FFTE(FFT):
    """P_ffte: P_fft with the coefficients scaled by their frequency energy (Sec. 3.7).

    Lucid's ``fft_image`` convention (Olah et al. 2017): the pre-sigmoid image is
    irfft2(scale * c, s=(H, W), norm="ortho") with
    scale[ky, kx] = 1 / max(sqrt(fy^2 + fx^2), 1 / max(H, W)) ** decay_power,
    fy = fftfreq(H)[ky], fx = rfftfreq(W)[kx], decay_power = 1 by default
    (see ``frequency_scale``). With norm="ortho" this equals Lucid's scale * sqrt(H W)
    followed by its 1/(H W)-normalized inverse FFT. The highest frequencies (f in
    [1/2, 1/sqrt(2)]) get weights in [sqrt(2), 2], the DC term max(H, W): images from
    random v are smooth.
    v: (B, 3, H, W//2 + 1, 2) -> images (B, 3, H, W) in [0, 1].
    """

    name = "ffte"

    def __init__(self, height: int, width: int, init_std: float = 0.01,
                 decay_power: float = 1.0, channels: int = 3) -> None:
        super().__init__(height, width, init_std, channels)
        self.decay_power = decay_power
        self._scale = frequency_scale(height, width, decay_power)


class Geometry:
    """SRNet's geometry images: mask, normal map and depth map (Sec. 3.7).

    The network input is (B, 5, H, W) with channels (mask, n_x, n_y, n_z, depth). The
    variables are, per pixel, v = (phi, t, d[, m]): (B, 3, H, W) with ``mask="fixed"``,
    (B, 4, H, W) with ``mask="free"`` (n_p = 128^2 * 4 at 128 x 128, Table 1).

    - normal: theta = pi * (sigmoid(t) - 1/2) in [-pi/2, pi/2], phi unbounded (no
      wrap-around of gradients), n = (sin(theta) cos(phi), sin(theta) sin(phi), cos(theta)).
      theta is the signed polar angle from the z axis, so n_z = cos(theta) >= 0 as the
      paper requires; it is clamped at 0 against rounding when sigmoid(t) saturates to 1.
    - depth = sigmoid(d) in [0, 1].
    - mask = 1 (``"fixed"``, no variables) or tanh(m) in [-1, 1] (``"free"``): a continuous
      relaxation of SRNet's binary {-1, 1} mask.
    """

    channels = 5  # mask, n_x, n_y, n_z, depth

    def __init__(self, height: int, width: int, mask: str = "fixed",
                 init_std: float = 0.01) -> None:
        if mask not in ("fixed", "free"):
            raise ValueError(f"unknown mask mode {mask!r}; valid: fixed, free")
        self.mask = mask
        self.name = f"geometry_{mask}"
        self.shape = (4 if mask == "free" else 3, height, width)
        self.init_std = init_std

    @property
    def n_p(self) -> int:
        return math.prod(self.shape)

    def init(self, n: int, generator: torch.Generator) -> Tensor:
        """phi ~ U(-pi, pi); t, d, m ~ N(0, init_std^2): normals near (0, 0, 1), depth near
        1/2, mask near 0. Returns (n, *shape)."""
        v = torch.randn((n, *self.shape), generator=generator) * self.init_std
        phi = (torch.rand((n, *self.shape[1:]), generator=generator) * 2 - 1) * math.pi
        v[:, 0] = phi
        return v

    def normal(self, v: Tensor) -> Tensor:
        """Unit normals with n_z >= 0: (B, C, H, W) -> (B, 3, H, W)."""
        phi, theta = v[:, 0], math.pi * (torch.sigmoid(v[:, 1]) - 0.5)
        s = torch.sin(theta)
        return torch.stack((s * torch.cos(phi), s * torch.sin(phi),
                            torch.cos(theta).clamp_min(0.0)), dim=1)

    def depth(self, v: Tensor) -> Tensor:
        """Depth in [0, 1]: (B, C, H, W) -> (B, 1, H, W)."""
        return torch.sigmoid(v[:, 2:3])

    def mask_map(self, v: Tensor) -> Tensor:
        """The mask: 1 (fixed) or tanh(m) in [-1, 1] (free): (B, C, H, W) -> (B, 1, H, W)."""
        if self.mask == "fixed":
            return torch.ones_like(v[:, :1])
        return torch.tanh(v[:, 3:4])

    def __call__(self, v: Tensor) -> Tensor:
        """SRNet input (mask, n_x, n_y, n_z, depth): (B, C, H, W) -> (B, 5, H, W)."""
        return torch.cat((self.mask_map(v), self.normal(v), self.depth(v)), dim=1)

    def render(self, v: Tensor) -> Tensor:
        """What SSIM compares and figures show: ((n + 1) / 2, depth), (B, 4, H, W) in [0, 1].

        The mask is left out (fixed: constant; free: a relaxation, not a rendered quantity).
        """
        return torch.cat(((self.normal(v) + 1) / 2, self.depth(v)), dim=1)


def make_param(name: str, height: int, width: int, **kwargs: Any) -> Parametrization:
    """The parametrization called ``name`` (one of PARAMS) for inputs of size height x width.

    kwargs go to the constructor: ``init_std`` for all, ``decay_power`` for "ffte",
    ``channels`` (default 3; 1 for a grayscale network) for "rgb", "fft" and "ffte".
    """
    if name == "rgb":
        return RGB(height, width, **kwargs)
    if name == "fft":
        return FFT(height, width, **kwargs)
    if name == "ffte":
        return FFTE(height, width, **kwargs)
    if name in ("geometry_fixed", "geometry_free"):
        return Geometry(height, width, mask=name.removeprefix("geometry_"), **kwargs)
    raise ValueError(f"unknown parametrization {name!r}; valid: {', '.join(PARAMS)}")
