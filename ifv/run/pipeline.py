"""One ``ifv run``: the stages of ``ifv.run.stages`` in order, with the run's cache keys,
then the tables and figures.

targets -> realize -> grams (y, G_T) -> critical spaces -> predictions -> robust solver
(with transforms or a prior) -> reoptimize/SSIM -> results.parquet, critical.parquet,
images.npz

Each cached stage is keyed by exactly the configuration it depends on, so a sweep over k
recomputes from the realizations on, and a rerun reuses what is done. The tables' columns
are ``ifv.run.results``'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ifv.device import float32_precision, precision_key, synchronize, to
from ifv.files import atomic_write, check_outputs, check_writable, content_key
from ifv.math.critical import CriticalSpace, complement, critical_space, rho_search
from ifv.math.inverse import full_space, solve, unit
from ifv.math.kink import solve_at_kinks
from ifv.math.metrics import (
    alpha_coefficients,
    angular_distance,
    critical_fraction,
    projected_angle,
    random_objective,
    relative_residual,
)
from ifv.math.sampling import hoyer, sample_targets
from ifv.math.transform import describe
from ifv.run.results import critical_frame, results_frame
from ifv.run.setting import Experiment
from ifv.run.stages import N_IMAGES, Chain, kinks_key
from ifv.run.store import StageCache

TABLES = ("results.parquet", "critical.parquet", "images.npz")


def outputs(figures: bool = True) -> tuple[str, ...]:
    """The files a run writes into its folder (with ``figures``, its PNGs too)."""
    if not figures:
        return TABLES
    from ifv.run.plots import RUN_FIGURES

    return TABLES + RUN_FIGURES


def run(exp: Experiment, out_dir: str | Path, *, stage_cache: str | Path | None = None,
        progress: bool = True, figures: bool = True,
        log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run one experiment; writes results.parquet, critical.parquet and images.npz into
    ``out_dir``, and with ``figures`` the run's PNGs. Returns results.parquet's frame.

    Every stage runs on the setting's device, with its float32 precision; targets, initial
    parameters and random objectives are drawn on the CPU and moved there."""
    with float32_precision(exp.setting.tf32):
        return _run(exp, Path(out_dir), stage_cache, progress, figures, log)


def _run(exp: Experiment, out_dir: Path, stage_cache: str | Path | None, progress: bool,
         figures: bool, log: Callable[[str], None]) -> pd.DataFrame:
    cache = StageCache(stage_cache, log)
    check_outputs(out_dir, outputs(figures), "the run's output folder")
    check_writable(cache.root, "stage_cache")
    s = exp.setting
    assert s.spec is not None
    bound = s.bind(progress=progress, log=log)
    model_key = s.model_key()  # the weights' content: read once they are in place
    chain = Chain(bound, cache, progress, log)
    param, features, dev = bound.param, bound.features, bound.device

    # targets (Supp. S2): cheap and deterministic, drawn on the CPU and recomputed
    x_host, canonical = sample_targets(exp.n_random, exp.n_canonical, bound.n_f, exp.seed)
    x = x_host.to(dev)
    n = len(x)
    log(f"{exp.name}: {s.spec.name}.{s.layer}, n_f={bound.n_f}, {s.aggregation}, k={s.k:g}, "
        f"P_{s.param['name']}, {n} targets ({int(canonical.sum())} canonical), on {dev}")
    real_key = {"model": model_key, "layer": s.layer, "features": features,
                "aggregation": s.aggregation, "k": s.k, "param": s.param,
                "targets": [exp.n_random, exp.n_canonical, exp.seed], **bound.fv_key(exp.fv),
                "device": dev.type, "precision": precision_key(dev, s.tf32)}
    real = chain.realize(x, exp.fv, exp.seed, key=real_key)
    v = real["v"]
    jac = chain.grams(v, exp.kinks, method=exp.jacobian_method,
                      max_bytes=exp.jacobian_max_bytes, batch=exp.jacobian_batch,
                      key={"realizations": real_key, **kinks_key(exp.kinks)})
    finite = (torch.isfinite(v.flatten(1)).all(1) & torch.isfinite(jac["y"]).all(1)
              & torch.isfinite(jac["gram"].flatten(1)).all(1))
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        log(f"warning: {len(bad)} of {n} samples have non-finite FV or Jacobian values "
            f"(samples {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}): "
            "flagged finite=false in results.parquet and left out of the medians")
    # the algebra below runs on finite stand-ins for those samples; their results are NaN
    y = torch.where(finite[:, None], jac["y"], torch.ones_like(jac["y"]))
    gram = torch.where(finite[:, None, None], jac["gram"],
                       torch.eye(bound.n_f, dtype=jac["gram"].dtype, device=dev))
    plain_gram = torch.where(finite[:, None, None], jac["gram_plain"], gram)
    spaces = critical_candidates(exp, gram[finite], log)
    t0 = time.perf_counter()
    preds = [solve_at_kinks(y, gram, s.k, sp.basis, jac["kink_dim"]) for sp in spaces]
    synchronize(dev)
    t_pred = (time.perf_counter() - t0) / len(spaces)
    rob = None
    if bound.robust:
        rb = exp.robust
        draws, n_draws, draw_seed = rb.source(exp.fv, exp.seed)
        rob = chain.robust(v, [sp.basis for sp in spaces], rb, fv=exp.fv, seed=exp.seed,
                           max_bytes=exp.jacobian_max_bytes,
                           key={"realizations": real_key, "draws": draws,
                                "samples": n_draws, "seed": draw_seed,
                                "estimator": rb.estimator, "tol": rb.tol,
                                "max_iter": rb.max_iter, "spaces": content_key(
                                    [sp.basis.cpu().numpy().round(10).tolist()
                                     for sp in spaces])})
    x_rand = random_objective(n, bound.n_f,
                              torch.Generator().manual_seed(exp.seed + 1)).to(dev)
    objectives = {"target": x, "response": unit(jac["y"]), "random": x_rand,
                  **{f"pred{i}": p for i, p in enumerate(preds)}}
    if rob is not None:
        objectives.update({f"robust{i}": p for i, p in enumerate(rob["x"])})
    reopt_key = {"realizations": real_key, "steps": exp.reopt.adam_steps,
                 "lr": exp.reopt.adam_lr, "batch": exp.reopt.batch_size,
                 "random_seed": exp.seed + 1,
                 "preds": content_key([p.cpu().numpy().round(10).tolist() for p in preds])}
    if rob is not None:
        reopt_key["robust"] = content_key(rob["x"].cpu().numpy().round(10).tolist())
    re = chain.reoptimize(v, objectives, exp.reopt, exp.seed, key=reopt_key)
    kink_dim = jac["kink_dim"]

    def host(a: Tensor) -> np.ndarray:
        return a.detach().cpu().numpy()

    def flagged(a: Tensor) -> np.ndarray:
        """``a`` (N, ...) on the host, with NaN for the samples that are not finite."""
        a = a.detach().double().cpu()
        a[~finite.cpu()] = float("nan")
        return a.numpy()

    spec = s.spec
    run_values = {"experiment": exp.name, "model": spec.name, "tier": spec.tier,
                  "stand_in": spec.tier == "offline", "layer": s.layer,
                  "n_channels": bound.n_channels, "n_f": bound.n_f,
                  "aggregation": s.aggregation, "k": s.k, "param": s.param["name"],
                  "seed": exp.seed, "n_p": param.n_p,
                  "transforms": describe(s.transforms), "prior": s.prior["name"],
                  "prior_weight": s.prior["weight"],
                  **exp.robust.record(bound.transform is not None, exp.fv),
                  "kinks_samples": exp.kinks.samples, "kinks_sigma": exp.kinks.sigma,
                  "kinks_rho": exp.kinks.rho}
    samples = {
        "sample": np.arange(n),
        "canonical": canonical.numpy(),
        "hoyer": hoyer(x_host).numpy(),
        "finite": host(finite),
        "angle_response": host(angular_distance(x, jac["y"])),
        "angle_random": host(angular_distance(x, x_rand)),
        "angle_mean_response": host(angular_distance(x, jac["y"] if rob is None
                                                     else rob["y_mean"])),
        "alpha": list(flagged(alpha_coefficients(x, y, gram, s.k))),
        "ssim_target": host(re["ssim_target"]),
        "ssim_response": host(re["ssim_response"]),
        "ssim_random": host(re["ssim_random"]),
        "stable": host(re["ssim_target"] >= exp.stable_ssim),
        "rel_residual": flagged(relative_residual(x, y, gram, s.k)),
        "rel_residual_plain": flagged(relative_residual(x, y, plain_gram, s.k)),
        "kink_dim": host(kink_dim),
        "grad_norm": host(real["grad_norm"].double()),
        "lbfgs_iters": host(real["iters"]),
        "t_fv": float(real["seconds"]) / n,
        "t_jacobian": float(jac["seconds"]) / n,
        "t_predict": t_pred / n,
        "t_reopt": float(re["seconds"]) / n,
        "target": list(x_host.numpy()),
        "response": list(host(jac["y"])),
    }
    per_space = [{"critical_dim": sp.dim, "rho_min": sp.rho_min, "rho_max": sp.rho_max,
                  "angle_pred": flagged(projected_angle(x, x_pred, y, s.k, sp.basis)),
                  "angle_plain": flagged(projected_angle(
                      x, solve(y, plain_gram, s.k, sp.basis)[0], y, s.k, sp.basis)),
                  "crit_fraction": flagged(critical_fraction(x, y, s.k, sp.basis)),
                  "ssim_pred": host(re[f"ssim_pred{i}"]),
                  "prediction": list(flagged(x_pred))}
                 for i, (sp, x_pred) in enumerate(zip(spaces, preds, strict=True))]
    for i, (sp, cols) in enumerate(zip(spaces, per_space, strict=True)):
        if rob is None:  # the robust solver without transforms and prior is plain Grad-IFV
            cols.update(angle_robust=cols["angle_pred"], ssim_robust=cols["ssim_pred"],
                        prediction_robust=cols["prediction"],
                        residual_robust=flagged(relative_residual(preds[i], y, gram, s.k)),
                        converged_robust=np.ones(n, dtype=bool),
                        prior_weight_robust=np.full(n, np.nan))
            continue
        x_rob = rob["x"][i]
        cols.update(angle_robust=flagged(projected_angle(x, x_rob, rob["y_mean"], s.k,
                                                         sp.basis)),
                    ssim_robust=host(re[f"ssim_robust{i}"]),
                    prediction_robust=list(flagged(x_rob)),
                    residual_robust=flagged(rob["residual"][i]),
                    converged_robust=host(rob["converged"][i]),
                    prior_weight_robust=flagged(rob["prior_weight"][i]))
    df = results_frame(run_values, samples, per_space)
    crit = critical_frame(df, {sp.dim: list(host(sp.complement.T)) for sp in spaces})
    best_i = int(np.flatnonzero(crit.best)[0])  # crit's rows are the spaces, in order
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "results.parquet", lambda p: df.to_parquet(p, index=False))
    atomic_write(out_dir / "critical.parquet", lambda p: crit.to_parquet(p, index=False))
    images = to({"before": param.render(v[:N_IMAGES]).half(),
                 **{f"after_{o}": re[f"after_{o}"] for o in ("target", "response", "random")},
                 "after_pred": re[f"after_pred{best_i}"]}, "cpu")
    atomic_write(out_dir / "images.npz", lambda p: _save_images(p, images, x_host[:N_IMAGES]))
    if figures:
        from ifv.run.plots import run_figures

        titles = [f"e_{int(xi.argmax())}" if c else f"h={float(hv):.2f}"
                  for xi, c, hv in zip(x_host, canonical, samples["hoyer"], strict=True)]
        run_figures(df, param.render(v).detach().cpu(), titles, out_dir)
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
    n_f = gram.shape[-1]
    eye = full_space(n_f, gram.device)
    spaces = [CriticalSpace(dim=n_f, rho_min=float("nan"), rho_max=float("nan"),
                            basis=eye, complement=eye[:, :0])]
    c = exp.critical
    if not c.search:
        return spaces
    sub = gram[:c.n_jacobians]
    if c.rho is not None:
        basis = critical_space(sub, c.rho, order=c.order)
        found = [CriticalSpace(dim=basis.shape[1], rho_min=c.rho,
                               rho_max=c.rho, basis=basis,
                               complement=complement(basis))]
    else:
        found = rho_search(sub, order=c.order)
    for sp in found:
        if sp.dim < n_f:
            spaces.append(sp)
            log(f"critical space: dim {sp.dim} for rho in [{sp.rho_min:.3g}, {sp.rho_max:.3g}]")
    return spaces


def summary(df: pd.DataFrame) -> str:
    """A few lines: median angles and SSIMs (Sec. 3.4), per critical space where several;
    samples with non-finite values are left out, with a line that says so."""
    lines = []
    bad = int((~df.loc[df.best_space, "finite"]).sum())
    if bad:
        lines.append(f"warning: {bad} samples with non-finite FV or Jacobian values are left "
                     "out of the medians (finite=false in results.parquet)")
    df = df[df.finite]
    if df.critical_dim.nunique() > 1:
        for dim, sub in df.groupby("critical_dim", sort=False):
            lines.append(f"critical space dim {dim}: median angle {sub.angle_pred.median():.1f} "
                         f"deg, median SSIM {sub.ssim_pred.median():.3f}"
                         + ("  <- best" if sub.best_space.iloc[0] else ""))
    df = df[df.best_space]
    med = df.median(numeric_only=True)
    can, rnd = df[df.canonical], df[~df.canonical]
    stuck = int((df.grad_norm == 0).sum())
    lines += [
        f"samples: {len(df) + bad} ({int(df.canonical.sum())} canonical), "
        f"stable: {int(df.stable.sum())}" + (
            f", FV never moved: {stuck} (zero gradient at the start: the target's features "
            "are off there, and no inversion can recover it)" if stuck else ""),
        f"median angle to target [deg]: predicted {med.angle_pred:.1f} "
        f"(canonical {can.angle_pred.median():.1f}, sampled {rnd.angle_pred.median():.1f}), "
        f"response {med.angle_response:.1f}, random {med.angle_random:.1f}",
        f"median SSIM after re-optimization: target {med.ssim_target:.3f}, "
        f"predicted {med.ssim_pred:.3f}, response {med.ssim_response:.3f}, "
        f"random {med.ssim_random:.3f}",
        f"median relative residual ||x^T Z Dy||/||Z Dy||: {med.rel_residual:.2e}",
    ]
    if (df.kinks_samples > 0).any():
        lines.append(f"kinks (docs/kinks.md): median dim N {med.kink_dim:.0f}; plain Opt. (3) "
                     f"{med.angle_plain:.1f} deg, relative residual {med.rel_residual_plain:.2e}")
    if (df.transforms != "none").any() or (df.prior != "none").any():
        lines.append(f"robust FV (transforms {df.transforms.iloc[0]}, prior "
                     f"{df.prior.iloc[0]}): median angle robust {med.angle_robust:.1f} deg "
                     f"(plain Grad-IFV {med.angle_pred:.1f}, mean response "
                     f"{med.angle_mean_response:.1f}), SSIM robust {med.ssim_robust:.3f}, "
                     f"converged {int(df.converged_robust.sum())} of {len(df)}")
    return "\n".join(lines)
