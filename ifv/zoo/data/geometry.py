"""Procedural geometry images: the offline stand-in for SRNet's isosurface renderings.

Weiss et al. (2019) train SRNet on low- and high-resolution renderings of isosurfaces in
volume data. Here the volumes are smooth random scalar fields in the box [-1, 1]^3 (a few
anisotropic Gaussian blobs, some of them carving, plus low-frequency Fourier waves),
deterministic for a seed. Their isosurfaces are ray cast with an orthographic camera that
looks along -z (x to the right, y up, the camera at z = +1, the far plane at z = -1).

A geometry image is (5, H, W) with the channels of SRNet's input (Sec. 3.1):

- mask: +1 where the ray hits the surface, -1 where it misses;
- normal (x, y, z): the unit outward normal -grad f / |grad f| at the hit (the field is
  positive inside), flipped to face the camera so that n_z >= 0;
- depth: (1 - z_hit) / 2 in [0, 1] along the view ray (0 at the camera's near plane).

Rays that miss get the background normal (0, 0, 1) and depth 1 (the far plane), so every
normal is a unit vector with n_z >= 0, the same domain as the SRNet parametrization's.

Ray casting: the field is sampled at ``steps + 1`` equidistant depths along every ray; the
first sample inside (f > 0) brackets the first crossing, which bisection and a final secant
step refine. Normals are the field's autograd gradient at the refined hit point.
Everything is vectorized over images and pixels; pixels are sampled at their centres, so
the high-resolution image of a surface (``scale`` x the size) samples the same surface at
``scale`` x ``scale`` sub-pixel positions of each low-resolution pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

CHANNELS = ("mask", "normal_x", "normal_y", "normal_z", "depth")
BACKGROUND = (-1.0, 0.0, 0.0, 1.0, 1.0)  # a pixel whose ray misses the surface

Field = Callable[[Tensor], Tensor]


def pixel_centers(height: int, width: int, dtype: torch.dtype = torch.float32,
                  ) -> tuple[Tensor, Tensor]:
    """x (W,) from left to right and y (H,) from top to bottom, in [-1, 1] (pixel centres)."""
    x = (2 * torch.arange(width, dtype=dtype) + 1) / width - 1
    y = 1 - (2 * torch.arange(height, dtype=dtype) + 1) / height
    return x, y


@dataclass
class BlobField:
    """n random scalar fields f(p) = sum_k a_k exp(-sum_i (p_i - c_ki)^2 / (2 s_ki^2))
    + sum_m b_m sin(w_m . p + phase_m) - iso; the surface is f = 0, the inside f > 0.

    centers, scales (n, K, 3); amps (n, K); waves (n, M, 3); phases, wave_amps (n, M);
    iso (n,). Each term is a product of a function of (x, y) and one of z, so the values
    along all orthographic rays at shared depths are one batched matrix product.
    """

    centers: Tensor
    scales: Tensor
    amps: Tensor
    waves: Tensor
    phases: Tensor
    wave_amps: Tensor
    iso: Tensor

    @property
    def n(self) -> int:
        return self.iso.shape[0]

    def __getitem__(self, idx: slice | Tensor) -> BlobField:
        return BlobField(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to(self, dtype: torch.dtype) -> BlobField:
        return BlobField(**{f.name: getattr(self, f.name).to(dtype) for f in fields(self)})

    def __call__(self, p: Tensor) -> Tensor:
        """Values at points p: (n, ..., 3) -> (n, ...)."""
        extra = p.dim() - 2
        shape = (self.n,) + (1,) * extra

        def per_point(t: Tensor) -> Tensor:  # (n, J, ...) -> (n, 1..., J, ...)
            return t.reshape(shape[:1] + (1,) * extra + t.shape[1:])

        d = (p.unsqueeze(-2) - per_point(self.centers)) / per_point(self.scales)
        blobs = (per_point(self.amps) * torch.exp(-0.5 * (d * d).sum(-1))).sum(-1)
        arg = (p.unsqueeze(-2) * per_point(self.waves)).sum(-1) + per_point(self.phases)
        waves = (per_point(self.wave_amps) * torch.sin(arg)).sum(-1)
        return blobs + waves - self.iso.reshape(shape)

    def along_rays(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """Values on the orthographic rays through (x, y) at depths z: x (W,), y (H,),
        z (S,) -> (n, H * W, S), rays in row-major pixel order."""
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)  # (R, 2)
        # Gaussians: a exp(-|dxy/s_xy|^2 / 2) * exp(-(dz/s_z)^2 / 2)
        dxy = (xy[None, :, None, :] - self.centers[:, None, :, :2]) / self.scales[:, None, :, :2]
        u_blob = self.amps[:, None, :] * torch.exp(-0.5 * (dxy * dxy).sum(-1))  # (n, R, K)
        dz = (z[None, :, None] - self.centers[:, None, :, 2]) / self.scales[:, None, :, 2]
        v_blob = torch.exp(-0.5 * dz * dz)  # (n, S, K)
        # waves: b sin(a + c) = b sin(a) cos(c) + b cos(a) sin(c), a in x, y and c in z
        a = (xy[None, :, None, :] * self.waves[:, None, :, :2]).sum(-1)  # (n, R, M)
        c = z[None, :, None] * self.waves[:, None, :, 2] + self.phases[:, None, :]  # (n, S, M)
        b = self.wave_amps[:, None, :]
        ones_r = torch.ones(self.n, xy.shape[0], 1, dtype=xy.dtype)
        u = torch.cat([u_blob, b * torch.sin(a), b * torch.cos(a), ones_r], -1)
        v = torch.cat([v_blob, torch.cos(c), torch.sin(c),
                       -self.iso[:, None, None].expand(-1, z.shape[0], 1)], -1)
        return u @ v.transpose(1, 2)


def random_fields(n: int, seed: int, blobs: int = 8, waves: int = 3) -> BlobField:
    """``n`` random fields, deterministic for ``seed``.

    2 to ``blobs`` Gaussian blobs per field, centred in [-0.5, 0.5]^3, radii 0.12 to 0.3
    (stretched by 0.7 to 1.4 per axis), amplitudes 0.6 to 1.2 (one in five carves, with
    -0.3 to -0.8); ``waves`` Fourier waves of wave number 4 to 10 and amplitude <= 0.07 roughen
    the surface but never cross the iso value 0.35 to 0.55 on their own, so that the empty
    space stays empty.
    """
    g = torch.Generator().manual_seed(seed)

    def uni(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    centers = uni(-0.6, 0.6, n, blobs, 3)
    scales = uni(0.15, 0.38, n, blobs, 1) * uni(0.7, 1.4, n, blobs, 3)
    carve = torch.rand(n, blobs, generator=g) < 0.2
    amps = torch.where(carve, -uni(0.3, 0.8, n, blobs), uni(0.6, 1.2, n, blobs))
    active = torch.arange(blobs)[None, :] < torch.randint(3, blobs + 1, (n, 1), generator=g)
    amps = torch.where(active, amps, torch.zeros(()))
    amps[:, 0] = amps[:, 0].abs()  # at least one blob adds
    direction = torch.randn(n, waves, 3, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    wave_vec = direction * uni(5.0, 12.0, n, waves, 1)
    phases = uni(0.0, 2 * math.pi, n, waves)
    wave_amps = uni(0.0, 0.1, n, waves)
    iso = uni(0.35, 0.55, n)
    return BlobField(centers, scales, amps, wave_vec, phases, wave_amps, iso)


def _first_crossing(values: Tensor) -> tuple[Tensor, Tensor]:
    """Rays (..., S) -> (hit, index of the first sample with f > 0, 0 for a miss)."""
    first = (values > 0).to(torch.uint8).argmax(-1)
    return values.gather(-1, first[..., None])[..., 0] > 0, first


def render_field(field: Field, height: int, width: int, *, n: int | None = None,
                 steps: int = 64, refine: int = 4, chunk: int = 1 << 22) -> Tensor:
    """Ray cast the isosurface f = 0 of ``field`` into geometry images (n, 5, H, W).

    ``field`` maps points (n, ..., 3) to values (n, ...), positive inside; ``n`` (default:
    ``field.n`` or 1) is the number of fields it holds. A field with ``along_rays`` (as
    ``BlobField``) is marched by one matrix product. Each ray is sampled at ``steps + 1``
    depths; the first crossing is refined by ``refine`` bisection steps and a secant step.
    Surfaces thinner than 2 / steps along a ray may be missed. ``chunk`` bounds the number
    of samples held at once.
    """
    n = n if n is not None else getattr(field, "n", 1)
    dtype = field.iso.dtype if isinstance(field, BlobField) else torch.get_default_dtype()
    x, y = pixel_centers(height, width, dtype)
    t = torch.linspace(0, 1, steps + 1, dtype=dtype)  # depth along the ray
    z = 1 - 2 * t
    rays = height * width
    if not hasattr(field, "along_rays"):
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)[None, :, None, :]
        per = max(1, chunk // (n * rays))
        values = torch.cat([
            field(torch.cat([xy.expand(n, rays, len(zc), 2),
                             zc[None, None, :, None].expand(n, rays, -1, 1)], -1))
            for zc in z.split(per)], -1)
        return _shade(field, values, x, y, t, refine).reshape(n, 5, height, width)
    per_image = max(1, chunk // (rays * (steps + 1)))
    out = []
    for start in range(0, n, per_image):
        sub = field[start:start + per_image]
        values = sub.along_rays(x, y, z)
        out.append(_shade(sub, values, x, y, t, refine).reshape(-1, 5, height, width))
    return torch.cat(out)


def _shade(field: Field, values: Tensor, x: Tensor, y: Tensor, t: Tensor,
           refine: int) -> Tensor:
    """Hits, normals and depths from sampled rays values (n, R, S) -> (n, 5, R)."""
    n, rays, _ = values.shape
    hit, first = _first_crossing(values)
    # only the hit rays are refined: gather them per image, padded to the most hits
    counts = hit.sum(1)
    width = max(int(counts.max()), 1)
    order = torch.argsort((~hit).to(torch.uint8), dim=1, stable=True)[:, :width]  # (n, P)
    valid = torch.arange(width)[None, :] < counts[:, None]
    k = first.gather(1, order)
    lo_k = (k - 1).clamp_min(0)
    f_lo = values.gather(2, (first - 1).clamp_min(0)[..., None])[..., 0].gather(1, order)
    f_hi = values.gather(2, first[..., None])[..., 0].gather(1, order)
    t_lo, t_hi = t[lo_k], t[k]
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    px, py = xx.reshape(-1)[order], yy.reshape(-1)[order]

    def at(tt: Tensor) -> Tensor:
        return torch.stack([px, py, 1 - 2 * tt], -1)

    starts_inside = k == 0
    for _ in range(refine):
        mid = 0.5 * (t_lo + t_hi)
        f_mid = field(at(mid))
        up = f_mid > 0
        t_hi, f_hi = torch.where(up, mid, t_hi), torch.where(up, f_mid, f_hi)
        t_lo, f_lo = torch.where(up, t_lo, mid), torch.where(up, f_lo, f_mid)
    # secant step between the bracket's ends (f_lo <= 0 < f_hi)
    frac = (f_lo / (f_lo - f_hi).clamp_max(-torch.finfo(values.dtype).tiny)).clamp(0, 1)
    t_hit = torch.where(starts_inside, t[0], t_lo + frac * (t_hi - t_lo))
    with torch.enable_grad():
        p = at(t_hit).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(field(p).sum(), p)
    normal = -grad / grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
    normal = torch.where(normal[..., 2:] < 0, -normal, normal)
    background = torch.tensor(BACKGROUND, dtype=values.dtype)
    shaded = torch.cat([torch.ones_like(t_hit)[..., None], normal, t_hit[..., None]], -1)
    shaded = torch.where(valid[..., None], shaded.detach(), background)  # (n, P, 5)
    img = background[None, :, None].repeat(n, 1, rays)
    # order is a permutation: the padding scatters background onto rays that missed
    return img.scatter(2, order[:, None, :].expand(-1, 5, -1), shaded.transpose(1, 2))


def make_geometry(n: int, seed: int, low: int = 32, scale: int = 4, steps: int = 64,
                  ) -> tuple[Tensor, Tensor]:
    """``n`` random surfaces rendered at low (n, 5, low, low) and high resolution
    (n, 5, scale * low, scale * low), float32, deterministic for ``seed``."""
    fields_ = random_fields(n, seed)
    lo = render_field(fields_, low, low, steps=steps)
    hi = render_field(fields_, scale * low, scale * low, steps=steps)
    return lo.float(), hi.float()


def random_crops(low: Tensor, high: Tensor, n: int, crop: int, generator: torch.Generator,
                 ) -> tuple[Tensor, Tensor]:
    """``n`` random pairs of aligned patches: crop x crop of ``low`` and the same region,
    (scale * crop)^2, of ``high``; images drawn with replacement."""
    scale = high.shape[-1] // low.shape[-1]
    h, w = low.shape[-2:]
    idx = torch.randint(0, len(low), (n,), generator=generator)
    r0 = torch.randint(0, h - crop + 1, (n,), generator=generator)
    c0 = torch.randint(0, w - crop + 1, (n,), generator=generator)

    def cut(x: Tensor, s: int) -> Tensor:
        rows = (s * r0[:, None] + torch.arange(s * crop))[:, None, :, None]
        cols = (s * c0[:, None] + torch.arange(s * crop))[:, None, None, :]
        chans = torch.arange(x.shape[1])[None, :, None, None]
        return x[idx[:, None, None, None], chans, rows, cols]

    return cut(low, 1), cut(high, scale)
