"""Grad-IFV on the user's images: ``ifv.invert`` / ``ifv.visualize`` and ``ifv invert``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import ifv
from ifv.errors import UserError
from ifv.faces.cli import main
from ifv.math.fv import FVSettings, realize
from ifv.math.inverse import solve, unit, z_k, z_k_inv
from ifv.math.jacobian import response_and_gram
from ifv.math.kink import Kinks, solve_at_kinks, tangent_gram
from ifv.math.metrics import angular_distance
from ifv.math.objective import Response
from ifv.math.param import make_param
from ifv.run.images import EPS, to_params
from ifv.run.setting import Setting

K = 2.0
SHAPE = (3, 4, 5)  # C, H, W of the planted network's input (H != W catches transposes)
N_F = 5
RANDOM = ["model.weights=random", "features.n=4"]  # densenet_patterns, random weights


def _planted(trivial: int | None = None, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A linear response y = W I + b and an image I with x^T Z_k(y) Dy = 0 by construction.

    Dy = W diag(sigmoid'(v)) w.r.t. P_rgb's v, so x^T Z_k Dy = 0 holds where W^T Z_k x = 0.
    With ``trivial = j`` the row j of W is dead as well: e_j is a trivial solution (Sec. 2.1)
    and (Z_k x)_j = 0, so C = e_j^perp keeps x. Returns (network, image (C, H, W) in
    multiples of 1/255 away from 0 and 1, unit x with x^T y > 0).
    """
    g = torch.Generator().manual_seed(seed)
    n_p = int(np.prod(SHAPE))
    image = torch.randint(1, 255, SHAPE, generator=g).double() / 255
    y0 = torch.rand(N_F, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(N_F, generator=g, dtype=torch.float64)
    cols = [w]
    if trivial is not None:
        w[trivial] = 0.0
        cols.append(torch.eye(N_F, dtype=torch.float64)[trivial])
    x = unit(z_k_inv(y0[None], K)[0] @ w)
    x = x if x @ y0 > 0 else -x
    q, _ = torch.linalg.qr(torch.stack(cols, dim=1))
    w0 = torch.randn(N_F, n_p, generator=g, dtype=torch.float64)
    weight = w0 - q @ (q.T @ w0)
    lin = nn.Linear(n_p, N_F).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(y0 - weight @ image.flatten())
    net = nn.Sequential(nn.Flatten(), lin).eval()
    return net, image, x


def _invert_planted(images: object, net: nn.Module, **kw: object) -> ifv.Inversion:
    return ifv.invert(images, model=net, layer="1", features="all", aggregation="identity",
                      k=K, **kw)


def _png(path: Path, chw: Tensor) -> Path:
    arr = (chw.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_planted_objective_is_recovered() -> None:
    net, image, x = _planted()
    res = _invert_planted(image, net)
    assert float(angular_distance(x[None], res.x_pred)[0]) < 1e-4
    assert float(res.x_pred[0] @ res.y[0]) > 0  # sign: the side where S_x is maximized
    assert float(res.residual[0]) < 1e-6 < float(res.next_residual[0])
    assert res.features == list(range(N_F))
    assert res.sources == [("images[0]", 0)]


def test_file_formats_and_layouts_agree(tmp_path: Path) -> None:
    """.pt (C, H, W), .npy (H, W, C), 8-bit .png and a batched .pt give one prediction."""
    net, image, x = _planted()
    other = torch.rand(SHAPE, dtype=torch.float64)
    torch.save(image, tmp_path / "a.pt")
    np.save(tmp_path / "a.npy", image.permute(1, 2, 0).numpy())
    _png(tmp_path / "a.png", image)
    torch.save(torch.stack([other, image]), tmp_path / "batch.pt")
    files = [tmp_path / n for n in ("a.pt", "a.npy", "a.png", "batch.pt")]
    res = _invert_planted(files, net)
    assert [(Path(f).name, i) for f, i in res.sources] == [
        ("a.pt", 0), ("a.npy", 0), ("a.png", 0), ("batch.pt", 0), ("batch.pt", 1)]
    same = res.x_pred[[0, 1, 2, 4]]
    assert torch.allclose(same, same[:1].expand_as(same), atol=1e-10)
    assert float(angular_distance(x[None], res.x_pred[:1])[0]) < 1e-4


@pytest.mark.parametrize("name", ["rgb", "fft", "ffte"])
def test_prediction_equals_low_level_invert(small_cnn: nn.Module, name: str) -> None:
    """The images go to v by P's inverse; the rest is y, G and Opt. (3) on that v."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    images[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.5])  # saturated pixels are clamped
    res = ifv.invert(images, model=small_cnn, layer="conv2", features=[5, 1, 3],
                     aggregation="maxpool_mean", k=K, param=name)
    param = make_param(name, 8, 8)
    v = to_params(images, param)
    assert torch.allclose(param(v), images.clamp(EPS, 1 - EPS), atol=1e-12)
    response = Response(small_cnn, param, "conv2", [5, 1, 3], "maxpool_mean")
    y, _, g_t, dim = tangent_gram(response, v, Kinks())  # the default: the tangent condition
    x_low = solve_at_kinks(y, g_t, K, None, dim)
    assert res.features == [5, 1, 3]
    assert torch.allclose(res.x_pred, x_low, atol=1e-10)
    assert torch.allclose(res.y, y, atol=1e-12) and torch.equal(res.kink_dim, dim)
    plain = ifv.invert(images, model=small_cnn, layer="conv2", features=[5, 1, 3],
                       aggregation="maxpool_mean", k=K, param=name, kinks=Kinks(samples=0))
    y, gram = response_and_gram(response, v)
    assert torch.allclose(plain.x_pred, solve(y, gram, K)[0], atol=1e-10)
    assert plain.kink_dim.tolist() == [0, 0]


def test_params_input_equals_image_input(small_cnn: nn.Module, tmp_path: Path) -> None:
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    v = to_params(images, make_param("rgb", 8, 8))
    torch.save(v, tmp_path / "v.pt")
    kw = {"model": small_cnn, "layer": "conv2", "features": "all"}
    a = ifv.invert(images.permute(0, 2, 3, 1), **kw)  # (B, H, W, C) layout
    b = ifv.invert(tmp_path / "v.pt", input="params", size=(8, 8), **kw)
    assert torch.allclose(a.x_pred, b.x_pred, atol=1e-10)


def _critical_parquet(path: Path, n_f: int, trivial: int, *, best_full: bool = False) -> Path:
    """A critical.parquet as ``ifv run`` writes it: R^{n_f} and C = e_trivial^perp."""
    e = np.eye(n_f)[trivial]
    pd.DataFrame({"experiment": "planted", "critical_dim": [n_f, n_f - 1],
                  "rho_min": [np.nan, 0.1], "rho_max": [np.nan, 0.2],
                  "complement": [[], [e]], "median_angle_pred": [1.0, 0.5],
                  "best": [best_full, not best_full]}).to_parquet(path, index=False)
    return path


def test_critical_space_removes_the_trivial_solution(tmp_path: Path) -> None:
    """e_2 is a trivial solution (a dead row): C = e_2^perp from critical.parquet restores x."""
    net, image, x = _planted(trivial=2)
    crit = _critical_parquet(tmp_path / "critical.parquet", N_F, trivial=2)
    free = _invert_planted(image, net)
    assert float(free.next_residual[0]) < 1e-6  # two exact solutions: flagged as ambiguous
    res = _invert_planted(image, net, critical=crit)
    assert res.settings["critical_dim"] == N_F - 1
    assert float(angular_distance(x[None], res.x_pred)[0]) < 1e-4
    assert abs(float((z_k(res.y, K)[0] @ res.x_pred[0])[2])) < 1e-10
    assert float(res.next_residual[0]) > 1e-3
    full = _invert_planted(image, net, critical=crit, critical_dim=N_F)
    assert torch.allclose(full.x_pred, free.x_pred)


def test_visualize_is_fv_rendered(small_cnn: nn.Module) -> None:
    """ifv.visualize = P(v*) of ifv.math.fv.realize on unit targets; ifv.invert reads it back."""
    x = torch.tensor([[3.0, 0, 0, 0, 0, 4.0], [0, 1.0, 0, 0, 0, 0]], dtype=torch.float64)
    settings = FVSettings(adam_steps=20, lbfgs_steps=5)
    images = ifv.visualize(x, model=small_cnn, layer="conv2", features="all", size=(8, 8),
                           settings=settings, seed=1, progress=False)
    param = make_param("rgb", 8, 8)
    ref = realize(Response(small_cnn, param, "conv2", range(6)), unit(x), K, settings,
                  init=lambda n, g: param.init(n, g).double(), seed=1, progress=False)
    assert images.shape == (2, 3, 8, 8)
    assert torch.allclose(images, param(ref.v))
    res = ifv.invert(images, model=small_cnn, layer="conv2", features="all")
    assert res.x_pred.shape == (2, 6) and torch.isfinite(res.x_pred).all()
    with pytest.raises(UserError, match=r"\(N, 6\)"):
        ifv.visualize(torch.ones(5), model=small_cnn, layer="conv2", features="all",
                      size=(8, 8))


def test_api_user_errors(small_cnn: nn.Module, tmp_path: Path) -> None:
    images = torch.rand(3, 8, 8, dtype=torch.float64)
    with pytest.raises(UserError, match="no layer 'nope'"):
        ifv.invert(images, model=small_cnn, layer="nope")
    with pytest.raises(UserError, match="larger than the 6 channels"):
        ifv.invert(images, model=small_cnn, layer="conv2", features=7)
    with pytest.raises(UserError, match="training mode"):
        ifv.invert(images, model=nn.Conv2d(3, 2, 1), layer="")
    with pytest.raises(UserError, match="input=params"):
        ifv.invert(images, model=small_cnn, layer="conv2", param="geometry_fixed")
    crit = _critical_parquet(tmp_path / "critical.parquet", 4, trivial=0)
    pd.DataFrame({"model": ["googlenet"], "layer": ["dense3"]}).to_parquet(
        tmp_path / "results.parquet")
    with pytest.raises(UserError, match="its run used model 'googlenet'"):
        ifv.invert(torch.rand(3, 32, 32), weights="random", features=4, critical=crit)


def test_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    g = torch.Generator().manual_seed(0)
    png = _png(tmp_path / "r.png", torch.randint(0, 256, (3, 32, 32), generator=g) / 255)
    crit = _critical_parquet(tmp_path / "critical.parquet", 4, trivial=0)
    out = tmp_path / "inv.json"
    assert main(["invert", str(png), *RANDOM, "invert.top=2", f"invert.critical={crit}",
                 f"invert.out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "r.png: residual" in printed and "dim C = 3" in printed and f"wrote {out}" in printed
    doc = json.loads(out.read_text())
    assert doc["settings"] | {"critical": None} == {
        "model": "densenet_patterns", "weights": "random", "layer": "dense3", "n_f": 4,
        "aggregation": "maxpool_mean", "k": 2.0, "param": {"name": "rgb", "init_std": 0.01},
        "input": "image", "device": "cpu", "tf32": False,
        "critical": None, "critical_dim": 3, "transforms": "none",
        "prior": {"name": "none", "weight": 0.0}, "inversion": None,
        "kinks": {"samples": 4, "sigma": 1e-3, "rho": 1e-3, "seed": 0, "rows": 64}}
    assert doc["features"] == [0, 1, 2, 3]
    (row,) = doc["images"]
    ref = ifv.invert(png, weights="random", features=4, critical=crit)
    assert row["file"] == str(png) and row["index"] == 0
    assert row["kink_dim"] == int(ref.kink_dim[0]) and "dim N" in printed
    assert np.allclose(row["objective"], ref.x_pred[0].numpy(), atol=1e-12)
    assert np.isclose(row["residual"], float(ref.residual[0]))
    weights = [t["weight"] for t in row["top"]]
    assert len(weights) == 2 and abs(weights[0]) >= abs(weights[1])
    assert row["top"][0]["weight"] == pytest.approx(row["objective"][row["top"][0]["feature"]])
    assert np.dot(row["objective"], row["response"]) >= 0
    z = z_k(torch.tensor([row["response"]]), K)[0].numpy()
    assert abs((z @ np.array(row["objective"]))[0]) < 1e-10  # e_0 removed by C


class _Payload:
    """A pickle that, unpickled, writes the marker file MARKER: code a user's file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def evil_pt(path: Path, marker: Path, obj: object = None) -> Path:
    """A .pt file whose unpickling runs code (touches ``marker``), inside ``obj``'s
    containers or alone."""
    torch.save(_Payload(marker) if obj is None else {"state_dict": _Payload(marker)}, path)
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    np.save(tmp / "shape.npy", np.zeros((3, 16, 16)))
    np.save(tmp / "range.npy", np.full((32, 32, 3), 200.0))
    (tmp / "junk.png").write_bytes(b"not a png")
    np.save(tmp / "ok.npy", np.full((32, 32, 3), 0.5))
    np.save(tmp / "complex.npy", np.full((32, 32, 3), 0.5 + 0.1j))
    crit = _critical_parquet(tmp / "critical.parquet", 5, trivial=0)
    ok = str(tmp / "ok.npy")
    (tmp / "folder").mkdir()
    (tmp / "target.json").write_text("keep")
    (tmp / "link.json").symlink_to(tmp / "target.json")
    evil_pt(tmp / "evil.pt", tmp / "MARKER")
    evil_pt(tmp / "evil_weights.pt", tmp / "MARKER", obj={})
    return {
        "shape": ([str(tmp / "shape.npy")], "shape (3, 16, 16) does not fit"),
        "range": ([str(tmp / "range.npy")], "outside [0, 1]"),
        "unreadable": ([str(tmp / "junk.png")], "cannot read it as .png"),
        "missing": ([str(tmp / "none.png")], "no such file"),
        "format": ([str(tmp / "ok.jpg")], "unknown image format"),
        "key": ([ok, "foo=1"], "no key 'foo'"),
        "value": ([ok, "k=x"], "invalid value for k"),
        "negative_k": ([ok, "k=-1"], "k must be a finite number >= 0"),
        "infinite_k": ([ok, "k=1e400"], "k must be a finite number >= 0"),
        "top": ([ok, "invert.top=0"], "invert.top must be an integer >= 1"),
        "input": ([ok, "invert.input=pixels"], "unknown input 'pixels'; valid: image, params"),
        "features": ([ok, "features=64"], "unknown features '64'; valid: all"),
        "n_f": ([ok, f"invert.critical={crit}"], "belongs to 5 features, not the 4"),
        "dim": ([ok, f"invert.critical={crit}", "invert.critical_dim=2"],
                "no critical space of dim 2"),
        "weights": ([ok, "features.n=4", f"model.weights={tmp / 'none.pt'}"],
                    "no weights file"),
        "none": (["k=2"], "which images?"),
        "out": ([ok, "invert.out=/proc/ifv/x.json"],
                "cannot write the folder of invert.out /proc/ifv"),
        "critical_dim": ([ok, f"invert.critical={crit}", "invert.critical_dim=0"],
                         "invert.critical_dim must be an integer >= 1"),
        "out_folder": ([ok, f"invert.out={tmp / 'folder'}"],
                       f"invert.out {tmp / 'folder'} is a folder, not a regular file"),
        "out_link": ([ok, f"invert.out={tmp / 'link.json'}"],
                     f"invert.out {tmp / 'link.json'} is a symbolic link, not a regular file"),
        "out_device": ([ok, "invert.out=/dev/full"],
                       "invert.out /dev/full is a character device, not a regular file"),
        "out_stdout": ([ok, "invert.out=/dev/stdout"],
                       "invert.out /dev/stdout is a symbolic link"),
        "repeated": ([ok, "features.indices=[0,0,1]"],
                     "features.indices: feature indices [0] repeated"),
        "channels": ([ok, "param=geometry_fixed"],
                     "param=geometry_fixed makes 5-channel inputs, but model=densenet_patterns "
                     "takes 3-channel ones; valid param for densenet_patterns: rgb, fft, ffte"),
        "no_critical": ([ok, f"invert.critical={tmp / 'none.parquet'}"],
                        f"invert.critical: no such file {tmp / 'none.parquet'}"),
        "pickle_image": ([str(tmp / "evil.pt")], "evil.pt: cannot read it as .pt: it holds "
                         "Python objects other than tensors, which ifv does not unpickle"),
        "pickle_weights": ([ok, "features.n=4", f"model.weights={tmp / 'evil_weights.pt'}"],
                           "evil_weights.pt: it holds Python objects other than tensors"),
        "complex": ([str(tmp / "complex.npy")], "complex.npy: holds complex values "
                    "(torch.complex128); images and parameters are real numbers"),
        "n_and_indices": ([ok, "features.indices=[0,1]", "features.n=3"],
                          "give features.n or features.indices, not both: features.indices="
                          "[0, 1] selects 2 features, features.n=3 would go unused"),
    }


CASES = ["shape", "range", "unreadable", "missing", "format", "key", "value", "negative_k",
         "infinite_k", "top", "input", "features", "n_f", "dim", "weights", "none", "out",
         "critical_dim", "out_folder", "out_link", "out_device", "out_stdout", "repeated",
         "channels", "no_critical", "pickle_image", "pickle_weights", "complex",
         "n_and_indices"]


@pytest.mark.parametrize("case", CASES)
def test_cli_user_errors_are_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bad input is refused in one line before the network is loaded (weights: as it
    is loaded), and nothing it pointed at changes: no output, the link and its target, the
    folder, no payload run."""
    monkeypatch.chdir(tmp_path)
    args, expect = _bad_inputs(tmp_path)[case]
    if case != "pickle_weights":
        monkeypatch.setattr(Setting, "network", _no_network)
    indices = case in ("repeated", "n_and_indices")  # features.n beside them: a mistake
    extra = [] if case in ("weights", "pickle_weights") else RANDOM[:1] if indices else RANDOM
    assert main(["invert", *args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifv: error:") and "\n" not in err and "Traceback" not in err
    assert expect in err, err
    assert "weights_only=False" not in err
    assert not (tmp_path / "ifv-invert.json").exists()
    assert (tmp_path / "link.json").is_symlink()
    assert (tmp_path / "target.json").read_text() == "keep"
    assert (tmp_path / "folder").is_dir() and not list((tmp_path / "folder").iterdir())
    assert not (tmp_path / "MARKER").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _no_network(*_: object, **__: object) -> None:
    raise AssertionError("the network was loaded before the bad input was refused")


def test_weights_are_read_as_tensors_only(tmp_path: Path) -> None:
    """A .pt whose unpickling would run code is refused in one line that does not suggest
    weights_only=False, and its code never runs; a damaged file is refused the same way."""
    from ifv.zoo.registry import read_state_dict

    marker = tmp_path / "MARKER"
    with pytest.raises(UserError) as err:
        read_state_dict(evil_pt(tmp_path / "w.pt", marker, obj={}), "replace it")
    text = str(err.value)
    assert text == (f"cannot read weights {tmp_path / 'w.pt'}: it holds Python objects other "
                    "than tensors, which ifv does not unpickle; replace it")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError) as err:
        read_state_dict(tmp_path / "junk.pt", "replace it")
    assert "not a readable torch.save file" in str(err.value)
    for msg in (text, str(err.value)):
        assert "weights_only" not in msg and "\n" not in msg
    assert not marker.exists()


def test_top_level_api() -> None:
    assert ifv.__all__ == ["Comparison", "FVSettings", "Inversion", "Setting", "compare", "invert",
                           "visualize"]
    from ifv.math import inverse

    assert not hasattr(inverse, "invert")  # end to end lives in ifv.faces.api alone
    assert callable(realize) and callable(response_and_gram) and callable(solve)
