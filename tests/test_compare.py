"""``ifv compare``: planted copies, the algebra of the correspondence, the baseline, the
outputs and the command's errors (ifv.faces.compare)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

import ifv
from ifv.errors import UserError
from ifv.faces.cli import main
from ifv.faces.correspondence import write
from ifv.math.fv import FVSettings
from ifv.math.inverse import solve, unit, z_k
from ifv.math.matching import (
    agreement,
    correlation,
    expected_objective,
    fit_scales,
    hungarian,
    shares,
)
from ifv.math.metrics import angular_distance
from ifv.math.objective import tap
from ifv.math.robust import Robust
from ifv.zoo.models.densenet import DenseNetBC
from ifv.zoo.models.googlenet import GoogLeNetFV
from ifv.zoo.surgery import draw_planted, planted_copy
from paper.collect import comparison_name

FAST = FVSettings(adam_steps=40, lbfgs_steps=40, batch_size=64)
RANDOM = ["model.weights=random", "compare.objectives=2", "compare.pairs=0",
          "compare.n_images=8", "fv.adam_steps=1", "fv.lbfgs_steps=0", "progress=false"]


def _perturb_bn(net: nn.Module, seed: int = 1) -> nn.Module:
    """Batch norms with non-trivial statistics and affine parts, so that folds are tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return net.eval()


def _tiny_densenet() -> nn.Module:
    """DenseNet-BC-10 (one layer per block, growth 4): dense3 has 5 + 4 channels."""
    torch.manual_seed(0)
    net = _perturb_bn(DenseNetBC(depth=10, growth=4, num_classes=3, activation="softplus"))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.mark.parametrize("layer", ["dense1", "dense2", "dense3"])
def test_densenet_copy_computes_the_same_function(layer: str) -> None:
    torch.manual_seed(0)
    net = _perturb_bn(DenseNetBC(depth=22, growth=12, activation="softplus"))
    groups = net.channel_groups(layer)
    assert sum(groups) == tap(net, layer, torch.rand(1, 3, 32, 32)).shape[1]
    perm, d = draw_planted(groups, torch.Generator().manual_seed(0), scale=3.0)
    b = planted_copy(net, layer, perm, d)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x), net(x), rtol=1e-5, atol=1e-5)
        a_t, b_t = tap(net, layer, x), tap(b, layer, x)
    torch.testing.assert_close(b_t[:, perm], d[perm].float().view(1, -1, 1, 1) * a_t,
                               rtol=1e-4, atol=1e-4)
    assert not torch.equal(perm, torch.arange(len(perm)))  # a real permutation


def test_googlenet_copy_computes_the_same_function() -> None:
    torch.manual_seed(0)
    net = _perturb_bn(GoogLeNetFV(10, activation="softplus", pool="avg",
                                  preactivation=["inception4c"]))
    assert net.channel_groups("inception4c") == [128, 256, 64, 64]
    perm, d = draw_planted(net.channel_groups("inception4c"),
                           torch.Generator().manual_seed(0), scale=3.0)
    b = planted_copy(net, "inception4c", perm, d)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(b(x), net(x), rtol=1e-5, atol=1e-5)
        a_t, b_t = tap(net, "inception4c", x), tap(b, "inception4c", x)
    torch.testing.assert_close(b_t[:, perm], d[perm].float().view(1, -1, 1, 1) * a_t,
                               rtol=1e-4, atol=1e-4)
    perm4b, d4b = draw_planted(net.channel_groups("inception4b"),
                               torch.Generator().manual_seed(0), scale=3.0)
    planted_copy(net, "inception4b", perm4b)  # permuting needs no pre-activation tap ...
    with pytest.raises(UserError, match="pre-activation"):  # ... rescaling does
        planted_copy(net, "inception4b", perm4b, d4b)


def _small_googlenet() -> nn.Module:
    """A random GoogLeNet stand-in (softplus, average pooling, inception4c a pre-activation)
    whose batch norms are calibrated on 32 random 32 px images, as a trained network's are.
    With PyTorch's default initialization and uncalibrated statistics the signal dies on the
    way down: inception4c's responses vary over images by a relative 6e-6 and are mostly
    the batch norms' biases, so no realization determines its objective."""
    torch.manual_seed(0)
    net = _perturb_bn(GoogLeNetFV(10, activation="softplus", pool="avg",
                                  preactivation=["inception4c"]))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # cumulative statistics over one batch
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def test_small_googlenet_responses_depend_on_the_image() -> None:
    """The calibration is what makes the small case a test of recovery (measured: relative
    std over images 3.9 calibrated, 6e-6 not); the affine parts keep _perturb_bn's draw."""
    net = _small_googlenet()
    f = tap(net, "inception4c", torch.rand(16, 3, 32, 32)).mean((2, 3))
    assert float((f.std(0) / f.mean(0).abs()).median()) > 0.5
    bn = net.inception4c.branch1.bn
    assert float(bn.running_var.std()) > 0 and float((bn.weight - 1).abs().max()) > 0.1


@pytest.mark.parametrize(("planted", "k"), [("permuted", 2), ("rescaled", 0),
                                            ("rescaled", 2)])
def test_googlenet_planted_copy_is_recovered(planted: str, k: float) -> None:
    """The small case on GoogLeNet's inception4c, 8 features across its four branches:
    every feature is matched to its true partner, by Grad-IFV and by the baseline; a
    permuted B's rows are A's permuted to rounding; k = 0 gives (*) and the scales back."""
    a = ifv.Setting.make(_small_googlenet(), "inception4c",
                         [0, 64, 128, 200, 300, 384, 400, 480], k=k, size=(32, 32))
    # L-BFGS near convergence, not FAST's 40 steps: on one machine's summation order those
    # left e_200's realization at residual 0.12 on B, not "near" its objective there
    exact = planted == "rescaled" and k == 0  # measured: scales to 0.1% (median) / 0.6%
    fv = (FVSettings(adam_steps=100, lbfgs_steps=1000, tol=1e-10, batch_size=64) if exact
          else FVSettings(adam_steps=40, lbfgs_steps=150, batch_size=64))
    comp = ifv.compare(a, planted=planted, scale=2.0, n_random=6 if exact else 0, fv=fv,
                       pairs=0, n_images=16, progress=False, log=lambda _: None)
    s = comp.summary()
    assert s["recovered"] == 1.0 and s["baseline_recovered"] == 1.0 and s["agreement"] == 1.0
    assert bool((comp.match == comp.truth)[comp.confident].all())
    ang = angular_distance(comp.x_b, comp.expected)
    can = comp.canonical
    if planted == "permuted":
        assert float(ang.max()) < 1e-6
        assert bool(comp.confident.all())
    elif exact:  # measured: canonical rows 0.017 deg at most with 2 threads, 0.28 with 1
        # (FV's end point follows the summation order); scales 0.09% / 0.6%
        assert float(ang[can].max()) < 0.5
        assert s["scale_error_median"] < 0.01 and s["scale_error_max"] < 0.05
    else:  # k = 2: e_i maps near, not onto, e_pi(i)
        assert float(ang[can].median()) < 1.0 and s["median_angle_truth"] > 1.0


def test_planted_copy_refuses_what_it_cannot_do() -> None:
    net = DenseNetBC(depth=10, growth=4).eval()
    with pytest.raises(UserError, match="dense1, dense2, dense3"):
        planted_copy(net, "trans1", torch.arange(9))
    with pytest.raises(ValueError, match="within the channel groups"):
        planted_copy(net, "dense3", torch.arange(9).flip(0))
    with pytest.raises(UserError, match="DenseNet-BC and GoogLeNet"):
        planted_copy(nn.Sequential(nn.Conv2d(3, 4, 1)), "0", torch.arange(4))


def _planted_problem(k: float, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y_A, Dy_A with an exact optimum of f_{x_A}: x_A^T Z_k(y_A) Dy_A = 0."""
    g = torch.Generator().manual_seed(seed)
    n, p = 6, 40
    y = torch.rand(2, n, generator=g, dtype=torch.float64) + 0.5
    x = unit(torch.rand(2, n, generator=g, dtype=torch.float64))
    dy = torch.randn(2, n, p, generator=g, dtype=torch.float64)
    w = unit((z_k(y, k) @ x.unsqueeze(-1)).squeeze(-1))  # rows of Dy orthogonal to Z_k x
    dy = dy - w.unsqueeze(-1) * (w.unsqueeze(-2) @ dy)
    return y, dy, x, torch.randperm(n, generator=g)


@pytest.mark.parametrize("k", [0.0, 2.0])
def test_rescaled_permuted_objective_is_the_exact_formula(k: float) -> None:
    """At an exact optimum, Grad-IFV on B = P D A gives (*) exactly; for k = 0 that is
    P D^{-1} x_A, for k = 2 it is not (S_x's normalization is not scale invariant)."""
    y, dy, x, to_a = _planted_problem(k)
    d = torch.tensor([0.5, 2.0, 1.3, 0.7, 1.9, 1.0], dtype=torch.float64)
    y_b, dy_b = (d * y)[:, to_a], (d[:, None] * dy)[:, to_a]
    x_b, _ = solve(y_b, dy_b @ dy_b.transpose(1, 2), k)
    exp = expected_objective(x, y, y_b, to_a, d, k)
    assert float(angular_distance(x_b, exp).max()) < 1e-6
    naive = unit((x / d)[:, to_a])
    gap = float(angular_distance(x_b, naive).max())
    assert gap < 1e-6 if k == 0 else gap > 1.0


def test_permutation_is_exactly_equivariant() -> None:
    y, dy, _, to_a = _planted_problem(2.0)
    dy = dy + 0.1 * torch.randn(dy.shape, dtype=torch.float64)  # no exact optimum
    x_a, _ = solve(y, dy @ dy.transpose(1, 2), 2.0)
    y_b, dy_b = y[:, to_a], dy[:, to_a]
    x_b, _ = solve(y_b, dy_b @ dy_b.transpose(1, 2), 2.0)
    torch.testing.assert_close(x_b, x_a[:, to_a], rtol=0, atol=1e-10)


def test_fit_scales_recovers_a_planted_diagonal() -> None:
    g = torch.Generator().manual_seed(0)
    w_a = torch.randn(5, 7, generator=g, dtype=torch.float64)
    d = torch.exp(torch.randn(7, generator=g, dtype=torch.float64))
    perm = torch.randperm(7, generator=g)  # A feature i is B feature perm[i]
    w_b = torch.zeros(5, 7, dtype=torch.float64)
    w_b[:, perm] = w_a / d * torch.rand(5, 1, generator=g, dtype=torch.float64)
    fit, residual = fit_scales(w_a, w_b, perm)
    torch.testing.assert_close(fit, d / torch.exp(torch.log(d).mean()), rtol=1e-9, atol=0)
    assert residual < 1e-12


def test_matching_shares_correlation_agreement() -> None:
    w = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.1], [0.7, 0.1, 0.1]])
    m = hungarian(w)
    assert m.tolist() == [1, 0, 2] or m.tolist() == [1, 2, 0]
    assert hungarian(torch.ones(3, 2)).eq(-1).sum() == 1  # more rows than columns
    s = shares(torch.tensor([[3.0, 4.0]]), torch.tensor([1]))
    assert abs(float(s[0]) - 0.64) < 1e-12
    a = torch.randn(10, 4, 3, 3, dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    b = torch.empty_like(a)
    b[:, perm] = a * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1)
    c = correlation(a, b)
    torch.testing.assert_close(c[torch.arange(4), perm], torch.ones(4, dtype=torch.float64))
    assert hungarian(c).tolist() == perm.tolist()
    assert agreement(torch.tensor([0, 1, 2, -1]), torch.tensor([0, 2, 2, 1])) == 2 / 3
    assert correlation(torch.zeros(4, 2, 2, 2), a[:4, :2]).abs().max() == 0  # constant: 0


@pytest.mark.parametrize(("planted", "k"), [("permuted", 2), ("rescaled", 0),
                                            ("rescaled", 2)])
def test_planted_copy_is_recovered(planted: str, k: float, tmp_path: Path) -> None:
    """The small case: every feature of a DenseNet-BC-10's dense3 is matched to its true
    partner, by Grad-IFV and by the baseline; the exact relation (*) holds up to FV's
    residual; k = 0 gives the scales back."""
    a = ifv.Setting.make(_tiny_densenet(), "dense3", "all", k=k, size=(16, 16))
    # the scale fit needs its 6 sampled objectives' realizations close to their optima:
    # FAST leaves some far enough that the fit is off by 14% on one machine and 0.4% on
    # another (summation order); 100 + 300 steps bring every fit below 0.1%
    fv = FVSettings(adam_steps=100, lbfgs_steps=300, batch_size=64) \
        if planted == "rescaled" and k == 0 else FAST
    comp = ifv.compare(a, planted=planted, scale=2.0, n_random=6, fv=fv, pairs=2,
                       n_images=16, progress=False, log=lambda _: None)
    s = comp.summary()
    assert s["baseline_recovered"] == 1.0
    ang = angular_distance(comp.x_b, comp.expected)
    if planted == "permuted":  # exactly equivariant: B's rows are A's, permuted
        assert float(ang.max()) < 1e-3
        assert s["recovered"] == 1.0 and s["agreement"] == 1.0
    elif k == 0:  # (*) is P D^{-1} x_A: exact where the realization determines x_A well
        sharp = comp.residual_b < 0.1 * comp.next_residual_b
        assert int(sharp.sum()) >= 6 and float(ang[sharp].max()) < 0.1
        assert s["recovered"] == 1.0 and s["agreement"] == 1.0
    else:  # k = 2: e_i maps near, not onto, e_pi(i); every confident pair is right
        can = comp.canonical
        assert s["confident"] >= 0.5 and bool((comp.match == comp.truth)[comp.confident].all())
        assert float(ang[can].median()) < 1.0 and s["median_angle_truth"] > 1.0
    if planted == "rescaled" and k == 0:  # scales drawn in [1/2, 2]; measured 0.02% / 0.07%
        assert s["scale_error_median"] < 0.01 and s["scale_error_max"] < 0.05
    paths = write(comp, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        ["compare.parquet", "summary.json", "correspondence.png", "pairs.png"])
    df = pd.read_parquet(tmp_path / "compare.parquet")
    for col in ("objective", "canonical", "feature_a", "target", "x_b", "residual_b",
                "near_optimum_b", "match_b", "share", "confident", "baseline_b", "agree",
                "realization", "truth_b", "correct", "expected_b", "angle_expected"):
        assert col in df.columns
    assert len(df) == 9 + 6 and df.canonical.sum() == 9
    assert df[df.confident].correct.all()
    assert np.asarray(df.realization.iloc[0]).size == 3 * 16 * 16
    assert json.loads((tmp_path / "summary.json").read_text())["recovered"] == s["recovered"]


@pytest.mark.parametrize(("planted", "k"), [("permuted", 2), ("rescaled", 0)])
def test_robust_fv_planted_copy_is_exactly_equivariant(planted: str, k: float) -> None:
    """Under transforms and a prior, FV on A and the robust solver on A and on B (with the
    same draws): y_B,T = P D y_A,T for every transform T, so x_B = P x_A for a permutation
    at any k and x_B ~ P D^{-1} x_A for k = 0 (the relation (*) holds exactly), whatever
    FV's residual, and B's matching is A's own matching permuted."""
    a = ifv.Setting.make(_tiny_densenet(), "dense3", "all", k=k, size=(16, 16),
                         transforms="standard", prior="tv")
    fv = FVSettings(adam_steps=30, lbfgs_steps=10, batch_size=64, transform_samples=3)
    comp = ifv.compare(a, planted=planted, scale=2.0, fv=fv, pairs=0, n_images=16,
                       robust=Robust(batch_size=16), progress=False, log=lambda _: None)
    s = comp.summary()
    assert float(angular_distance(comp.x_b, comp.expected).max()) < 1e-3
    if planted == "permuted":  # Hungarian is equivariant too: B's matching is A's own
        own = hungarian(comp.x_a.abs())
        assert s["recovered"] == pytest.approx(float((own == comp.feature_a).double().mean()))
    assert comp.settings["transforms"] == "standard" and comp.settings["prior"]["name"] == "tv"
    assert comp.settings["inversion"] == {"samples": 3, "draws": "fv",
                                          "estimator": "relative"}
    # the robust solver, not plain Grad-IFV: B's residual is the relative stationarity
    assert bool((comp.next_residual_b >= comp.residual_b).all())
    plain = ifv.Setting.make(_tiny_densenet(), "dense3", "all", k=k, size=(16, 16))
    with pytest.raises(UserError, match="give B A's transforms and prior"):
        ifv.compare(a, plain)


def test_compare_of_two_networks(tmp_path: Path) -> None:
    """B of its own (here: a differently initialized tiny DenseNet): no truth columns,
    residuals flag rows, the two matchings are compared."""
    torch.manual_seed(5)
    other = _perturb_bn(DenseNetBC(depth=10, growth=4, num_classes=3, activation="softplus"), 7)
    a = ifv.Setting.make(_tiny_densenet(), "dense3", "all", k=2, size=(16, 16))
    b = ifv.Setting.make(other, "dense3", "all", k=2, size=(16, 16))
    comp = ifv.compare(a, b, objectives=4, fv=FAST, pairs=2, n_images=16, max_residual=0.0,
                       progress=False, log=lambda _: None)
    assert comp.truth is None and not bool(comp.near.any()) and not bool(comp.confident.any())
    df = comp.table()
    assert "truth_b" not in df.columns and df.canonical.sum() == 4
    assert 0.0 <= comp.summary()["agreement"] <= 1.0
    with pytest.raises(UserError, match="B must take A's inputs"):
        ifv.compare(a, ifv.Setting.make(other, "dense3", "all", size=(8, 8)))
    with pytest.raises(UserError, match="do not give B"):
        ifv.compare(a, b, planted="permuted")
    with pytest.raises(UserError, match="compare.objectives"):
        ifv.compare(a, b, objectives=99, progress=False, log=lambda _: None)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["compare", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    ([], "which B?"),
    (["comparison=nope"], "unknown comparison 'nope'; valid: dnde_permuted"),
    (["compare.planted=shuffled"], "unknown compare.planted 'shuffled'; valid: permuted"),
    (["comparison=dnde_permuted", "compare.b_model=googlenet_patterns"], "drop compare.b_"),
    (["comparison=dnde_seeds", "compare.b_model=googlenet_patterns",
      "compare.b_layer=inception4c"], "B must take A's"),
    (["comparison=dnde_permuted", "compare.objectives=100"], "exceeds A's 69 features"),
    (["comparison=dnde_permuted", "compare.scale=0.5"], "compare.scale must be"),
    (["comparison=dnde_permuted", "layer=pool"], "planted copies permute"),
    (["oops"], "unknown argument 'oops'"),
    (["comparison=dnde_seeds", "compare.b_model=srnet_geometry", "compare.b_layer=block8"],
     "param=rgb makes 3-channel inputs, but compare.b_model=srnet_geometry takes 5-channel "
     "ones; valid param for srnet_geometry: geometry_fixed, geometry_free"),
    (["comparison=dnde_permuted", "compare.images=[/nope.png]"],
     "compare.images: /nope.png: no such file"),
    (["comparison=dnde_permuted", "compare.images=[/nope.jpg]"],
     "compare.images: /nope.jpg: unknown image format '.jpg'"),
    (["comparison=dnde_permuted", "compare.min_share=5"],
     "compare.min_share must be a number in [0, 1], got 5"),
    (["comparison=dnde_permuted", "compare.min_share=-0.5"],
     "compare.min_share must be a finite number >= 0"),
    (["comparison=dnde_seeds", "compare.b_layer=nope"],
     "compare.b_layer: model 'densenet_patterns' has no layer 'nope'; valid: conv0"),
    (["comparison=dnde_seeds", "compare.b_features=1000"],
     "compare.b_features=1000 is larger than the 69 channels of densenet_patterns.dense3"),
    (["comparison=dnde_seeds", "compare.b_features=[3,3]"],
     "compare.b_features: feature indices [3] repeated"),
    (["comparison=dnde_seeds", "compare.b_model=nope"], "unknown compare.b_model 'nope'"),
    (["comparison=dnde_seeds", "compare.b_weights=/no/such.pt"],
     "no weights file /no/such.pt (compare.b_weights of densenet_patterns)"),
    (["comparison=dnde_permuted", "features.indices=[0,0]"],
     "features.indices: feature indices [0] repeated"),
    (["comparison=dnde_permuted", "compare.out=/dev/null"],
     "cannot write compare.out /dev/null: /dev/null is not a folder"),
    (["compare.planted=permuted", "model=torchvision:resnet18", "model.input_size=[3,32,32]",
      "layer=layer3"], "planted copies are made of networks that know how to permute their "
     "tapped channels (ifv.zoo.surgery.Plantable: the zoo's DenseNet-BC and GoogLeNet models), "
     "not torchvision:resnet18: every consumer of those channels (residual sums, "
     "concatenations) must be rewritten with them; compare it with a B of its own "
     "(compare.b_model, compare.b_weights)"),
])
def test_cli_errors_are_one_line(args: list[str], message: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One line, exit 2, before either network is loaded; no output files."""
    monkeypatch.setattr(ifv.Setting, "network", _no_network)
    out = tmp_path / "out"
    code, err = _run([*RANDOM, f"compare.out={out}", *args], capsys)
    assert code == 2
    assert err.startswith("ifv: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())  # no partial output files


def _no_network(*_: object, **__: object) -> None:
    raise AssertionError("a network was loaded before the bad input was refused")


@pytest.mark.parametrize("kind", ["link", "folder"])
def test_cli_refuses_an_output_that_is_no_regular_file(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.json in compare.out as a link (to a file) or a folder: refused before any
    work, in one line, and left as it was."""
    monkeypatch.setattr(ifv.Setting, "network", _no_network)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "target").write_text("keep")
    if kind == "link":
        (out / "summary.json").symlink_to(tmp_path / "target")
    else:
        (out / "summary.json").mkdir()
    code, err = _run(["comparison=dnde_permuted", *RANDOM, f"compare.out={out}"], capsys)
    what = "a symbolic link" if kind == "link" else "a folder"
    assert code == 2 and err == (
        f"ifv: error: compare.out file {out / 'summary.json'} is {what}, not a regular file; "
        "ifv writes only regular files (it would replace it): choose another path\n")
    assert [p.name for p in out.iterdir()] == ["summary.json"]
    assert (tmp_path / "target").read_text() == "keep"


def test_cli_writes_the_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["compare", "comparison=dnde_permuted", *RANDOM, f"compare.out={out}",
                 f"stage_cache={tmp_path / 'stages'}"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare.parquet", "correspondence.png",
                                                     "summary.json"]
    # `make collect` files the run under the comparison's name, wherever compare.out is
    assert json.loads((out / "summary.json").read_text())["settings"]["name"] == "dnde_permuted"
    assert comparison_name(out / "summary.json") == "dnde_permuted"
    text = capsys.readouterr().out
    assert "agreement with the correlation baseline" in text and "planted: recovered" in text


def test_list_names_the_comparisons(capsys: pytest.CaptureFixture[str]) -> None:
    main(["list"])
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("comparisons:")]
    assert line and all(n in line[0] for n in ("dnde_permuted", "dnde_rescaled_k0",
                                                "dnde_rescaled_k2", "gn4c_permuted",
                                                "dnde_seeds", "gn4c_rescaled_k0"))
