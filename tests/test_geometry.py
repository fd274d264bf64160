"""Procedural geometry images: the ray caster against a sphere, determinism, resolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ifv.zoo.data.geometry import (
    BACKGROUND,
    make_geometry,
    pixel_centers,
    random_crops,
    random_fields,
    render_field,
)

CENTER = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
RADIUS = 0.5


def sphere(p: torch.Tensor) -> torch.Tensor:
    return RADIUS - (p - CENTER.to(p.dtype)).norm(dim=-1)


def sphere_truth(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed form: hit mask, depth and normal of the orthographic rays (camera at z = 1)."""
    x, y = pixel_centers(size, size, torch.float64)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    rho2 = (xx - CENTER[0]) ** 2 + (yy - CENTER[1]) ** 2
    hit = rho2 < RADIUS**2
    z = CENTER[2] + torch.sqrt((RADIUS**2 - rho2).clamp_min(0))  # the near intersection
    normal = torch.stack([xx - CENTER[0], yy - CENTER[1], z - CENTER[2]]) / RADIUS
    return hit, (1 - z) / 2, normal


def test_sphere_matches_closed_form() -> None:
    size = 48
    img = render_field(sphere, size, size, steps=64)
    assert img.shape == (1, 5, size, size)
    hit, depth, normal = sphere_truth(size)
    got = img[0].double()
    assert torch.equal(got[0] > 0, hit)
    assert (got[4] - depth)[hit].abs().max() < 1e-3
    assert (got[1:4] - normal)[:, hit].abs().max() < 1e-3
    # the rays that miss hold the background
    assert torch.equal(got[:, ~hit], torch.tensor(BACKGROUND, dtype=torch.float64)[:, None]
                       .expand(-1, int((~hit).sum())))


def test_sphere_partly_in_front_of_the_near_plane_is_clipped() -> None:
    """A surface that starts in front of the camera is hit at depth 0 (not missed)."""
    def big(p: torch.Tensor) -> torch.Tensor:
        return 0.5 - (p - torch.tensor([0.0, 0.0, 0.8], dtype=p.dtype)).norm(dim=-1)

    img = render_field(big, 16, 16)[0]
    centre = img[:, 8, 8]
    assert centre[0] == 1 and centre[4] == 0


def test_fast_marching_equals_pointwise_field() -> None:
    field = random_fields(3, seed=5).to(torch.float64)
    x, y = pixel_centers(6, 7, torch.float64)
    z = torch.linspace(1, -1, 9, dtype=torch.float64)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    p = torch.stack([xx.reshape(-1, 1).expand(-1, 9), yy.reshape(-1, 1).expand(-1, 9),
                     z.expand(42, -1)], -1)
    direct = field(p.expand(3, -1, -1, -1))
    torch.testing.assert_close(field.along_rays(x, y, z), direct)
    # the generic path (a plain callable) renders the same images as the fast one
    generic = render_field(lambda q: field(q), 12, 12, n=3)
    torch.testing.assert_close(render_field(field, 12, 12), generic, atol=1e-5, rtol=1e-4)


def test_geometry_images_are_valid_and_deterministic() -> None:
    lo, hi = make_geometry(6, seed=3, low=16)
    assert lo.shape == (6, 5, 16, 16) and hi.shape == (6, 5, 64, 64)
    assert lo.dtype == hi.dtype == torch.float32
    for img in (lo, hi):
        assert set(img[:, 0].unique().tolist()) <= {-1.0, 1.0}
        torch.testing.assert_close(img[:, 1:4].norm(dim=1), torch.ones_like(img[:, 0]))
        assert img[:, 3].min() >= 0
        assert 0 <= img[:, 4].min() and img[:, 4].max() <= 1
    share = (hi[:, 0] > 0).float().mean()
    assert 0.1 < share < 0.8  # neither empty nor full
    lo2, hi2 = make_geometry(6, seed=3, low=16)
    assert torch.equal(lo, lo2) and torch.equal(hi, hi2)
    lo3, _ = make_geometry(6, seed=4, low=16)
    assert not torch.equal(lo, lo3)


def test_low_and_high_resolution_show_the_same_surface() -> None:
    lo, hi = make_geometry(8, seed=1, low=16)
    coverage = F.avg_pool2d((hi[:, :1] > 0).float(), 4)[:, 0]  # hit share per low pixel
    inside, outside = coverage == 1, coverage == 0
    # where all 16 sub-pixels agree, the low-resolution pixel agrees with them
    assert (lo[:, 0][inside] > 0).float().mean() > 0.99
    assert (lo[:, 0][outside] < 0).float().mean() > 0.99
    assert ((lo[:, 0] > 0).float() - (coverage > 0.5).float()).abs().mean() < 0.03
    # and on fully covered pixels the normals and depths are close to the sub-pixels' mean
    both = inside & (lo[:, 0] > 0)
    n_hi = F.avg_pool2d(hi[:, 1:4], 4)
    cos = F.cosine_similarity(lo[:, 1:4], n_hi, dim=1)[both]
    assert cos.median() > 0.99
    assert (lo[:, 4] - F.avg_pool2d(hi[:, 4:5], 4)[:, 0])[both].abs().median() < 0.01


def test_random_crops_are_aligned() -> None:
    lo, hi = make_geometry(3, seed=2, low=16)
    g = torch.Generator().manual_seed(0)
    a, b = random_crops(lo, hi, 5, 8, g)
    assert a.shape == (5, 5, 8, 8) and b.shape == (5, 5, 32, 32)
    for i in range(5):
        # find the crop's origin in some image and check that the high patch matches
        found = False
        for j in range(3):
            for r in range(9):
                for c in range(9):
                    if torch.equal(lo[j, :, r:r + 8, c:c + 8], a[i]):
                        found |= torch.equal(hi[j, :, 4 * r:4 * r + 32, 4 * c:4 * c + 32],
                                             b[i])
        assert found
