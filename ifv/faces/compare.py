"""``ifv compare``: network A against network B through their feature visualizations
(Sec. 4).

"IFV enables selecting and visualizing a feature using one network first, and then
inverting the resulting realization using a second network." For each objective x_A(i) of
A (canonical e_i of A's features, optionally sampled ones), FV on A gives a realization
v_i; Grad-IFV on B gives B's objective x_B(i) with its relative residual (both through the
stage chain, ``ifv.run.stages``). The correspondence matrix W[i, j] = |x_B(i)_j| is matched
one-to-one by the Hungarian method (``ifv.math.matching``); a pair's confidence is its
weight share x_B(i)_j^2, and a row whose residual on B is high is flagged: the realization
is far from an optimum of any objective of B. The baseline is the activation-correlation
matching of Li et al. 2015. B is a model of its own, or a planted copy of A
(``ifv.zoo.surgery``: A's channels permuted and rescaled, the same function), against
which what Grad-IFV recovers is known exactly (docs/compare.md). The outcome and its files:
``ifv.faces.correspondence``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ifv.device import float32_precision, precision_key, to
from ifv.errors import UserError
from ifv.faces.correspondence import Comparison
from ifv.math.fv import FVSettings
from ifv.math.inverse import full_space, z_k
from ifv.math.jacobian import METHODS
from ifv.math.kink import Kinks
from ifv.math.matching import (
    correlation,
    expected_objective,
    fit_scales,
    geometric_unit,
    hungarian,
    shares,
)
from ifv.math.robust import Robust
from ifv.math.sampling import canonical, sample_targets
from ifv.math.transform import describe
from ifv.run.images import Source, load_images
from ifv.run.setting import Bound, Setting
from ifv.run.stages import Chain
from ifv.run.store import StageCache
from ifv.validate import choice, count, number
from ifv.validate import share as in_unit
from ifv.zoo.surgery import check_plantable, draw_planted, planted_copy

PLANTED = ("permuted", "rescaled")
# the procedural patterns of the baseline: a seed no stand-in trains or tests on
# (``ifv.zoo.train`` uses 2 seed + 1 and 2 seed + 2)
PATTERN_SEED = 1000
Log = Callable[[str], None]


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
                        f"{describe(b.transforms)!r} and {b.prior['name']!r} for "
                        f"{describe(a.transforms)!r} and {a.prior['name']!r}")
    if b is not None and (b.size != a.size or b.param != a.param):
        raise UserError(f"B must take A's inputs: size {a.size} and P {a.param}, got size "
                        f"{b.size} and P {b.param}")
    if a.spec is not None:  # known without A's network: checked before any work
        _objective_rows(objectives, len(a.features(a.spec.layers[a.layer])))
        if planted is not None:  # your network: its class, built once at random
            arch = a.spec.architecture if a.spec.source is None else a.spec.build()
            check_plantable(arch, a.layer, a.spec.name)
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
        check_plantable(bound_a.network, a.layer, a.model_name)
        perm, scales = draw_planted(bound_a.network.channel_groups(a.layer), gen,
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
        + (f"; robust FV: transforms {describe(a.transforms)}, prior "
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
        "transforms": describe(a.transforms), "prior": a.prior,
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
    from ifv.zoo import get_spec

    diff = []
    if s.spec.source is None:
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
    """The baseline's images (N, C, H, W) with A's input channels C and where they come
    from: ``n`` procedural patterns (in grey for a one-channel network), or the files and
    tensors of ``images`` (``compare.images``), read and checked (shape, range, at least
    2)."""
    c = a.in_channels
    if images is None:
        from ifv.zoo.data.patterns import make_patterns

        if c not in (1, 3):
            raise UserError(f"the correlation baseline's patterns are images; A takes "
                            f"{c}-channel inputs: give compare.images")
        assert a.size is not None
        pics = make_patterns(n, seed=PATTERN_SEED, size=a.size[0])[0]
        return (pics.mean(1, keepdim=True) if c == 1 else pics), "patterns"
    try:
        pics, _ = load_images(images, c, a.size)
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
    """y, x*, its residual and the runner-up's for realizations v on ``bound`` in R^{n_f}
    (``ifv.run.stages.Chain.invert``: Opt. (3) with the tangent condition of ``kinks``, or
    the robust solver where ``bound`` is robust FV)."""
    inv = Chain(bound, progress=progress).invert(v, full_space(bound.n_f, v.device), kinks,
                                                 rb, fv=fv, seed=seed, method=method,
                                                 max_bytes=max_bytes)
    return inv.y, inv.x, inv.residual, inv.next_residual


def _realize(bound: Bound, targets: Tensor, fv: FVSettings, seed: int,
             cache: str | Path | None, progress: bool, log: Log, desc: str,
             key: dict[str, Any]) -> Tensor:
    """FV's v for ``targets`` on ``bound``, a stage of the cache where there is one and the
    model is a zoo model."""
    s = bound.setting
    chain = Chain(bound, StageCache(cache, log) if cache is not None else None, progress, log)
    full = None if s.spec is None else {
        "model": s.model_key(), "layer": s.layer, "features": bound.features,
        "aggregation": s.aggregation, "k": s.k, "param": s.param, **bound.fv_key(fv),
        "seed": seed, "device": bound.device.type,
        "precision": precision_key(bound.device, s.tf32), **key}
    return chain.realize(targets, fv, seed, key=full, name="compare_fv", desc=desc)["v"]
