"""Comparing two networks through their feature visualizations (Sec. 4).

"IFV enables selecting and visualizing a feature using one network first, and then
inverting the resulting realization using a second network." For each objective x_A(i) of
network A (canonical e_i of A's features, optionally sampled ones), FV on A gives a
realization v_i; Grad-IFV on B gives B's objective x_B(i) = solve(y_B, G_B) with its
relative residual. The correspondence matrix W[i, j] = |x_B(i)_j| (A's objectives x B's
features) is matched one-to-one by the Hungarian method; a pair's confidence is its
weight share x_B(i)_j^2 (the part of the unit objective on the matched feature), and a row
whose residual on B is high is flagged: the realization is far from an optimum of any
objective of B, so its row says little. The baseline is the activation-correlation
matching of Li et al. 2015 ("Convergent learning"): Pearson correlations of the tapped
channels over images x positions, matched by the Hungarian method.

Planted copies test what can be recovered: ``planted_copy`` permutes the tapped layer's
channels and/or folds positive per-channel scales d into the weights that produce them and
divides them out in the consumers, so that B computes A's function and its tapped
activations are a_B[:, pi(c)] = d_pi(c) a_A[:, c]. With a positively homogeneous
aggregation (max pooling + mean, mean, center), y_B = M y_A with M = P D, so Dy_B = M Dy_A
and, at an exact optimum of f_{x_A} on A (x_A^T Z_k(y_A) Dy_A = 0), the one direction with
x^T Z_k(y_B) Dy_B = 0 is

    x_B ~ Z_k(y_B)^{-1} P D^{-1} Z_k(y_A) x_A                              (*)

(``expected_objective``). For a permutation (D = Id) Grad-IFV is exactly equivariant:
x_B = P x_A* at any input. For k = 0, x_B ~ P D^{-1} x_A: a canonical e_i maps to
e_pi(i) exactly. For k = 2, S_x normalizes by ||y||, which a per-channel rescaling changes:
x_B(e_i) ~ e_pi(i) / d_i + (2/3) y_i P (D y / ||D y||^2 - D^{-1} y / ||y||^2), which is not
canonical unless D = c Id; (*) still holds exactly. Away from an exact optimum, (*) holds
up to the residual: the two problems minimize the same quadratic form under different
norms. The rescaling is recovered from the sampled objectives: w = Z_k(y) x transforms as
w_B ~ P D^{-1} w_A (``fit_scales``).

Where the channels flow: DenseNet-BC's dense block output is the concatenation of the
block's input and its layers' growth channels; the weight-space symmetries permute within
each of these groups (the concatenation order is the architecture), producers are the
convolutions that make each group (no bias; pooling is channelwise), consumers are every
later layer's batch norm (a scale folds into its running mean and weight exactly) and
1x1 convolution, and the block's successor (a transition, or the final BN and classifier).
GoogLeNet's Inception output is the concatenation of four branches: permutations within a
branch act on the last ConvBN of the branch and on the inputs of the next Inception's 1x1
convolutions (pooling is channelwise). The stand-in's inception4c is tapped before its
Softplus, which is not positively homogeneous: no weight can divide a scale out after it,
so the rescaled copy folds d into the branches' last batch norms and divides it out by a
per-channel ``ChannelScale`` before the activation (the same function; the only
architectural change).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ifv.device import float32_precision, precision_key, to
from ifv.errors import UserError
from ifv.fv import FVSettings, realize
from ifv.images import Source, load_images
from ifv.inverse import solve, unit, z_k, z_k_inv
from ifv.jacobian import METHODS
from ifv.kink import Kinks, response_and_grams
from ifv.metrics import angular_distance, relative_residual
from ifv.models.registry import ModelSpec
from ifv.sampling import canonical, sample_targets
from ifv.setting import Bound, Robust, Setting, choice, count, describe_transforms, number
from ifv.setting import share as in_unit
from ifv.store import StageCache

PLANTED = ("permuted", "rescaled")
# the procedural patterns of the baseline: a seed no stand-in trains or tests on
# (``ifv.train`` uses 2 seed + 1 and 2 seed + 2)
PATTERN_SEED = 1000
STAGE_VERSION = 1
Log = Callable[[str], None]


# ------------------------------------------------------------------------- planted copies

class ChannelScale(nn.Module):
    """x * factor per channel: (B, C, ...) -> (B, C, ...)."""

    def __init__(self, factor: Tensor) -> None:
        super().__init__()
        self.register_buffer("factor", factor.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor.view(1, -1, *([1] * (x.dim() - 2)))


def _is_densenet(net: nn.Module) -> bool:
    from ifv.models.densenet import DenseNetBC

    return isinstance(net, DenseNetBC)


def _is_googlenet(net: nn.Module) -> bool:
    from ifv.models.googlenet import GoogLeNetFV

    return isinstance(net, GoogLeNetFV)


def _gn_branch_ends(block: nn.Module) -> list[nn.Module]:
    """The last ConvBN of each of an Inception block's four branches."""
    ends = []
    for key in ("branch1", "branch2", "branch3", "branch4"):
        branch = getattr(block, key)
        ends.append(branch[-1] if isinstance(branch, nn.Sequential) else branch)
    return ends


def planted_layers(net: nn.Module | ModelSpec) -> list[str]:
    """The layers of ``net`` (a network, or a zoo entry before it is loaded) whose channels
    ``planted_copy`` can permute."""
    if isinstance(net, ModelSpec):
        arch, names = net.arch, set(net.layers)
    else:
        arch = "densenet_bc" if _is_densenet(net) else "googlenet" if _is_googlenet(net) else ""
        names = {n for n, _ in net.named_children()}
    if arch == "densenet_bc":
        return [n for n in ("dense1", "dense2", "dense3") if n in names]
    if arch == "googlenet":
        from ifv.models.googlenet import ORDER

        return [n for n in ORDER if n.startswith("inception")]
    return []


def _check_layer(net: nn.Module | ModelSpec, layer: str) -> None:
    valid = planted_layers(net)
    if not valid:
        raise UserError(f"planted copies are made of DenseNet-BC and GoogLeNet zoo models, not "
                        f"{net.name if isinstance(net, ModelSpec) else type(net).__name__}")
    if layer not in valid:
        raise UserError(f"planted copies permute the channels of {', '.join(valid)}, not "
                        f"{layer!r}")


def channel_groups(net: nn.Module, layer: str) -> list[int]:
    """Sizes of the groups of ``layer``'s channels within which the weights can be
    permuted: a dense block's input and each of its layers' growth channels; an Inception
    block's four branches."""
    _check_layer(net, layer)
    block = getattr(net, layer)
    if _is_densenet(net):
        return [block[0].body[0].num_features] + [b.body[5].out_channels for b in block]
    return [end.conv.out_channels for end in _gn_branch_ends(block)]


def draw_planted(groups: Sequence[int], generator: torch.Generator, *, permute: bool = True,
                 scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """A planted relation, drawn on the CPU: ``perm`` (C,) maps A's channel c to B's channel
    perm[c] (a random permutation within each group, or the identity), ``scales`` (C,) the
    factor d_j of B's channel j, log-uniform in [1/scale, scale] (float64)."""
    parts, start = [], 0
    for size in groups:
        order = torch.randperm(size, generator=generator) if permute else torch.arange(size)
        parts.append(start + order)
        start += size
    perm = torch.cat(parts)
    width = math.log(scale)
    scales = torch.exp((2 * torch.rand(start, generator=generator, dtype=torch.float64) - 1)
                       * width)
    return perm, scales


@torch.no_grad()
def _rows(m: nn.Module, src: Tensor, d: Tensor) -> None:
    """Output channel j of a convolution / linear layer becomes d_j times the old src[j]."""
    shape = (-1,) + (1,) * (m.weight.dim() - 1)
    m.weight.copy_(m.weight[src] * d.view(shape).to(m.weight))
    if getattr(m, "bias", None) is not None:
        m.bias.copy_(m.bias[src] * d.to(m.bias))


@torch.no_grad()
def _bn_out(bn: nn.Module, src: Tensor, d: Tensor) -> None:
    """A batch norm whose outputs are permuted and scaled (its affine part times d)."""
    for name, scaled in (("weight", True), ("bias", True), ("running_mean", False),
                         ("running_var", False)):
        t = getattr(bn, name)
        t.copy_(t[src] * (d.to(t) if scaled else 1.0))


@torch.no_grad()
def _bn_in(bn: nn.Module, src: Tensor, d: Tensor) -> None:
    """A batch norm fed the first n channels, permuted and scaled by d: BN(d x) with mean
    d m and weight gamma / d equals BN(x) exactly (eval mode)."""
    n = bn.num_features
    s, dn = src[:n], d[:n]
    bn.running_mean.copy_(bn.running_mean[s] * dn.to(bn.running_mean))
    bn.running_var.copy_(bn.running_var[s])
    bn.weight.copy_(bn.weight[s] / dn.to(bn.weight))
    bn.bias.copy_(bn.bias[s])


@torch.no_grad()
def _cols(m: nn.Module, src: Tensor) -> None:
    """A convolution / linear layer fed the first n channels, permuted (unscaled)."""
    n = m.weight.shape[1]
    m.weight.copy_(m.weight[:, src[:n]])


def _densenet(net: nn.Module, layer: str, src: Tensor, d: Tensor) -> None:
    block = getattr(net, layer)
    b = int(layer[-1])
    c0 = block[0].body[0].num_features
    producer = net.conv0 if b == 1 else getattr(net, f"trans{b - 1}")[2]
    _rows(producer, src[:c0], d[:c0])
    start = c0
    for layer_i in block:
        g = layer_i.body[5].out_channels
        _bn_in(layer_i.body[0], src, d)
        _cols(layer_i.body[2], src)
        _rows(layer_i.body[5], src[start:start + g] - start, d[start:start + g])
        start += g
    if b < 3:
        succ = getattr(net, f"trans{b}")
        _bn_in(succ[0], src, d)
        _cols(succ[2], src)
    else:
        _bn_in(net.pool[0], src, d)
        _cols(net.classifier, src)


def _googlenet(net: nn.Module, layer: str, src: Tensor, d: Tensor) -> None:
    from ifv.models.googlenet import ORDER

    block = getattr(net, layer)
    start = 0
    pre = layer in net.after
    for end in _gn_branch_ends(block):
        g = end.conv.out_channels
        s = src[start:start + g] - start
        _rows(end.conv, s, torch.ones(g, dtype=torch.float64))
        _bn_out(end.bn, s, d[start:start + g])
        start += g
    later = [n for n in ORDER[ORDER.index(layer) + 1:] if n.startswith("inception")]
    if later:  # the next Inception's 1x1 convolutions (pools in between are channelwise)
        nxt = getattr(net, later[0])
        for first in (nxt.branch1, nxt.branch2[0], nxt.branch3[0], nxt.branch4[1]):
            _cols(first.conv, src)
    else:
        _cols(net.fc, src)
    if not bool((d == 1).all()):
        if not pre:
            raise UserError(f"{layer} is tapped after its activation, which no weight can "
                            "rescale; rescaled copies need a pre-activation tap "
                            "(googlenet_patterns' inception4c)")
        factor = (1.0 / d).to(block.branch1.conv.weight)
        net.after[layer] = nn.Sequential(ChannelScale(factor), net.after[layer])


def planted_copy(net: nn.Module, layer: str, perm: Tensor, scales: Tensor | None = None
                 ) -> nn.Module:
    """B: a copy of ``net`` that computes the same function, with ``layer``'s channels
    permuted (A's channel c is B's channel perm[c], within ``channel_groups``) and B's
    channel j scaled by scales[j] > 0: tap(B)[:, perm[c]] = scales[perm[c]] tap(A)[:, c].
    ``net`` is left as it is; the copy is in eval mode on its device and dtype."""
    groups = channel_groups(net, layer)
    n = sum(groups)
    perm = torch.as_tensor(perm, dtype=torch.long).cpu()
    d = (torch.ones(n, dtype=torch.float64) if scales is None
         else torch.as_tensor(scales, dtype=torch.float64).cpu())
    if perm.shape != (n,) or d.shape != (n,) or not bool((d > 0).all()):
        raise ValueError(f"perm and scales must be ({n},), scales positive")
    bounds = np.cumsum([0, *groups])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if sorted(perm[lo:hi].tolist()) != list(range(lo, hi)):
            raise ValueError(f"perm must permute within the channel groups {groups}")
    src = torch.argsort(perm)  # B's channel j is A's channel src[j]
    b = copy.deepcopy(net).eval()
    (_densenet if _is_densenet(net) else _googlenet)(b, layer, src, d)
    return b


# ------------------------------------------------------------------------- the algebra

def hungarian(weights: Tensor) -> Tensor:
    """A one-to-one matching of rows to columns maximizing the summed weight.

    weights: (R, n) -> (R,) long, the matched column of each row; -1 for rows left over
    (R > n). Non-finite weights count as the lowest."""
    w = weights.detach().double().cpu().numpy()
    w = np.where(np.isfinite(w), w, np.nanmin(np.where(np.isfinite(w), w, np.inf)) - 1.0
                 if np.isfinite(w).any() else 0.0)
    rows, cols = linear_sum_assignment(w, maximize=True)
    out = torch.full((w.shape[0],), -1, dtype=torch.long)
    out[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return out


def shares(x_b: Tensor, match: Tensor) -> Tensor:
    """Weight share x_B(i)_match(i)^2 / ||x_B(i)||^2 of each row's matched feature, the
    pair's confidence in [0, 1] (NaN where unmatched). x_b: (R, n), match: (R,) -> (R,)."""
    x = unit(x_b.double())
    j = match.clamp_min(0).to(x.device)
    s = x.gather(1, j[:, None]).squeeze(1) ** 2
    return torch.where(match.to(x.device) >= 0, s, torch.full_like(s, math.nan))


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of every channel of ``a`` with every channel of ``b`` over images
    and positions (Li et al. 2015): a: (N, C_a, H, W), b: (N, C_b, H', W') -> (C_a, C_b)
    float64. Maps of different size are average-pooled to the smaller one; a channel that
    does not vary correlates 0 with everything."""
    a, b = a.double(), b.double()
    if a.dim() == 4 and a.shape[-2:] != b.shape[-2:]:
        size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
        a = torch.nn.functional.adaptive_avg_pool2d(a, size)
        b = torch.nn.functional.adaptive_avg_pool2d(b, size)

    def standard(t: Tensor) -> Tensor:
        t = t.transpose(0, 1).reshape(t.shape[1], -1)  # (C, N H W)
        t = t - t.mean(1, keepdim=True)
        norm = t.norm(dim=1, keepdim=True)
        return torch.where(norm > 0, t / norm.clamp_min(1e-300), torch.zeros_like(t))

    return standard(a) @ standard(b.to(a.device)).T


def agreement(m1: Tensor, m2: Tensor, rows: Tensor | None = None) -> float:
    """Share of rows (all, or those where ``rows`` is True) that two matchings (R,) assign to
    the same column; NaN where there are none."""
    keep = (m1 >= 0) & (m2 >= 0)
    if rows is not None:
        keep &= rows.to(keep.device)
    return float((m1[keep] == m2[keep]).double().mean()) if bool(keep.any()) else math.nan


def expected_objective(x_a: Tensor, y_a: Tensor, y_b: Tensor, to_a: Tensor, d_a: Tensor,
                       k: float) -> Tensor:
    """x_B of (*) for a planted y_B = P D y_A: Z_k(y_B)^{-1} P D^{-1} Z_k(y_A) x_A, unit, with
    x_B^T y_B >= 0. x_a, y_a: (R, n); y_b: (R, n); to_a: (n,) long, the A feature of each
    B feature (P); d_a: (n,) the scale of each A feature."""
    u = (z_k(y_a, k) @ x_a.double().unsqueeze(-1)).squeeze(-1) / d_a.double().to(y_a.device)
    x = unit((z_k_inv(y_b, k) @ u[:, to_a.to(u.device)].unsqueeze(-1)).squeeze(-1))
    return x * torch.where((x * y_b.double()).sum(-1) < 0, -1.0, 1.0).unsqueeze(-1)


def fit_scales(w_a: Tensor, w_b: Tensor, match: Tensor) -> tuple[Tensor, float]:
    """The diagonal D with w_B ~ P D^{-1} w_A (P: ``match``) by homogeneous least squares.

    Unknowns d_i and a factor c_r per objective: d_i w_B[r, match_i] = c_r w_A[r, i] for
    every objective r and matched A feature i; the solution is the right singular vector of
    the smallest singular value. w_a: (R, n_a), w_b: (R, n_b), match: (n_a,) (-1: left out).
    Returns d (n_a,) float64 with geometric mean 1 over the matched features (NaN for the
    others) and the fit's relative residual sigma_min / sigma_max."""
    idx = (match >= 0).nonzero().squeeze(1)
    n, r = len(idx), w_a.shape[0]
    out = torch.full((w_a.shape[1],), math.nan, dtype=torch.float64)
    if n == 0 or r == 0:
        return out, math.nan
    wa = w_a.double().cpu()[:, idx]
    wb = w_b.double().cpu()[:, match[idx]]
    a = torch.zeros(r, n, n + r, dtype=torch.float64)
    a[:, torch.arange(n), torch.arange(n)] = wb
    a[torch.arange(r)[:, None], torch.arange(n)[None, :], n + torch.arange(r)[:, None]] = -wa
    _, s, vh = torch.linalg.svd(a.reshape(r * n, n + r), full_matrices=False)
    d = vh[-1, :n]
    d = d * torch.sign(d.sum())
    out[idx] = d / torch.exp(torch.log(d.abs().clamp_min(1e-300)).mean())
    return out, float(s[-1] / s[0])


def geometric_unit(d: Tensor) -> Tensor:
    """d / geometric mean(d) over its finite entries."""
    ok = torch.isfinite(d)
    return d / torch.exp(torch.log(d[ok].double()).mean())


# ------------------------------------------------------------------------- the comparison

@dataclass
class Comparison:
    """What ``compare`` found; every tensor on the CPU.

    Rows are A's objectives r: ``targets`` (R, n_a) unit, ``canonical`` (R,) bool,
    ``feature_a`` (R,) the position in A's features of a canonical row (-1 otherwise).
    ``images`` (R, C, H, W): the realizations P(v); ``x_a`` / ``residual_a``: Grad-IFV on
    A itself; ``x_b`` (R, n_b), ``residual_b``, ``next_residual_b``: Grad-IFV on B;
    ``near`` (R,): residual_b <= max_residual; ``determined`` (R,): residual_b <= max_ratio
    next_residual_b (x_B stands out). ``match`` (R,): the Hungarian matching of the
    canonical rows on |x_b| (a position in B's features; -1 for other rows), ``share`` its
    weight share, ``confident`` = near, determined and share >= min_share.
    ``correlation`` (n_a, n_b): the baseline's correlations, ``baseline`` (R,) its
    matching of the canonical rows.
    Planted: ``truth`` (R,) the true partner, ``expected`` (R, n_b) the x_B of (*),
    ``scale_true`` / ``scale_fit`` (n_a,) the scales of A's features (geometric mean 1).
    ``pair_rows`` / ``pair_images``: rows shown with B's own realization of their match.
    """

    features_a: list[int]
    features_b: list[int]
    targets: Tensor
    canonical: Tensor
    feature_a: Tensor
    images: Tensor
    y_a: Tensor
    x_a: Tensor
    residual_a: Tensor
    y_b: Tensor
    x_b: Tensor
    residual_b: Tensor
    next_residual_b: Tensor
    near: Tensor
    determined: Tensor
    match: Tensor
    share: Tensor
    confident: Tensor
    correlation: Tensor
    baseline: Tensor
    truth: Tensor | None = None
    expected: Tensor | None = None
    scale_true: Tensor | None = None
    scale_fit: Tensor | None = None
    scale_fit_residual: float = math.nan
    pair_rows: list[int] = field(default_factory=list)
    pair_images: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per objective of A (the schema of compare.parquet, docs/compare.md)."""
        n = len(self.targets)
        can = self.canonical
        fa = self.feature_a
        base = self.correlation[fa.clamp_min(0)] if len(fa) else self.correlation[:0]
        df = pd.DataFrame({
            "objective": np.arange(n),
            "canonical": can.numpy(),
            "feature_a": [self.features_a[i] if i >= 0 else -1 for i in fa.tolist()],
            "target": list(self.targets.numpy()),
            "x_a": list(self.x_a.numpy()),
            "residual_a": self.residual_a.numpy(),
            "x_b": list(self.x_b.numpy()),
            "residual_b": self.residual_b.numpy(),
            "next_residual_b": self.next_residual_b.numpy(),
            "near_optimum_b": self.near.numpy(),
            "determined_b": self.determined.numpy(),
            "match_b": [self.features_b[j] if j >= 0 else -1 for j in self.match.tolist()],
            "share": self.share.numpy(),
            "confident": self.confident.numpy(),
            "baseline_b": [self.features_b[j] if j >= 0 else -1
                           for j in self.baseline.tolist()],
            "baseline_corr": [float(base[r, j]) if j >= 0 else math.nan
                              for r, j in enumerate(self.baseline.tolist())],
            "correlation": [row if c else None for row, c in zip(
                list(base.numpy()), can.tolist(), strict=True)],
            "agree": ((self.match == self.baseline) & (self.match >= 0)).numpy(),
            "image_shape": [list(self.images.shape[1:])] * n,
            "realization": list(self.images.flatten(1).numpy().astype(np.float32)),
        })
        if self.truth is not None:
            df["truth_b"] = [self.features_b[j] if j >= 0 else -1 for j in self.truth.tolist()]
            df["correct"] = ((self.match == self.truth) & can).numpy()
            df["baseline_correct"] = ((self.baseline == self.truth) & can).numpy()
            df["angle_truth"] = _angle_to(self.x_b, self.truth).numpy()
        if self.expected is not None:
            df["expected_b"] = list(self.expected.numpy())
            df["angle_expected"] = angular_distance(self.x_b, self.expected).numpy()
        if self.scale_true is not None and self.scale_fit is not None:
            pos = fa.clamp_min(0)
            df["scale_true"] = np.where(can, self.scale_true[pos].numpy(), math.nan)
            df["scale_fit"] = np.where(can, self.scale_fit[pos].numpy(), math.nan)
        return df

    def summary(self) -> dict[str, Any]:
        """The headline numbers (summary.json)."""
        can = self.canonical
        matched = can & (self.match >= 0)
        out: dict[str, Any] = {
            "settings": self.settings,
            "objectives": len(self.targets), "canonical": int(can.sum()),
            "median_residual_a": _median(self.residual_a),
            "median_residual_b": _median(self.residual_b),
            "near_optimum_b": _mean(self.near[can]),
            "determined_b": _mean(self.determined[can]),
            "median_share": _median(self.share[matched]),
            "confident": _mean(self.confident[can]),
            "agreement": agreement(self.match, self.baseline, can),
            "agreement_confident": agreement(self.match, self.baseline, self.confident),
            "median_baseline_corr": _median(torch.tensor(
                [float(self.correlation[self.feature_a[r], self.baseline[r]])
                 for r in range(len(can)) if can[r] and self.baseline[r] >= 0])),
        }
        if self.truth is not None:
            out["recovered"] = _mean((self.match == self.truth)[can])
            out["baseline_recovered"] = _mean((self.baseline == self.truth)[can])
            out["median_angle_truth"] = _median(_angle_to(self.x_b, self.truth)[can])
            out["max_angle_truth"] = _max(_angle_to(self.x_b, self.truth)[can])
        if self.expected is not None:
            ang = angular_distance(self.x_b, self.expected)
            out["median_angle_expected"] = _median(ang)
            out["max_angle_expected"] = _max(ang)
        if self.scale_true is not None and self.scale_fit is not None:
            err = (self.scale_fit / self.scale_true - 1).abs()
            out["scale_error_median"] = _median(err)
            out["scale_error_max"] = _max(err)
            out["scale_fit_residual"] = self.scale_fit_residual
        return out


def _angle_to(x: Tensor, idx: Tensor) -> Tensor:
    """Angle of each row of x to the canonical e_idx (NaN where idx < 0)."""
    e = canonical(idx.clamp_min(0), x.shape[1])
    ang = angular_distance(x, e)
    return torch.where(idx >= 0, ang, torch.full_like(ang, math.nan))


def _median(t: Tensor) -> float:
    t = t[torch.isfinite(t)]
    return float(t.median()) if t.numel() else math.nan


def _max(t: Tensor) -> float:
    t = t[torch.isfinite(t)]
    return float(t.max()) if t.numel() else math.nan


def _mean(t: Tensor) -> float:
    return float(t.double().mean()) if t.numel() else math.nan


def _objective_rows(objectives: int | str, n_f: int) -> list[int]:
    """Positions of the canonical objectives among A's n_f features: all, or N evenly
    spaced."""
    if objectives == "all":
        return list(range(n_f))
    n = count("compare.objectives", objectives, 0)
    if n > n_f:
        raise UserError(f"compare.objectives={n} exceeds A's {n_f} features; valid: all or "
                        f"0..{n_f}")
    return sorted({int(round(float(i))) for i in np.linspace(0, n_f - 1, n)}) if n else []


def _activations(bound: Bound, images: Tensor, batch: int = 64) -> Tensor:
    """The tapped activations of the selected features for images (N, 3, H, W), on CPU."""
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            out.append(bound.response.activations(images[s:s + batch].to(bound.like())).cpu())
    return torch.cat(out)


def compare(a: Setting, b: Setting | None = None, *, planted: str | None = None,
            scale: float = 2.0, objectives: int | str = "all", n_random: int = 0,
            fv: FVSettings | None = None, images: Source | Sequence[Source] | None = None,
            n_images: int = 256, pairs: int = 16, seed: int = 0, max_residual: float = 0.1,
            min_share: float = 0.5, max_ratio: float = 0.5, method: str = "auto",
            max_bytes: int = 1 << 30, cache: str | Path | None = None, progress: bool = True,
            robust: Robust | None = None, kinks: Kinks | None = None,
            log: Log = print) -> Comparison:
    """Compare network A with network B through FV on A and Grad-IFV on B (module docs).

    ``a``: A's setting (``ifv.Setting.make``: model, layer, features, aggregation, k, P);
    ``b``: B's (same input size and P; default A's), or with ``planted`` ("permuted" or
    "rescaled") B is A's network with its tapped channels permuted within their groups
    (and, rescaled, scaled log-uniformly in [1/scale, scale]); B's features are then the
    images of A's. ``objectives``: the canonical e_i (all of A's features, or N evenly
    spaced); ``n_random``: sparse random objectives in addition (Supp. S2), which
    ``fit_scales`` uses. ``fv``: FV's steps (default ``FVSettings()``); ``images``: the
    baseline's images (files or tensors in [0, 1]; default ``n_images`` procedural
    patterns); ``pairs``: matched pairs shown with B's own realization (FV on B);
    ``max_residual``: a row's residual on B above it flags the realization as far from an
    optimum of B; ``max_ratio``: a row's residual on B above max_ratio times the runner-up's
    flags x_B as not determined (the realization fits other objectives of B about as well);
    ``min_share``: a confident pair's least weight share. ``cache``: a stage
    cache folder for FV (None: none). With A's ``transforms`` or ``prior`` (robust FV,
    docs/robust-ifv.md) FV on A runs under them and the robust solver inverts on A and on B
    with the options ``robust`` (default ``Robust()``; B's setting must name the same
    transforms and prior, a planted B gets A's). ``kinks``: the tangent condition at kinks
    on A and B (default ``Kinks()``; ``Kinks(samples=0)``: plain Opt. (3); docs/kinks.md).
    """
    if planted is not None:
        choice("compare.planted", planted, PLANTED)
        if b is not None:
            raise UserError("a planted B is made from A; do not give B's model as well")
    scale = number("compare.scale", scale, low=1.0)
    n_random = count("compare.n_random", n_random)
    n_images = count("compare.n_images", n_images, 2)
    pairs = count("compare.pairs", pairs)
    seed = count("seed", seed)
    max_residual = number("compare.max_residual", max_residual)
    min_share = in_unit("compare.min_share", min_share)
    max_ratio = number("compare.max_ratio", max_ratio)
    choice("jacobian.method", method, METHODS)
    if a.size is None:
        raise UserError("A given as an nn.Module needs size=(H, W) (ifv.Setting.make)")
    if b is not None and (b.transforms != a.transforms or b.prior != a.prior):
        raise UserError("B inverts A's realizations: give B A's transforms and prior, got "
                        f"{describe_transforms(b.transforms)!r} and {b.prior['name']!r} for "
                        f"{describe_transforms(a.transforms)!r} and {a.prior['name']!r}")
    if b is not None and (b.size != a.size or b.param != a.param):
        raise UserError(f"B must take A's inputs: size {a.size} and P {a.param}, got size "
                        f"{b.size} and P {b.param}")
    if a.spec is not None:  # known without A's network: checked before any work
        _objective_rows(objectives, len(a.features(a.spec.layers[a.layer])))
        if planted is not None:
            _check_layer(a.spec, a.layer)
    pictures = _baseline_images(images, n_images, a)  # files read and checked before work
    with float32_precision(a.tf32):
        return _compare(a, b, planted, scale, objectives, n_random, fv or FVSettings(), pictures,
                        pairs, seed, (max_residual, max_ratio, min_share), method,
                        max_bytes, cache, progress, robust or Robust(),
                        Kinks() if kinks is None else kinks, log)


def _compare(a: Setting, b: Setting | None, planted: str | None, scale: float,
             objectives: int | str, n_random: int, fv: FVSettings,
             pictures: tuple[Tensor, str], pairs: int, seed: int,
             limits: tuple[float, float, float], method: str, max_bytes: int,
             cache: str | Path | None, progress: bool, rb: Robust, kinks: Kinks,
             log: Log) -> Comparison:
    bound_a = a.bind(progress=progress, log=log)
    n_a = bound_a.n_f
    rows = _objective_rows(objectives, n_a)
    if not rows and n_random == 0:
        raise UserError("nothing to compare: compare.objectives=0 and compare.n_random=0")
    perm = scales = None
    if planted is not None:
        gen = torch.Generator().manual_seed(seed)
        perm, scales = draw_planted(channel_groups(bound_a.network, a.layer), gen,
                                    scale=scale if planted == "rescaled" else 1.0)
        net_b = planted_copy(bound_a.network, a.layer, perm, scales)
        feats_b = sorted(int(perm[c]) for c in bound_a.features)
        b = Setting.make(net_b, a.layer, feats_b, a.aggregation, a.k, a.param, size=a.size,
                         tf32=a.tf32, transforms=a.transforms, prior=a.prior)
    assert b is not None
    bound_b = b.bind(progress=progress, log=log)
    n_b = bound_b.n_f
    name_b = f"{a.model_name} ({planted})" if planted else _label(b)
    robust = bound_a.robust
    log(f"compare: A = {_label(a)}.{a.layer} ({n_a} features), B = {name_b}.{b.layer} "
        f"({n_b} features); {len(rows)} canonical + {n_random} sampled objectives, "
        f"{a.aggregation}, k={a.k:g}, P_{a.param['name']}, on {bound_a.device}"
        + (f"; robust FV: transforms {describe_transforms(a.transforms)}, prior "
           f"{a.prior['name']}" if robust else ""))

    x_rand, _ = sample_targets(n_random, 0, n_a, seed)
    targets = torch.cat([canonical(rows, n_a), x_rand])
    is_can = torch.zeros(len(targets), dtype=torch.bool)
    is_can[:len(rows)] = True
    feature_a = torch.full((len(targets),), -1, dtype=torch.long)
    feature_a[:len(rows)] = torch.tensor(rows, dtype=torch.long)

    v = _realize(bound_a, targets, fv, seed, cache, progress, log, "FV on A",
                 {"targets": [rows, n_random, seed]})
    y_a, x_a, res_a, _ = _invert(bound_a, v, method, max_bytes, progress, rb, kinks, fv, seed)
    y_b, x_b, res_b, next_b = _invert(bound_b, v, method, max_bytes, progress, rb, kinks, fv,
                                      seed)
    y_a, x_a, res_a, y_b, x_b, res_b, next_b = to((y_a, x_a, res_a, y_b, x_b, res_b, next_b),
                                                  "cpu")
    max_residual, max_ratio, min_share = limits
    near = res_b <= max_residual
    determined = res_b <= max_ratio * next_b

    match = torch.full((len(targets),), -1, dtype=torch.long)
    if rows:
        match[:len(rows)] = hungarian(x_b[:len(rows)].abs())
    share = shares(x_b, match)
    confident = near & determined & (share >= min_share) & is_can

    pics, pics_kind = pictures
    corr = correlation(_activations(bound_a, pics), _activations(bound_b, pics))
    baseline = torch.full((len(targets),), -1, dtype=torch.long)
    if rows:
        baseline[:len(rows)] = hungarian(corr[rows])

    comp = Comparison(
        features_a=bound_a.features, features_b=bound_b.features, targets=targets,
        canonical=is_can, feature_a=feature_a,
        images=bound_a.param.render(v).detach().cpu().float(), y_a=y_a, x_a=x_a,
        residual_a=res_a, y_b=y_b, x_b=x_b, residual_b=res_b, next_residual_b=next_b,
        near=near, determined=determined, match=match, share=share, confident=confident,
        correlation=corr, baseline=baseline)
    if perm is not None and scales is not None:
        pos_b = {f: j for j, f in enumerate(bound_b.features)}
        to_b = torch.tensor([pos_b[int(perm[f])] for f in bound_a.features])
        comp.truth = torch.where(feature_a >= 0, to_b[feature_a.clamp_min(0)],
                                 torch.full_like(feature_a, -1))
        d_a = scales[perm[torch.tensor(bound_a.features)]]
        comp.expected = expected_objective(x_a, y_a, y_b, torch.argsort(to_b), d_a, a.k)
        if planted == "rescaled":
            comp.scale_true = geometric_unit(d_a)
            rand = ~is_can
            a_match = torch.full((n_a,), -1, dtype=torch.long)
            a_match[feature_a[is_can]] = match[is_can]
            w_a = (z_k(y_a[rand], a.k) @ x_a[rand].unsqueeze(-1)).squeeze(-1)
            w_b = (z_k(y_b[rand], b.k) @ x_b[rand].unsqueeze(-1)).squeeze(-1)
            comp.scale_fit, comp.scale_fit_residual = fit_scales(w_a, w_b, a_match)
    comp.pair_rows = _pair_rows(comp, pairs)
    if comp.pair_rows:
        js = [int(match[r]) for r in comp.pair_rows]
        v_b = _realize(bound_b, canonical(js, n_b), fv, seed, cache if planted is None else None,
                       progress, log, "FV on B (pairs)", {"targets": js})
        comp.pair_images = bound_b.param.render(v_b).detach().cpu().float()
    comp.settings = {
        "a": _describe(a, bound_a),
        "b": {**_describe(b, bound_b), **({"model": _label(a)} if planted else {})},
        "planted": planted, "scale": scale if planted == "rescaled" else None,
        "aggregation": a.aggregation, "k": a.k, "param": a.param,
        "objectives": objectives, "n_random": n_random, "fv": asdict(fv), "seed": seed,
        "transforms": describe_transforms(a.transforms), "prior": a.prior,
        "inversion": rb.options(bound_a.transform is not None, fv) if robust else None,
        "kinks": asdict(kinks),
        "baseline_images": pics_kind,
        "n_baseline_images": len(pics), "max_residual": max_residual, "max_ratio": max_ratio,
        "min_share": min_share,
        "device": str(bound_a.device)}
    return comp


def _label(s: Setting) -> str:
    """A model's name with its recipe overrides and weights, e.g. densenet_patterns[seed=1]."""
    if s.spec is None:
        return s.model_name
    from ifv.models import get_spec

    default = asdict(get_spec(s.spec.name).recipe)
    diff = [f"{k}={v}" for k, v in asdict(s.spec.recipe).items() if default.get(k) != v]
    if s.weights:
        diff.append(f"weights={s.weights}")
    return s.spec.name + (f"[{','.join(diff)}]" if diff else "")


def _describe(s: Setting, bound: Bound) -> dict[str, Any]:
    return {"model": _label(s), "layer": s.layer, "n_f": bound.n_f,
            "features": bound.features}


def _baseline_images(images: Source | Sequence[Source] | None, n: int, a: Setting
                     ) -> tuple[Tensor, str]:
    """The baseline's images (N, 3, H, W) and where they come from: ``n`` procedural
    patterns, or the files and tensors of ``images`` (``compare.images``), read and checked
    (shape, range, at least 2)."""
    if images is None:
        from ifv.data.patterns import make_patterns

        assert a.size is not None
        return make_patterns(n, seed=PATTERN_SEED, size=a.size[0])[0], "patterns"
    try:
        pics, _ = load_images(images, 3, a.size)
    except UserError as exc:
        raise UserError(f"compare.images: {exc}") from None
    if len(pics) < 2:
        raise UserError(f"compare.images holds {len(pics)} image; the baseline needs at "
                        "least 2")
    return pics.float(), "given"


def _pair_rows(comp: Comparison, pairs: int) -> list[int]:
    """Up to ``pairs`` matched canonical rows, evenly spread from the highest share to the
    lowest (so the figure shows good and poor matches alike)."""
    rows = [r for r in range(len(comp.match)) if comp.canonical[r] and comp.match[r] >= 0]
    rows.sort(key=lambda r: -float(comp.share[r]))
    if len(rows) <= pairs:
        return rows
    return [rows[int(round(float(i)))] for i in np.linspace(0, len(rows) - 1, pairs)]


def _invert(bound: Bound, v: Tensor, method: str, max_bytes: int, progress: bool,
            rb: Robust, kinks: Kinks, fv: FVSettings, seed: int
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y, x*, its residual and the runner-up's for realizations v on ``bound``: plain
    Grad-IFV (Opt. (3) with the tangent condition of ``kinks``, relative residuals), or
    where ``bound`` is robust FV the robust solver (``ifv.api`` with ``rb`` and FV's ``fv``
    and ``seed``; relative stationarity)."""
    from ifv.api import _invert_robust, _next_residual
    from ifv.inverse import full_space

    y, _, g, _ = response_and_grams(bound.response, v, kinks, method=method,
                                    max_bytes=max_bytes, progress=progress)
    basis = full_space(bound.n_f, y.device)
    if bound.robust:
        x, res, nxt = _invert_robust(bound, v, basis, rb, fv, seed)
        return y, x, res, nxt
    x, _ = solve(y, g, bound.setting.k)
    return (y, x, relative_residual(x, y, g, bound.setting.k),
            _next_residual(y, g, bound.setting.k, basis))


def _realize(bound: Bound, targets: Tensor, fv: FVSettings, seed: int,
             cache: str | Path | None, progress: bool, log: Log, desc: str,
             key: dict[str, Any]) -> Tensor:
    """FV's v for ``targets`` on ``bound`` (a stage of the cache where there is one and the
    model is a zoo model)."""
    s = bound.setting

    def compute(parts: Any = None) -> dict[str, Any]:
        r = realize(bound.response, targets.to(bound.like()), s.k, fv, init=bound.init,
                    seed=seed, progress=progress, desc=desc, store=parts,
                    transform=bound.transform, prior=bound.prior)
        return {"v": r.v}

    if cache is None or s.spec is None:
        return compute()["v"]
    full = {"model": s.model_key(), "layer": s.layer, "features": bound.features,
            "aggregation": s.aggregation, "k": s.k, "param": s.param,
            **bound.fv_key(fv),
            "seed": seed, "device": bound.device.type,
            "precision": precision_key(bound.device, s.tf32), **key}
    out = StageCache(cache, log).get_or_compute("compare_fv", STAGE_VERSION, full, compute)
    return to(out, bound.device)["v"]


# ------------------------------------------------------------------------- the outputs

FILES = ("compare.parquet", "summary.json", "correspondence.png", "pairs.png")


def _pair_titles(comp: Comparison) -> list[str]:
    titles = []
    for r in comp.pair_rows:
        j = int(comp.match[r])
        flag = "" if bool(comp.near[r] & comp.determined[r]) else " far"
        base = "=" if int(comp.baseline[r]) == j else "≠"
        titles += [f"A {comp.features_a[int(comp.feature_a[r])]}",
                   f"B {comp.features_b[j]} {float(comp.share[r]):.2f}{flag} {base}"]
    return titles


def write(comp: Comparison, out: str | Path) -> list[Path]:
    """compare.parquet (``Comparison.table``), summary.json, correspondence.png (the heat
    map beside the baseline's, ordered by the matching) and pairs.png (matched pairs' FV on
    A and on B, side by side) in the folder ``out``. Everything is made before the first
    file is written, and each file is written atomically."""
    from ifv import plots
    from ifv.store import atomic_write, write_json

    out = Path(out)
    df = comp.table()
    summary = comp.summary()
    can = comp.canonical
    n_can = int(can.sum())
    s = comp.settings
    head = (f"A = {s['a']['model']}.{s['a']['layer']}, B = {s['b']['model']}"
            f"{' (' + s['planted'] + ')' if s['planted'] else ''}.{s['b']['layer']}, "
            f"k={s['k']:g}: confident {summary['confident']:.0%}, agreement with the "
            f"baseline {summary['agreement']:.0%}"
            + (f", recovered {summary['recovered']:.0%}" if "recovered" in summary else "")
            + "; red: B's residual > max_residual or > max_ratio x the runner-up's")
    figs = []
    if n_can:
        idx = comp.feature_a[:n_can]
        w = comp.x_b[:n_can].abs().numpy()
        size = plots.correspondence_size(n_can, w.shape[1])
        fig = plots.new_figure(size)
        plots.correspondence_panels(
            fig, w, comp.correlation[idx].numpy(), comp.match[:n_can].numpy(),
            comp.baseline[:n_can].numpy(), comp.share[:n_can].numpy(),
            (~(comp.near & comp.determined)[:n_can]).numpy(),
            [comp.features_a[i] for i in idx.tolist()], comp.features_b, title=head)
        figs.append(("correspondence.png", fig))
    if comp.pair_images is not None and comp.pair_rows:
        a_imgs = comp.images[comp.pair_rows]
        both = torch.stack([a_imgs, comp.pair_images], 1).flatten(0, 1)
        titles = _pair_titles(comp)
        fig = plots.new_figure(plots.realizations_size(both, titled=True))
        plots.realizations_grid(fig, both, titles=titles, ncols=8)
        fig.suptitle("matched pairs: FV of e_i on A | FV of its match e_j on B (share; far: "
                     "B's residual high; =/≠: the baseline agrees / not)", fontsize=8)
        figs.append(("pairs.png", fig))
    written = [atomic_write(out / "compare.parquet", lambda p: df.to_parquet(p, index=False)),
               write_json(out / "summary.json", summary)]
    written += [plots.save(fig, out / name) for name, fig in figs]
    return written


def report(summary: dict[str, Any]) -> str:
    """The headline numbers of ``Comparison.summary`` as a few lines."""
    def pct(key: str) -> str:
        v = summary.get(key, math.nan)
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1%}"

    lines = [f"{summary['canonical']} canonical objectives of A: confident matches "
             f"{pct('confident')} (B's residual <= max_residual for {pct('near_optimum_b')}, "
             f"<= max_ratio x the runner-up's for {pct('determined_b')}), median share "
             f"{summary['median_share']:.3f}",
             f"agreement with the correlation baseline: {pct('agreement')} of the rows, "
             f"{pct('agreement_confident')} of the confident ones",
             f"median residual on A {summary['median_residual_a']:.2e}, on B "
             f"{summary['median_residual_b']:.2e}"]
    if "recovered" in summary:
        lines.append(f"planted: recovered {pct('recovered')} (baseline "
                     f"{pct('baseline_recovered')}); x_B vs the exact (*): median "
                     f"{summary['median_angle_expected']:.2g} deg, max "
                     f"{summary['max_angle_expected']:.2g} deg; x_B vs e_pi(i): median "
                     f"{summary['median_angle_truth']:.2g} deg")
    if "scale_error_median" in summary:
        lines.append(f"rescaling: fitted scales off by {summary['scale_error_median']:.2%} "
                     f"(median), {summary['scale_error_max']:.2%} (max)")
    return "\n".join(lines)
