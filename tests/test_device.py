"""The device setting: validation, every stage on the run's device, the same start on every
device, the Jacobian's method and memory chunks per device. Tests marked ``cuda`` run only
where CUDA is present (``benchmarks/gpu_check.sh`` runs them on a GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from skimage.metrics import structural_similarity

from ifv.device import devices, resolve, to
from ifv.errors import UserError
from ifv.faces import api
from ifv.faces.config import compose
from ifv.math.jacobian import (
    cotangent_chunk,
    jacobian,
    pick,
    response_and_gram,
    saved_bytes,
)
from ifv.math.metrics import ssim
from ifv.math.objective import Response
from ifv.math.param import RGB
from ifv.run.pipeline import run
from ifv.run.setting import Experiment, Setting
from ifv.run.store import StageCache

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]
TINY = ["model.weights=random", "features.n=4", "sampling.n_total=4", "fv.adam_steps=3",
        "fv.lbfgs_steps=3", "reopt.steps=2", "progress=false", "figures=false"]


def test_resolve_checks_the_device_against_this_machine() -> None:
    assert resolve("cpu") == torch.device("cpu")
    assert resolve("auto") == (torch.device("cuda", 0) if CUDA else torch.device("cpu"))
    for bad, msg in (("tpu", "unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"),
                     ("cuda:x", "unknown device 'cuda:x'"), (3, "device must be one of")):
        with pytest.raises(UserError, match=msg):
            resolve(bad)
    if CUDA:
        n = torch.cuda.device_count()
        assert resolve(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
        with pytest.raises(UserError, match=f"has {n} CUDA device"):
            resolve(f"cuda:{n}")
    else:
        with pytest.raises(UserError, match="device cuda: .*; valid here: auto, cpu"):
            resolve("cuda")


def test_to_and_devices_walk_nested_outputs() -> None:
    out = {"a": torch.zeros(2), "b": [torch.ones(1), (torch.eye(2), 3.0)], "c": "x"}
    moved = to(out, "cpu")
    assert devices(moved) == {torch.device("cpu")} and moved["c"] == "x"
    assert moved["b"][1][1] == 3.0 and isinstance(moved["b"][1], tuple)
    assert devices({"n": 1, "s": []}) == set()


def test_a_module_stays_on_its_own_device(small_cnn: torch.nn.Module) -> None:
    s = Setting.make(small_cnn, "conv2", 3, size=(8, 8))
    assert s.device == torch.device("cpu")
    if not CUDA:
        with pytest.raises(UserError, match="valid here: auto, cpu"):
            Setting.make(small_cnn, "conv2", 3, size=(8, 8), device="cuda")
    else:
        with pytest.raises(UserError, match="the model is on cpu, not on device cuda"):
            Setting.make(small_cnn, "conv2", 3, size=(8, 8), device="cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_initial_parameters_are_drawn_on_the_cpu(device: str) -> None:
    s = Setting.make("densenet_patterns", features=4, weights="random", device=device)
    bound = s.bind(progress=False)
    v = bound.init(3, torch.Generator().manual_seed(5))
    expected = RGB(32, 32).init(3, torch.Generator().manual_seed(5))
    assert v.device.type == device and v.dtype == torch.float32
    torch.testing.assert_close(v.cpu(), expected, rtol=0, atol=0)
    assert next(bound.network.parameters()).device.type == device


def test_auto_picks_the_loop_on_the_cpu_and_vmap_on_cuda() -> None:
    assert pick("auto", torch.device("cpu")) == "loop"
    assert pick("auto", torch.device("cuda", 0)) == "vmap"
    assert pick("batched", torch.device("cuda", 0)) == "batched"
    with pytest.raises(ValueError, match="valid: auto, loop, batched, vmap"):
        pick("fast", torch.device("cpu"))


def test_saved_bytes_counts_what_autograd_keeps() -> None:
    v = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    assert saved_bytes(lambda t: torch.sin(t).flatten(1)[:, :2], v) == v.numel() * 8  # sin: x
    assert saved_bytes(lambda t: t.flatten(1)[:, :2] * 2.0, v) == 0  # a scalar factor: none


@pytest.mark.parametrize(("n_f", "samples", "per", "budget", "want"), [
    (512, 1, 100, 10_000, 100), (512, 4, 100, 10_000, 25), (8, 1, 100, 10_000, 8),
    (512, 10, 100, 50, 1)])
def test_cotangent_chunks_fit_the_budget(n_f: int, samples: int, per: int, budget: int,
                                         want: int) -> None:
    c = cotangent_chunk(n_f, samples, per, budget)
    assert c == want and 1 <= c <= n_f
    assert c == 1 or c * samples * per <= budget


@pytest.mark.parametrize("method", ["vmap", "batched"])
def test_chunked_cotangents_give_the_loops_jacobian(small_cnn: torch.nn.Module,
                                                    method: str) -> None:
    fn = Response(small_cnn, torch.sigmoid, "conv2", [0, 2, 3, 5])
    v = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y0, dy0 = jacobian(fn, v, method="loop")
    for c in (1, 3, None):
        y, dy = jacobian(fn, v, method=method, cotangents=c)
        torch.testing.assert_close(dy, dy0, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(y, y0, rtol=1e-12, atol=0)


def test_a_small_budget_splits_the_cotangents(small_cnn: torch.nn.Module,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import ifv.math.jacobian as jac

    fn = Response(small_cnn, torch.sigmoid, "conv2", [0, 1, 2, 3, 4, 5])
    v = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y0, g0 = response_and_gram(fn, v, method="loop")
    seen: list[int | None] = []
    real = jac.jacobian

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(kw.get("cotangents"))
        return real(*args, **kw)

    monkeypatch.setattr(jac, "jacobian", spy)
    per = saved_bytes(fn, v[:1])
    budget = 2 * per  # Dy of a sample fits; the chunk's samples leave room for one cotangent
    y, g = response_and_gram(fn, v, method="vmap", max_bytes=budget)
    assert seen and all(c == 1 for c in seen)
    torch.testing.assert_close(g, g0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y, y0, rtol=0, atol=0)


def test_ssim_is_skimages_on_the_images_device() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 3, 32, 32), (2, 4, 16, 20), (2, 3, 5, 6), (1, 1, 4, 4)]:
        a = torch.rand(shape, generator=g)
        b = (a + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)
        side = min(shape[-2:])
        win = 7 if side >= 7 else (side if side % 2 else side - 1)
        ref = [structural_similarity(x.permute(1, 2, 0).double().numpy(),
                                     y.permute(1, 2, 0).double().numpy(), channel_axis=-1,
                                     data_range=1.0, win_size=win)
               for x, y in zip(a, b, strict=True)]
        torch.testing.assert_close(ssim(a, b), torch.tensor(ref, dtype=torch.float64),
                                   rtol=0, atol=1e-12)


def _stage_devices(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[torch.device]]:
    """Records the devices of the tensors each stage computes (before they are stored)."""
    seen: dict[str, set[torch.device]] = {}
    real = StageCache.get_or_compute

    def spy(self: StageCache, stage: str, version: int, key: dict[str, Any], compute: Any,
            ) -> dict[str, Any]:
        def recorded(parts: Any) -> dict[str, Any]:
            out = compute(parts)
            seen[stage] = devices(out)
            return out

        return real(self, stage, version, key, recorded)

    monkeypatch.setattr(StageCache, "get_or_compute", spy)
    return seen


@pytest.mark.parametrize("device", DEVICES)
def test_every_stage_runs_on_the_run_device(device: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _stage_devices(monkeypatch)
    exp = Experiment.from_config(compose([*TINY, f"device={device}"]))
    df = run(exp, tmp_path / "out", stage_cache=tmp_path / "stages", progress=False,
             figures=False, log=lambda _: None)
    assert set(seen) == {"realizations", "jacobian", "reopt"}
    for stage, where in seen.items():
        assert {d.type for d in where} == {device}, stage
    assert len(df) == 4 and df.angle_pred.notna().all()
    # the entries hold host tensors: a cache made on a GPU reads on any machine
    for entry in (tmp_path / "stages").rglob("*.pt"):
        obj = StageCache(tmp_path / "stages").read(entry, "check")
        assert devices(obj) <= {torch.device("cpu")}


@cuda
def test_a_gpu_run_is_close_to_the_same_run_on_the_cpu(tmp_path: Path) -> None:
    args = ["model.weights=random", "features.n=8", "sampling.n_total=8", "fv.adam_steps=30",
            "fv.lbfgs_steps=30", "reopt.steps=5", "progress=false", "figures=false"]
    frames = {}
    for device in ("cpu", "cuda"):
        exp = Experiment.from_config(compose([*args, f"device={device}"]))
        frames[device] = run(exp, tmp_path / device, stage_cache=tmp_path / "stages",
                             progress=False, figures=False, log=lambda _: None)
    cpu, gpu = frames["cpu"], frames["cuda"]
    pd.testing.assert_series_equal(cpu.angle_random, gpu.angle_random)  # the same draws
    pd.testing.assert_series_equal(cpu.hoyer, gpu.hoyer)
    assert abs(cpu.angle_pred.median() - gpu.angle_pred.median()) < 5.0
    assert abs(cpu.ssim_pred.median() - gpu.ssim_pred.median()) < 0.05


@cuda
def test_invert_and_visualize_on_cuda() -> None:
    x = torch.eye(4, dtype=torch.float64)[:2]
    from ifv.math.fv import FVSettings

    images = api.visualize(x, features=4, weights="random", device="cuda",
                           settings=FVSettings(adam_steps=5, lbfgs_steps=5), progress=False)
    assert images.device.type == "cpu"
    inv = api.invert(images, features=4, weights="random", device="cuda", progress=False)
    assert inv.x_pred.device.type == "cpu" and inv.settings["device"].startswith("cuda")
