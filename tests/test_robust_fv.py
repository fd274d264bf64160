"""Robust FV wired through ifv: transforms and priors in FV, ``ifv run``, ``ifv invert`` and
the API (the solver's derivation is tests/test_robust.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import ifv
from ifv.errors import UserError
from ifv.faces.cli import main
from ifv.math.fv import (
    FVSettings,
    adam,
    averaged_steps,
    lbfgs_draws,
    ramp,
    realize,
    settings_key,
)
from ifv.math.objective import Response
from ifv.math.param import make_param
from ifv.math.prior import PENALTIES, Prior
from ifv.math.robust import Robust
from ifv.math.transform import build
from ifv.run.setting import Setting

TINY = ["model.weights=random", "features.n=4", "sampling.n_total=2", "fv.adam_steps=2",
        "fv.lbfgs_steps=2", "fv.transform_samples=2", "reopt.steps=1", "inversion.samples=2",
        "progress=false", "figures=false"]
SETTINGS = FVSettings(adam_steps=4, lbfgs_steps=3, batch_size=2, transform_samples=2)


def _response(small_cnn: nn.Module) -> Response:
    return Response(small_cnn, make_param("rgb", 8, 8), "conv2", range(4))


def _init(n: int, generator: torch.Generator) -> torch.Tensor:
    return make_param("rgb", 8, 8).init(n, generator).double()


def _x() -> torch.Tensor:
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def test_transforms_that_do_nothing_give_the_bare_realizations(small_cnn: nn.Module) -> None:
    response, x = _response(small_cnn), _x()
    init = _init
    bare = realize(response, x, 2, SETTINGS, init=init, seed=3, progress=False)
    still = build((("pad", 0), ("jitter", 0)), 8, 8)
    same = realize(response, x, 2, SETTINGS, init=init, seed=3, progress=False,
                   transform=still)
    assert torch.allclose(bare.v, same.v, rtol=1e-9, atol=1e-12)


def test_transforms_are_deterministic_per_seed(small_cnn: nn.Module) -> None:
    response, x = _response(small_cnn), _x()
    t = build((("pad", 1), ("jitter", 2), ("rotate", (-10.0, 0.0, 10.0))), 8, 8)
    prior = Prior("tv", response.param, 0.5)
    runs = [realize(response, x, 2, SETTINGS, init=_init, seed=s,
                    progress=False, transform=t, prior=prior) for s in (3, 3, 4)]
    assert torch.equal(runs[0].v, runs[1].v)
    assert not torch.allclose(runs[0].v, runs[2].v)
    bare = realize(response, x, 2, SETTINGS, init=_init, seed=3, progress=False)
    assert not torch.allclose(bare.v, runs[0].v)


def test_the_prior_ramps_in_over_adams_steps(small_cnn: nn.Module) -> None:
    """The ramp's factor is 0 over the delay and then linear in the step up to 1, and
    Adam's first step under a ramp with factor 1/1000 on a prior of weight 1000 is the
    first step under weight 1 unramped (Adam's step is a function of the gradient alone);
    under a delay, Adam's first steps are those without the prior."""
    assert [ramp(i, 4, 1.0) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [ramp(i, 4, 0.5) for i in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert ramp(0, 4, 0.0) == 1.0 and ramp(3, 4, 2.0) == 0.5
    assert [ramp(i, 10, 1.0, 0.2) for i in range(10)] == [0, 0] + [j / 8 for j in range(1, 9)]
    assert [ramp(i, 10, 0.5, 0.6) for i in range(10)] == [0] * 6 + [0.5, 1, 1, 1]
    assert [ramp(i, 4, 0.0, 0.5) for i in range(4)] == [0, 0, 1, 1]
    assert ramp(3, 4, 1.0, 1.0) == 0.0
    response, x = _response(small_cnn), _x()
    v0 = _init(3, torch.Generator().manual_seed(0))
    p = response.param
    step = [adam(response, v0, x, 2, 1, 0.05, prior=Prior("tv", p, w), prior_ramp=r)
            for w, r in ((1000.0, 1000.0), (1.0, 0.0), (1000.0, 0.0))]
    assert torch.allclose(step[0], step[1], rtol=0, atol=1e-12)
    assert not torch.allclose(step[1], step[2])
    delayed = adam(response, v0, x, 2, 3, 0.05, prior=Prior("tv", p, 1000.0), prior_ramp=1.0,
                   prior_delay=0.5)  # steps 0 and 1 without the prior, step 2 at full weight
    assert torch.equal(adam(response, v0, x, 2, 2, 0.05), adam(
        response, v0, x, 2, 2, 0.05, prior=Prior("tv", p, 1000.0), prior_delay=1.0))
    assert not torch.allclose(delayed, adam(response, v0, x, 2, 3, 0.05))
    # L-BFGS follows the full weight: with no Adam steps the ramp changes nothing
    runs = [realize(response, x, 2, FVSettings(adam_steps=0, lbfgs_steps=3, batch_size=3,
                                               prior_ramp=share),
                    v0=v0, progress=False, prior=Prior("tv", p, 0.5)) for share in (1.0, 0.0)]
    assert torch.equal(runs[0].v, runs[1].v)


def test_adam_averages_its_last_iterates() -> None:
    """On a loss whose gradient is constant (-S_x of the identity response at k = 0:
    -x^T v) every Adam step moves each coordinate by lr against the gradient's sign (the
    bias-corrected moments are g and g^2), so after step i the iterate is v0 + lr i s: the
    last of 8 steps is at 8 lr, the mean over the last half (steps 5 to 8) at 6.5 lr, over
    all 8 at 4.5 lr. A coordinate without gradient does not move."""
    assert [averaged_steps(8, s) for s in (0.0, 0.1, 0.5, 1.0)] == [0, 1, 4, 8]
    x = torch.tensor([[0.6, -0.8, 0.0]], dtype=torch.float64)
    v0 = torch.full((1, 3), 0.5, dtype=torch.float64)
    s = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    for share, at in ((0.0, 8.0), (0.5, 6.5), (1.0, 4.5)):
        v = adam(lambda v: v, v0, x, 0, 8, 0.1, average=share)
        assert torch.allclose(v, v0 + 0.1 * at * s, atol=1e-6), share


def test_fv_cache_keys_name_only_what_shapes_the_realization() -> None:
    s = FVSettings()
    assert "adam_average" not in settings_key(s, True, True)  # the last iterate: as before
    assert settings_key(FVSettings(adam_average=0.25), False, False)["adam_average"] == 0.25
    assert {"transform_samples", "prior_ramp", "prior_delay"}.isdisjoint(
        settings_key(s, False, False))
    assert settings_key(s, True, True)["prior_ramp"] == s.prior_ramp
    assert settings_key(s, True, True)["prior_delay"] == s.prior_delay
    assert {"prior_ramp", "prior_delay"}.isdisjoint(settings_key(s, True, False))
    assert "transform_samples" not in settings_key(s, False, True)


def test_priors_are_per_sample_and_blur_stops_the_gradient() -> None:
    images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64, requires_grad=True)
    for name, fn in PENALTIES.items():
        value = fn(images)
        assert value.shape == (2,) and bool((value > 0).all()), name
        assert torch.allclose(fn(images[1:]), value[1:]), name  # samples independent
    (g,) = torch.autograd.grad(PENALTIES["blur"](images).sum(), images)
    box = torch.nn.functional.avg_pool2d(images.detach(), 3, 1, 1, count_include_pad=False)
    assert torch.allclose(g, (images.detach() - box) / images[0].numel())


def test_run_records_the_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["run", *TINY, "transforms=standard", "prior=tv", "prior.weight=0.5",
                 f"stage_cache={tmp_path / 'cache'}", f"hydra.run.dir={out}"]) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert (df.transforms == "standard").all() and (df.prior == "tv").all()
    assert (df.prior_weight == 0.5).all() and (df.inversion_samples == 2).all()
    assert df.angle_robust.between(0, 90).all() and df.prior_weight_robust.notna().all()
    assert all(len(p) == 4 for p in df.prediction_robust)
    assert "robust FV (transforms standard, prior tv)" in capsys.readouterr().out
    bare = tmp_path / "bare"
    assert main(["run", *TINY, f"stage_cache={tmp_path / 'cache'}",
                 f"hydra.run.dir={bare}"]) == 0
    df = pd.read_parquet(bare / "results.parquet")
    assert (df.transforms == "none").all() and (df.inversion_samples == 1).all()
    assert (df.angle_robust == df.angle_pred).all() and df.prior_weight_robust.isna().all()
    assert "realizations: cached" not in capsys.readouterr().out  # keys differ


def test_run_inverts_averaged_adam_only_realizations_with_sampled_draws(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Another tool's loop in ifv run: Adam only (no L-BFGS draws to reuse), its iterates
    averaged; the robust stage then takes inversion.samples draws of its own seed, and the
    last iterate is another realization (another cache entry, other responses)."""
    runs = []
    for share in ("0.5", "0"):
        out = tmp_path / f"run{share}"
        assert main(["run", *TINY, "transforms=standard", "fv.lbfgs_steps=0",
                     "fv.adam_steps=4", f"fv.adam_average={share}",
                     f"stage_cache={tmp_path / 'cache'}", f"hydra.run.dir={out}"]) == 0
        runs.append(pd.read_parquet(out / "results.parquet"))
    df = runs[0]
    assert (df.inversion_draws == "sampled").all() and (df.inversion_samples == 2).all()
    assert df.angle_robust.between(0, 90).all()
    assert "realizations: cached" not in capsys.readouterr().out
    assert not np.allclose(np.stack(df.response), np.stack(runs[1].response))


def test_invert_records_the_settings(small_cnn: nn.Module, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(img, tmp_path / "a.pt")
    out = tmp_path / "inv.json"
    assert main(["invert", str(tmp_path / "a.pt"), "model.weights=random", "features.n=4",
                 "transforms=custom", "transforms.steps=[{pad: 2},{jitter: 2}]", "prior=l2",
                 "inversion.samples=2", "k=0", "progress=false", f"invert.out={out}"]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert settings["transforms"] == "pad=2 jitter=2"
    assert settings["prior"] == {"name": "l2", "weight": 10.0}
    assert settings["inversion"]["samples"] == 2
    assert "robust: transforms pad=2 jitter=2" in capsys.readouterr().out
    res = ifv.invert(img[:1, :, :8, :8].double(), small_cnn, "conv2", 4, k=0, input="image",
                     transforms=[{"jitter": 1}], prior={"name": "blur", "weight": 2.0},
                     progress=False)
    assert res.settings["prior"] == {"name": "blur", "weight": 2.0}
    assert res.x_pred.shape == (1, 4) and torch.isfinite(res.residual).all()
    # the runner-up's residual is reported for robust inversions too
    assert torch.isfinite(res.next_residual).all()
    assert (res.next_residual >= res.residual - 1e-12).all()


@pytest.mark.parametrize(("args", "expect"), [
    (["transforms=spin"], "unknown transforms 'spin'; valid: custom, lucent, lucid, none"),
    (["prior=sharp"], "unknown prior 'sharp'; valid: blur, l2, none, tv"),
    (["prior=tv", "prior.weight=-1"], "prior.weight must be a finite number >= 0"),
    (["prior.weight=1"], "prior.weight needs a prior"),
    (["transforms=custom", "transforms.steps=[{spin: 3}]"],
     "unknown transforms[0] step 'spin'; valid: pad, jitter, scale, rotate"),
    (["transforms=custom", "transforms.steps=[{scale: 2}]"],
     "transforms[0].scale must be a non-empty list of numbers"),
    (["transforms=custom", "transforms.steps=[{jitter: -1}]"],
     "transforms[0].jitter must be an integer >= 0"),
    (["transforms.steps=[{pad: 1}]"], "transforms.steps needs transforms=custom"),
    (["inversion.samples=0"], "inversion.samples must be an integer >= 1"),
    (["fv.transform_samples=0"], "fv.transform_samples must be an integer >= 1"),
    (["prior=tv", "fv.prior_ramp=-1"], "fv.prior_ramp must be a finite number >= 0"),
    (["prior=tv", "fv.prior_delay=1.5"], "fv.prior_delay must be a number in [0, 1], got 1.5"),
    (["prior=tv", "fv.prior_delay=-0.1"], "fv.prior_delay must be a finite number >= 0"),
    (["fv.adam_average=2"], "fv.adam_average must be a number in [0, 1], got 2"),
    (["inversion.draws=mine"], "unknown inversion.draws 'mine'; valid: auto, fv, sampled"),
    (["inversion.estimator=best"], "unknown inversion.estimator 'best'; valid: relative, mean"),
])
def test_user_errors_are_one_line(args: list[str], expect: str,
                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "model.weights=random", "progress=false", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_api_errors(small_cnn: nn.Module) -> None:
    with pytest.raises(UserError, match="unknown transforms 'jiggle'"):
        Setting.make(small_cnn, "conv2", 4, size=(8, 8), transforms="jiggle")
    with pytest.raises(UserError, match="unknown prior option"):
        Setting.make(small_cnn, "conv2", 4, size=(8, 8), prior={"name": "tv", "lam": 1})


def test_inversion_draws_are_fvs_own_where_ifv_made_the_realizations(small_cnn: nn.Module
                                                                      ) -> None:
    """auto: FV's L-BFGS draws for ifv's realizations (L-BFGS ran), else sampled ones;
    fv without FV's settings is refused in one line."""
    b = Setting.make(small_cnn, "conv2", 4, size=(8, 8), transforms="standard").bind(
        progress=False)
    rb = Robust(samples=3, seed=5)
    assert rb.uses_fv_draws(SETTINGS) and not rb.uses_fv_draws(None)
    assert not rb.uses_fv_draws(FVSettings(lbfgs_steps=0))
    assert not Robust(draws="sampled").uses_fv_draws(SETTINGS)
    with pytest.raises(UserError, match="inversion.draws=fv needs the FV settings"):
        Robust(draws="fv").uses_fv_draws(None)
    v = _init(2, torch.Generator().manual_seed(0))
    img = b.param(v.float())

    def images(rb: Robust, fv: FVSettings | None, seed: int) -> list[torch.Tensor]:
        responses, _ = b.robust_inputs(rb, fv, seed)
        return [r.param(v.float()) for r in responses]

    own = [t(img) for t in lbfgs_draws(b.transform, SETTINGS, 7)]
    got = images(rb, SETTINGS, 7)
    assert len(got) == SETTINGS.transform_samples
    assert all(torch.equal(a, c) for a, c in zip(got, own, strict=True))
    sampled = [t(img) for t in b.transform.samples(3, 5)]
    got = images(rb, None, 7)
    assert len(got) == 3 and all(torch.equal(a, c) for a, c in zip(got, sampled, strict=True))
    assert rb.record(True, SETTINGS) == {"inversion_samples": 2, "inversion_draws": "fv",
                                         "inversion_estimator": "relative"}
    assert rb.record(False, SETTINGS)["inversion_draws"] == "none"


def test_robust_curve_plot(tmp_path: Path) -> None:
    """``lab.robust_curve --plot`` draws a panel per run file into a PNG."""
    from PIL import Image

    from lab.robust_curve import plot

    run = {"k": 2.0, "prior": "none", "maker": "ifv", "fv_samples": 16, "plain": 88.0,
           "response": 60.0, "fv_draws": {"relative": 8.0, "mean": 10.0},
           "sampled": {e: {"1": 80.0, "4": 60.0, "16": 42.0} for e in ("relative", "mean")}}
    files = []
    for k in (0, 2):
        f = tmp_path / f"k{k}.json"
        f.write_text(json.dumps({**run, "k": float(k)}))
        files.append(str(f))
    out = tmp_path / "curve.png"
    plot(files, str(out))
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 200
