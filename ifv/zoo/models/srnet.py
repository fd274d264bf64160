"""SRNet (Sec. 3.1): the super-resolution network of Weiss et al. (2019) for geometry images.

Weiss et al. modified the SRNet of FRVSR (Sajjadi et al. 2018, itself EnhanceNet's
generator) to upscale isosurface renderings by 4x. Without its frame-recurrent input, the
network is (Weiss et al.'s published ``EnhanceNet`` model, upsampling mode ``bilinear``):

- ``conv0``: 3x3 convolution of the 5 input channels (mask, normal xyz, depth) to 64, ReLU;
- ``block1`` ... ``block10``: residual blocks x + conv3x3(ReLU(conv3x3(x))) of 64 channels,
  without batch normalization, ending with the addition (a pre-activation output);
- ``up1``, ``up2``: 2x bilinear upsampling, then 3x3 convolution and ReLU ("upsampled,
  folded", Sec. 3.1);
- ``fold``: one more 3x3 convolution and ReLU at the output resolution;
- ``out``: a 3x3 convolution to the 5 output channels, the residual that is added to the
  bilinearly upscaled (4x) input.

The output is (B, 5, 4H, 4W) in the input's channel order; the mask's sign is the hit test
and the normals are not renormalized (Weiss et al. do both after the network).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IN_CHANNELS = 5  # mask, normal xyz, depth
SCALE = 4


@dataclass(frozen=True)
class SRRecipe:
    """How a zoo SRNet is trained on procedural geometry images (``ifv.zoo.data.geometry``).

    The paper does not say how SRNet was trained: this is Adam with a one-cycle schedule on
    random ``crop`` x ``crop`` low-resolution patches (``crop`` = 0: whole images) of
    ``n_train`` surfaces rendered at ``low`` x ``low`` and 4x that, for ``steps`` steps;
    the loss is L1 of the mask plus ``surface_weight`` x L1 of normal and depth on the
    pixels the ground truth hits. The defaults fit ~10 minutes on one CPU core; a peak
    learning rate of 1e-3 was measured to kill every ReLU of the upsampling path (the
    network then stays at bilinear upscaling), 3e-4 does not.
    """

    task: str = "superres"
    dataset: str = "geometry"
    n_train: int = 512
    n_test: int = 64
    low: int = 32
    crop: int = 16
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    surface_weight: float = 1.0
    seed: int = 0


class ResidualBlock(nn.Module):
    """x + conv3x3(ReLU(conv3x3(x))), no batch normalization (FRVSR's SRNet)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU())


class SRNet(nn.Module):
    """4x super-resolution of geometry images: (B, 5, H, W) -> (B, 5, 4H, 4W).

    ``channels``: width of ``conv0`` and the residual blocks; ``blocks``: their number;
    ``up_channels``: width of ``up1``, ``up2`` and ``fold`` (64 in Weiss et al.).
    """

    def __init__(self, channels: int = 64, blocks: int = 10, up_channels: int = 64,
                 in_channels: int = IN_CHANNELS, out_channels: int = IN_CHANNELS) -> None:
        super().__init__()
        self.n_blocks = blocks
        self.conv0 = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU())
        for i in range(1, blocks + 1):
            self.add_module(f"block{i}", ResidualBlock(channels))
        self.up1 = _up(channels, up_channels)
        self.up2 = _up(up_channels, up_channels)
        self.fold = nn.Sequential(nn.Conv2d(up_channels, up_channels, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(up_channels, out_channels, 3, padding=1)
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
                if name.endswith("conv2"):
                    # keep the residual stream's variance from growing with depth
                    m.weight.data.mul_(1 / math.sqrt(blocks))

    def forward(self, x: Tensor) -> Tensor:
        f = self.conv0(x)
        for i in range(1, self.n_blocks + 1):
            f = getattr(self, f"block{i}")(f)
        residual = self.out(self.fold(self.up2(self.up1(f))))
        return upscale(x[:, :residual.shape[1]]) + residual


def upscale(x: Tensor, scale: int = SCALE) -> Tensor:
    """The bilinear upscaling the network's residual is added to (and the baseline)."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def srnet_layers(channels: int = 64, blocks: int = 10, up_channels: int = 64,
                 out_channels: int = IN_CHANNELS) -> dict[str, int]:
    """The tappable layers of an SRNet and their channel counts."""
    return {"conv0": channels, **{f"block{i}": channels for i in range(1, blocks + 1)},
            "up1": up_channels, "up2": up_channels, "fold": up_channels, "out": out_channels}


def geometry_loss(pred: Tensor, truth: Tensor, surface_weight: float = 1.0) -> Tensor:
    """L1 of the mask on all pixels plus ``surface_weight`` x L1 of normal and depth on the
    pixels where ``truth`` hits the surface (what is behind a miss is not asked for)."""
    surface = (truth[:, :1] > 0).to(pred.dtype)
    mask = (pred[:, 0] - truth[:, 0]).abs().mean()
    geo = ((pred[:, 1:] - truth[:, 1:]).abs() * surface).sum()
    return mask + surface_weight * geo / (4 * surface.sum()).clamp_min(1)


@torch.no_grad()
def upscaling_quality(pred: Tensor, truth: Tensor) -> dict[str, float]:
    """How well ``pred`` (B, 5, H, W) reproduces the geometry images ``truth``.

    ``normal_error_deg``: mean angle between the normalized predicted and true normals on
    the pixels that hit the surface in ``truth``; ``mask_accuracy``: share of pixels whose
    mask sign agrees; ``depth_error``: mean absolute depth error on the hit pixels.
    """
    surface = truth[:, 0] > 0
    n_pred = F.normalize(pred[:, 1:4].double(), dim=1)
    cos = (n_pred * truth[:, 1:4].double()).sum(1).clamp(-1, 1)
    angle = torch.rad2deg(torch.arccos(cos))[surface]
    depth = (pred[:, 4] - truth[:, 4]).abs()[surface]
    return {
        "normal_error_deg": float(angle.mean()),
        "mask_accuracy": float(((pred[:, 0] > 0) == surface).double().mean()),
        "depth_error": float(depth.double().mean()),
    }


@torch.no_grad()
def evaluate_upscaling(model: nn.Module, low: Tensor, high: Tensor, batch: int = 16,
                       ) -> dict[str, float]:
    """SRNet's and bilinear upscaling's quality on held-out images (``srnet_``/``bilinear_``)."""
    model.eval()
    pred = torch.cat([model(low[i:i + batch]) for i in range(0, len(low), batch)])
    out = {f"srnet_{k}": v for k, v in upscaling_quality(pred, high).items()}
    out.update({f"bilinear_{k}": v for k, v in upscaling_quality(upscale(low), high).items()})
    return out


def upscaling_summary(rec: dict) -> str:
    """The lines ``ifv train`` prints for a trained SRNet (its record's test metrics)."""
    lines = [f"  held-out geometry images ({rec['n_test']}, {rec['recipe']['low']}^2 -> "
             f"{SCALE * rec['recipe']['low']}^2):   SRNet   bilinear"]
    for key, label, fmt in (("normal_error_deg", "normal error (deg, on surface)", ".2f"),
                            ("mask_accuracy", "mask accuracy", ".4f"),
                            ("depth_error", "depth error (on surface)", ".4f")):
        lines.append(f"    {label:32s} {rec['srnet_' + key]:{fmt}}   "
                     f"{rec['bilinear_' + key]:{fmt}}")
    verdict = "beats" if rec["beats_bilinear"] else "does NOT beat"
    lines.append(f"  SRNet {verdict} bilinear upscaling (normal error and mask accuracy)")
    return "\n".join(lines)
