"""The stage chain of one experiment, with its cache (design.md, "Stages and their cache").

targets -> realizations -> (y, G) -> predictions -> metrics -> re-optimization/SSIM
-> results.parquet

Each expensive stage's output is keyed by a hash of exactly the configuration it depends on
(plus a stage version) and written atomically, so a sweep over k recomputes from the
realizations on, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ifv.critical import CriticalSpace, best_space, complement, critical_space, rho_search
from ifv.errors import UserError
from ifv.fv import FVSettings, adam, visualize
from ifv.inverse import full_space, solve, unit
from ifv.jacobian import METHODS, response_and_gram
from ifv.metrics import (
    alpha_coefficients,
    angular_distance,
    critical_fraction,
    projected_angle,
    random_objective,
    relative_residual,
    ssim,
)
from ifv.models import check_layer, get_spec, load
from ifv.models.registry import ModelSpec
from ifv.objective import AGGREGATIONS, Response
from ifv.param import make_param
from ifv.sampling import hoyer, sample_targets
from ifv.store import atomic_write, content_key, default_cache_dir

STAGE_VERSION = {"realizations": 1, "jacobian": 1, "reopt": 2}
# realizations kept as images (images.npz) for Fig. 4 and the difference maps of Fig. S2
N_IMAGES = 16


@dataclass(frozen=True)
class Experiment:
    """Everything one run depends on, as plain values (the Hydra config, validated)."""

    name: str
    model: str
    layer: str
    features: tuple[int, ...]
    aggregation: str
    k: float
    param: dict[str, Any]
    n_random: int
    n_canonical: int
    fv: FVSettings
    reopt_steps: int
    reopt_lr: float
    reopt_batch: int
    stable_ssim: float
    seed: int
    weights: str | None = None
    model_cache: str | None = None
    download: bool = False  # model.download: fetch pretrained weights missing from the hub cache
    train_overrides: tuple[tuple[str, Any], ...] = ()
    jacobian_method: str = "loop"
    jacobian_max_bytes: int = 1 << 30
    critical_search: bool = False
    critical_n: int = 32
    critical_order: str = "sequential"
    critical_rho: float | None = None

    @property
    def n_f(self) -> int:
        return len(self.features)

    def spec(self) -> ModelSpec:
        return get_spec(self.model).with_recipe(**dict(self.train_overrides))


def from_config(cfg: Any) -> Experiment:
    """Validate a composed config (OmegaConf or nested dict) into an ``Experiment``."""
    def get(path: str, default: Any = None) -> Any:
        node = cfg
        for part in path.split("."):
            node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                return default
        return node

    spec = get_spec(str(get("model.name")))
    spec = spec.with_recipe(**dict(get("model.train", {}) or {}))
    layer = str(get("layer"))
    indices = get("features.indices")
    n = get("features.n")
    if indices is not None:
        selection: list[int] | int = [int(i) for i in indices]
    elif n == "all":  # every channel of the layer (e.g. the 342 filters of dense3)
        selection = spec.layers.get(layer, 1)  # an unknown layer fails in check_layer
    elif isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        selection = n
    else:
        raise UserError(f"features.n must be a positive integer or all, got {n!r}")
    features = check_layer(spec, layer, selection)
    aggregation = str(get("aggregation.name"))
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    k = get("k")
    if not isinstance(k, int | float) or k < 0:
        raise UserError(f"k must be a number >= 0, got {k!r}")
    method = str(get("jacobian.method", "loop"))
    if method not in METHODS:
        raise UserError(f"unknown jacobian.method {method!r}; valid: {', '.join(METHODS)}")
    counts = {p: get(p) for p in ("sampling.n_total", "fv.adam_steps", "fv.lbfgs_steps",
                                  "fv.batch_size", "reopt.steps", "reopt.batch_size")}
    for key, val in counts.items():
        if not isinstance(val, int) or val < 0:
            raise UserError(f"{key} must be an integer >= 0, got {val!r}")
    n_total = counts["sampling.n_total"]
    n_canonical = _n_canonical(get("sampling.canonical", "half"), n_total, len(features))
    fv = FVSettings(adam_steps=counts["fv.adam_steps"], adam_lr=float(get("fv.adam_lr")),
                    lbfgs_steps=counts["fv.lbfgs_steps"], history=int(get("fv.history")),
                    tol=float(get("fv.tol")), batch_size=max(1, counts["fv.batch_size"]))
    return Experiment(
        name=str(get("name")), model=spec.name, layer=layer, features=tuple(features),
        aggregation=aggregation, k=float(k), param=dict(get("param")),
        n_random=n_total - n_canonical, n_canonical=n_canonical,
        fv=fv, reopt_steps=counts["reopt.steps"], reopt_lr=float(get("reopt.lr")),
        reopt_batch=max(1, counts["reopt.batch_size"]),
        stable_ssim=float(get("reopt.stable_ssim", 0.7)), seed=int(get("seed", 0)),
        weights=get("model.weights"), model_cache=get("model.cache_dir"),
        download=bool(get("model.download", False)),
        train_overrides=tuple(sorted(dict(get("model.train", {}) or {}).items())),
        jacobian_method=method, jacobian_max_bytes=int(get("jacobian.max_bytes", 1 << 30)),
        **_critical_options(get),
    )


def _critical_options(get: Callable[..., Any]) -> dict[str, Any]:
    """The ``critical`` group: Algorithm 1 on the first n Jacobians, rho search or fixed rho."""
    search = bool(get("critical.search", False))
    n = get("critical.n_jacobians", 32)
    if not isinstance(n, int) or n < 2:
        raise UserError(f"critical.n_jacobians must be an integer >= 2, got {n!r}")
    rho = get("critical.rho")
    if rho is not None and not (isinstance(rho, int | float) and 0 < rho < 1):
        raise UserError(f"critical.rho must be in (0, 1) or null (search), got {rho!r}")
    order = str(get("critical.order", "sequential"))
    if order not in ("sequential", "pairwise") and not order.startswith("random:"):
        raise UserError(f"unknown critical.order {order!r}; valid: sequential, pairwise, "
                        "random:SEED")
    return {"critical_search": search, "critical_n": n, "critical_order": order,
            "critical_rho": None if rho is None else float(rho)}


def _n_canonical(canonical: Any, n_total: int, n_f: int) -> int:
    """Canonical targets among ``n_total``: ``half``, ``all`` (each e_i once) or a number."""
    if n_total < 1:
        raise UserError(f"sampling.n_total must be >= 1, got {n_total}")
    if canonical == "half":
        return n_total // 2
    if canonical == "all":
        n = n_f
    elif isinstance(canonical, int) and not isinstance(canonical, bool) and canonical >= 0:
        n = canonical
    else:
        raise UserError(f"sampling.canonical must be half, all or a number >= 0, got "
                        f"{canonical!r}")
    if n > n_total:
        raise UserError(f"{n} canonical targets do not fit in sampling.n_total={n_total}")
    return n


class StageCache:
    """Stage outputs as .pt files named by a hash of the config each stage depends on."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir() / "stages"

    def get_or_compute(self, stage: str, key: dict[str, Any],
                       compute: Callable[[], dict[str, Any]], log: Callable[[str], None],
                       ) -> dict[str, Any]:
        path = self.root / stage / f"{content_key({'v': STAGE_VERSION[stage], **key})}.pt"
        if path.exists():
            log(f"{stage}: cached ({path})")
            return torch.load(path, weights_only=True)
        out = compute()
        atomic_write(path, lambda p: torch.save(out, p))
        return out


def _model_key(exp: Experiment, spec: ModelSpec) -> dict[str, Any]:
    weights = exp.weights
    if weights and weights != "random":
        stat = Path(weights).expanduser().stat()
        weights = f"{Path(weights).expanduser().resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return {"model": spec.name, "key": spec.key(), "weights": weights}


def ensure_model(exp: Experiment, log: Callable[[str], None], progress: bool) -> Any:
    """The network, trained first if it is an offline model missing from the cache.

    Paper-tier weights are never made here: ``load`` says what to place where (or downloads
    pretrained ones when ``model.download=true``).
    """
    spec = exp.spec()
    if (exp.weights is None and spec.tier == "offline"
            and not spec.checkpoint(exp.model_cache).exists()):
        from ifv.train import train

        log(f"model {spec.name} is not in the model cache: training it (once)")
        rec = train(spec, exp.model_cache, progress=progress)
        log(f"trained {spec.name} in {rec['train_seconds']:.0f} s -> {rec['checkpoint']}")
    return load(spec, weights=exp.weights, cache_dir=exp.model_cache, download=exp.download)


def reoptimize(response: Response, v: Tensor, objectives: dict[str, Tensor], k: float,
               steps: int, lr: float, batch: int, progress: bool) -> dict[str, Tensor]:
    """Re-optimize every realization w.r.t. each objective with Adam (Sec. 3.4).

    Returns the re-optimized parameters per objective, each (N, *shape).
    """
    names = list(objectives)
    x_all = torch.cat([objectives[n].to(v.dtype) for n in names])
    v_all = v.repeat(len(names), *([1] * (v.dim() - 1)))
    nb = -(-len(x_all) // batch)
    bar = tqdm(total=nb * steps, desc="re-opt", disable=not progress, unit="step", leave=False)
    out = torch.cat([adam(response, v_all[i:i + batch], x_all[i:i + batch], k, steps, lr, bar)
                     for i in range(0, len(x_all), batch)])
    bar.close()
    return dict(zip(names, out.split(len(v)), strict=True))


def run(exp: Experiment, out_dir: str | Path, *, stage_cache: str | Path | None = None,
        progress: bool = True, figures: bool = True,
        log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run one experiment; writes results.parquet, critical.parquet and images.npz into
    ``out_dir``, and with ``figures`` the run's PNGs."""
    out_dir = Path(out_dir)
    cache = StageCache(stage_cache)
    spec = exp.spec()
    model = ensure_model(exp, log, progress)
    h, w = spec.input_size
    param = make_param(exp.param["name"], h, w,
                       **{k: v for k, v in exp.param.items() if k != "name"})
    response = Response(model, param, exp.layer, exp.features, exp.aggregation)

    # targets (Supp. S2): cheap and deterministic, recomputed
    x, canonical = sample_targets(exp.n_random, exp.n_canonical, exp.n_f, exp.seed)
    n = len(x)
    log(f"{exp.name}: {spec.name}.{exp.layer}, n_f={exp.n_f}, {exp.aggregation}, k={exp.k:g}, "
        f"P_{exp.param['name']}, {n} targets ({int(canonical.sum())} canonical)")

    real_key = {"model": _model_key(exp, spec), "layer": exp.layer, "features": exp.features,
                "aggregation": exp.aggregation, "k": exp.k, "param": exp.param,
                "targets": [exp.n_random, exp.n_canonical, exp.seed], "fv": asdict(exp.fv)}

    def realize() -> dict[str, Any]:
        r = visualize(response, param.init, x, exp.k, exp.fv, seed=exp.seed, progress=progress,
                      desc="FV realizations")
        return {"v": r.v, "loss": r.loss, "grad_norm": r.grad_norm, "iters": r.iters,
                "seconds": r.seconds}

    real = cache.get_or_compute("realizations", real_key, realize, log)
    v = real["v"]

    def jac() -> dict[str, Any]:
        t0 = time.perf_counter()
        y, gram = response_and_gram(response, v, method=exp.jacobian_method,
                                    max_bytes=exp.jacobian_max_bytes, progress=progress)
        return {"y": y, "gram": gram, "seconds": time.perf_counter() - t0}

    jac_out = cache.get_or_compute("jacobian", {"realizations": real_key}, jac, log)
    y, gram = jac_out["y"], jac_out["gram"]

    spaces = critical_candidates(exp, gram, log)
    t0 = time.perf_counter()
    preds = [solve(y, gram, exp.k, sp.basis)[0] for sp in spaces]
    t_pred = (time.perf_counter() - t0) / len(spaces)
    g = torch.Generator().manual_seed(exp.seed + 1)
    x_rand = random_objective(n, exp.n_f, g)
    objectives = {"target": x, "response": unit(y), "random": x_rand,
                  **{f"pred{i}": p for i, p in enumerate(preds)}}

    reopt_key = {"realizations": real_key, "steps": exp.reopt_steps, "lr": exp.reopt_lr,
                 "batch": exp.reopt_batch, "random_seed": exp.seed + 1,
                 "preds": content_key([p.numpy().round(10).tolist() for p in preds])}

    def reopt() -> dict[str, Any]:
        t0 = time.perf_counter()
        moved = reoptimize(response, v, objectives, exp.k, exp.reopt_steps, exp.reopt_lr,
                           exp.reopt_batch, progress)
        before = param.render(v)
        after = {o: param.render(moved[o]) for o in objectives}
        scores = {f"ssim_{o}": ssim(before, after[o]) for o in objectives}
        keep = {f"after_{o}": a[:N_IMAGES].half() for o, a in after.items()}
        return {**scores, **keep, "seconds": time.perf_counter() - t0}

    re = cache.get_or_compute("reopt", reopt_key, reopt, log)

    common = {
        "experiment": exp.name,
        "model": spec.name,
        "tier": spec.tier,
        "stand_in": spec.tier == "offline",
        "layer": exp.layer,
        "n_features": exp.n_f,
        "aggregation": exp.aggregation,
        "k": exp.k,
        "param": exp.param["name"],
        "seed": exp.seed,
        "n_p": param.n_p,
        "sample": np.arange(n),
        "canonical": canonical.numpy(),
        "hoyer": hoyer(x).numpy(),
    }
    per_sample = {
        "angle_response": angular_distance(x, y).numpy(),
        "angle_random": angular_distance(x, x_rand).numpy(),
        "alpha": list(alpha_coefficients(x, y, gram, exp.k).numpy()),
        "ssim_target": re["ssim_target"].numpy(),
        "ssim_response": re["ssim_response"].numpy(),
        "ssim_random": re["ssim_random"].numpy(),
        "stable": (re["ssim_target"] >= exp.stable_ssim).numpy(),
        "rel_residual": relative_residual(x, y, gram, exp.k).numpy(),
        "grad_norm": real["grad_norm"].double().numpy(),
        "lbfgs_iters": real["iters"].numpy(),
        "t_fv": real["seconds"] / n,
        "t_jacobian": jac_out["seconds"] / n,
        "t_predict": t_pred / n,
        "t_reopt": re["seconds"] / n,
        "target": list(x.numpy()),
        "response": list(y.numpy()),
    }
    frames = []
    for i, (sp, x_pred) in enumerate(zip(spaces, preds, strict=True)):
        frames.append(pd.DataFrame({
            **common,
            "critical_dim": sp.dim,
            "rho_min": sp.rho_min,
            "rho_max": sp.rho_max,
            "angle_pred": projected_angle(x, x_pred, y, exp.k, sp.basis).numpy(),
            "crit_fraction": critical_fraction(x, y, exp.k, sp.basis).numpy(),
            "ssim_pred": re[f"ssim_pred{i}"].numpy(),
            **per_sample,
            "prediction": list(x_pred.numpy()),
        }))
    df = pd.concat(frames, ignore_index=True)
    best = best_space({sp.dim: torch.tensor(f.angle_pred.to_numpy())
                       for sp, f in zip(spaces, frames, strict=True)})
    df["best_space"] = df.critical_dim == best
    crit = pd.DataFrame({
        "experiment": exp.name,
        "critical_dim": [sp.dim for sp in spaces],
        "rho_min": [sp.rho_min for sp in spaces],
        "rho_max": [sp.rho_max for sp in spaces],
        "complement": [list(sp.complement.T.numpy()) for sp in spaces],
        "median_angle_pred": [float(np.median(f.angle_pred)) for f in frames],
        "best": [sp.dim == best for sp in spaces],
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "results.parquet", lambda p: df.to_parquet(p, index=False))
    atomic_write(out_dir / "critical.parquet", lambda p: crit.to_parquet(p, index=False))
    best_i = next(i for i, sp in enumerate(spaces) if sp.dim == best)
    images = {"before": param.render(v[:N_IMAGES]).half(),
              **{f"after_{o}": re[f"after_{o}"] for o in ("target", "response", "random")},
              "after_pred": re[f"after_pred{best_i}"]}
    atomic_write(out_dir / "images.npz", lambda p: _save_images(p, images, x[:N_IMAGES]))
    if figures:
        _figures(df, param.render(v), canonical, x, out_dir)
    return df


def _save_images(path: Path, images: dict[str, Tensor], targets: Tensor) -> None:
    """images.npz: rendered realizations of the first samples (``before``, (n, C, H, W) in
    [0, 1], float16) and the same after re-optimization w.r.t. each objective (``after_*``),
    with their ``targets`` (n, n_f)."""
    with open(path, "wb") as f:
        np.savez_compressed(f, targets=targets.numpy(),
                            **{k: v.float().numpy().astype(np.float16) for k, v in images.items()})


def critical_candidates(exp: Experiment, gram: Tensor, log: Callable[[str], None],
                        ) -> list[CriticalSpace]:
    """C = R^{n_f} and, with ``critical.search``, every space Algorithm 1 finds (Sec. 3.5)."""
    eye = full_space(exp.n_f)
    spaces = [CriticalSpace(dim=exp.n_f, rho_min=float("nan"), rho_max=float("nan"),
                            basis=eye, complement=eye[:, :0])]
    if not exp.critical_search:
        return spaces
    sub = gram[:exp.critical_n]
    if exp.critical_rho is not None:
        basis = critical_space(sub, exp.critical_rho, order=exp.critical_order)
        found = [CriticalSpace(dim=basis.shape[1], rho_min=exp.critical_rho,
                               rho_max=exp.critical_rho, basis=basis,
                               complement=complement(basis))]
    else:
        found = rho_search(sub, order=exp.critical_order)
    for sp in found:
        if sp.dim < exp.n_f:
            spaces.append(sp)
            log(f"critical space: dim {sp.dim} for rho in [{sp.rho_min:.3g}, {sp.rho_max:.3g}]")
    return spaces


def _figures(df: pd.DataFrame, images: Tensor, canonical: Tensor, x: Tensor, out: Path) -> None:
    from ifv.plots import alpha_bars, angle_ssim, realizations_grid, ssim_kde

    if df.critical_dim.nunique() > 1:
        pred_only = df.drop(columns=["ssim_target", "ssim_response", "ssim_random"])
        angle_ssim(pred_only, out / "angle_ssim_spaces.png", group="critical_dim",
                   title=f"{df.experiment.iloc[0]}: predictions per critical space")
    df = df[df.best_space].reset_index(drop=True)
    titles = [f"e_{int(xi.argmax())}" if c else f"h={float(hv):.2f}"
              for xi, c, hv in zip(x, canonical, df["hoyer"], strict=True)]
    realizations_grid(images, out / "realizations.png", titles=titles)
    title = f"{df.experiment.iloc[0]}: {df.model.iloc[0]}.{df.layer.iloc[0]}, k={df.k.iloc[0]:g}"
    angle_ssim(df, out / "angle_ssim.png", title=title)
    alpha_bars(np.stack(df["alpha"].to_numpy()).mean(0), out / "alpha.png", title=title)
    ssim_kde(df, out / "ssim_kde.png", title=title)


def summary(df: pd.DataFrame) -> str:
    """A few lines: median angles and SSIMs (Sec. 3.4), per critical space where several."""
    lines = []
    if df.critical_dim.nunique() > 1:
        for dim, sub in df.groupby("critical_dim", sort=False):
            lines.append(f"critical space dim {dim}: median angle {sub.angle_pred.median():.1f} "
                         f"deg, median SSIM {sub.ssim_pred.median():.3f}"
                         + ("  <- best" if sub.best_space.iloc[0] else ""))
    df = df[df.best_space]
    med = df.median(numeric_only=True)
    can, rnd = df[df.canonical], df[~df.canonical]
    lines += [
        f"samples: {len(df)} ({int(df.canonical.sum())} canonical), "
        f"stable: {int(df.stable.sum())}",
        f"median angle to target [deg]: predicted {med.angle_pred:.1f} "
        f"(canonical {can.angle_pred.median():.1f}, sampled {rnd.angle_pred.median():.1f}), "
        f"response {med.angle_response:.1f}, random {med.angle_random:.1f}",
        f"median SSIM after re-optimization: target {med.ssim_target:.3f}, "
        f"predicted {med.ssim_pred:.3f}, response {med.ssim_response:.3f}, "
        f"random {med.ssim_random:.3f}",
        f"median relative residual ||x^T Z Dy||/||Z Dy||: {med.rel_residual:.2e}",
    ]
    return "\n".join(lines)
