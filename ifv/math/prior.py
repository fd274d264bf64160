"""Image priors R that robust FV subtracts from the objective: maximize S_x - lambda R
(docs/robust-ifv.md, Sec. 4).

Each prior maps images (B, C, H, W) in [0, 1] to one value per sample (B,), as a mean over
pixels so that a weight means the same at every input size:

- ``l2``: mean (I - 1/2)^2, the squared distance from grey (Lucid's L2 on the input, squared
  and per pixel);
- ``tv``: mean sqrt(dx^2 + dy^2 + eps^2) over the forward differences (total variation,
  smoothed at 0 by eps so that L-BFGS sees a gradient everywhere);
- ``blur``: 1/2 mean (I - sg(blur(I)))^2 with a 3 x 3 box blur held constant (Lucid's
  ``blur_input_each_step``: its gradient pulls every pixel towards its blurred value).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ifv.errors import UserError
from ifv.validate import choice, number

PRIORS = ("none", "l2", "tv", "blur")
TV_EPS = 1e-3
# The weight lambda each prior gets unless one is given: a tenth to a twentieth of S_x at a
# realization of the DenseNet stand-in's dense3 (S_x ~ 2..8; R ~ 0.035 (l2), 0.24 (tv), 0.01
# (blur) there), so that its gradient is comparable to the objective's away from the optimum.
# TV's is the largest of 0.5, 1 and 2 at which FV (its weight ramped in, ``fv.prior_ramp``)
# kept all of 8 canonical targets of dense3 from collapsing to a flat image
# (docs/robust-ifv.md Sec. 9).
WEIGHTS = {"l2": 10.0, "tv": 1.0, "blur": 30.0}


def l2(images: Tensor) -> Tensor:
    """mean (I - 1/2)^2 per sample. images: (B, C, H, W) -> (B,)."""
    return (images - 0.5).pow(2).flatten(1).mean(1)


def tv(images: Tensor) -> Tensor:
    """Smoothed isotropic total variation, the mean over pixels. (B, C, H, W) -> (B,)."""
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2) + TV_EPS**2).sqrt().flatten(1).mean(1)


def blur(images: Tensor) -> Tensor:
    """1/2 mean (I - sg(box3(I)))^2, the blur held constant. (B, C, H, W) -> (B,)."""
    target = F.avg_pool2d(images.detach(), 3, stride=1, padding=1, count_include_pad=False)
    return 0.5 * (images - target).pow(2).flatten(1).mean(1)


PENALTIES: dict[str, Callable[[Tensor], Tensor]] = {"l2": l2, "tv": tv, "blur": blur}


class Prior:
    """lambda R(P(v)): parameters v (B, *shape) -> (B,), for a prior ``name`` (not none) on
    the images of ``param``; ``weight`` lambda >= 0 (1 gives R o P itself)."""

    def __init__(self, name: str, param: Callable[[Tensor], Tensor], weight: float = 1.0):
        if name not in PENALTIES:
            raise ValueError(f"unknown prior {name!r}; valid: {', '.join(PENALTIES)}")
        self.name, self.param, self.weight = name, param, weight

    def __call__(self, v: Tensor) -> Tensor:
        return self.weight * PENALTIES[self.name](self.param(v))


def parse(value: Any) -> dict[str, Any]:
    """A user's ``prior`` value, validated: {"name": one of ``PRIORS``, "weight": lambda >= 0
    (default ``WEIGHTS``)}."""
    options = dict(value) if isinstance(value, Mapping) else {"name": value}
    name = choice("prior", options.pop("name", None), PRIORS)
    weight = options.pop("weight", None)
    if options:
        raise UserError(f"unknown prior option(s) {sorted(options)}; valid: name, weight")
    if name == "none":
        if weight not in (None, 0, 0.0):
            raise UserError("prior.weight needs a prior: prior=l2, tv or blur")
        return {"name": name, "weight": 0.0}
    return {"name": name,
            "weight": WEIGHTS[name] if weight is None else number("prior.weight", weight)}
