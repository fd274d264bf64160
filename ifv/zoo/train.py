"""Training of the zoo models (Sec. 3.1): SGD with Nesterov momentum and weight decay.

The result is written atomically to the model cache: the checkpoint (state dict and the
training record) and the same record as JSON beside it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ifv.errors import UserError
from ifv.files import atomic_write, load_tensors, write_json
from ifv.zoo.data.patterns import make_patterns
from ifv.zoo.registry import ModelSpec

DATASETS = ("patterns", "cifar10")
SCHEDULES = ("onecycle", "step")
JACOBIAN_IMAGES = 64  # test images on which output_jacobian_structure is measured
ESTIMATE_STEPS = 10  # training steps timed for the estimate of the whole run
DEFAULT_DATA_ROOT = "~/data"


def dataset(spec: ModelSpec, data_root: str | Path | None = None, download: bool = False,
            progress: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training and test images and labels of a zoo model; test data holds every class.

    Patterns are generated (float in [0, 1]); CIFAR-10 is read from ``data_root`` (default
    ~/data; an ImageFolder folder or zip, or the python version, downloaded there only when
    ``download``) as uint8: ``n_train`` training images left after dropping
    ``exclude_classes`` and ``n_test`` test images, all of them or a subset drawn from the
    recipe's seed (``subset``).
    """
    r = spec.recipe
    if r.dataset == "cifar10":
        from ifv.zoo.data.cifar import load_cifar10

        root = data_root or DEFAULT_DATA_ROOT
        x_tr, y_tr = load_cifar10(root, train=True, download=download,
                                  exclude=tuple(r.exclude_classes), progress=progress)
        x_te, y_te = load_cifar10(root, train=False, progress=progress)
        tr = subset(len(x_tr), r.n_train, 2 * r.seed + 1)
        te = subset(len(x_te), r.n_test, 2 * r.seed + 2)
        return x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    if r.dataset != "patterns":
        raise UserError(f"unknown dataset {r.dataset!r}; valid: {', '.join(DATASETS)}")
    size = spec.input_size[0]
    x_tr, y_tr = make_patterns(r.n_train, seed=2 * r.seed + 1, size=size,
                               exclude=tuple(r.exclude_classes))
    x_te, y_te = make_patterns(r.n_test, seed=2 * r.seed + 2, size=size)
    return x_tr, y_tr, x_te, y_te


def data_identity(*tensors: Tensor) -> str:
    """The SHA-256 (24 hex digits) of a training's data as read (images and labels, their
    shapes and dtypes): what a resumed training must find again."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def subset(total: int, n: int, seed: int) -> Tensor:
    """Indices of ``n`` of ``total`` items: all of them in order where n >= total, else a
    sorted random choice drawn from ``seed`` (a file data set may be ordered by class)."""
    if n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort()[0]


def estimate(spec: ModelSpec, device: torch.device, done: int, total: int,
             seconds: float) -> str:
    """One line: the time ``total`` steps take at the rate of the first ``done``."""
    left = seconds / done * total
    hours, minutes = divmod(round(left / 60), 60)
    when = f"{hours} h {minutes} min" if hours else f"{max(minutes, 1)} min"
    return (f"train {spec.name}: about {when} on {device} ({spec.recipe.epochs} epochs, "
            f"{total} steps at {seconds / done:.2f} s a step)")


def pad_crop(x: Tensor, pad: int, g: torch.Generator) -> Tensor:
    """Pad each image by ``pad`` zeros and crop it back at a random offset (Sec. 3.1)."""
    if pad == 0:
        return x
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=g)
    rows = (off[:, 0, None] + torch.arange(h))[:, None, :, None]
    cols = (off[:, 1, None] + torch.arange(w))[:, None, None, :]
    return xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
              rows, cols]


def as_float(x: Tensor) -> Tensor:
    """Images as float in [0, 1] (uint8 data sets are kept as uint8 until used)."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> tuple[float, Tensor]:
    """Accuracy and per-class accuracy (classes absent from y get NaN)."""
    model.eval()
    dev = next(model.parameters()).device
    pred = torch.cat([model(as_float(x[i:i + batch]).to(dev)).argmax(1).cpu()
                      for i in range(0, len(x), batch)])
    correct = (pred == y).double()
    per_class = torch.stack([correct[y == c].mean() if (y == c).any() else
                             torch.tensor(float("nan"), dtype=torch.float64)
                             for c in range(int(y.max()) + 1)])
    return float(correct.mean()), per_class


def classifier_structure(model: nn.Module, exclude: tuple[int, ...],
                         name: str = "classifier") -> dict[str, float]:
    """The structure the critical-space experiment relies on (Sec. 3.5).

    ``softmax_share``: ||1^T W|| / (sqrt(n) ||W||), how much the classifier still depends on
    adding a constant to all logits (0: exactly invariant). ``dead_share``: for each
    excluded class c, ||W_c|| / mean_j ||W_j|| (0: a dead output).
    """
    w = getattr(model, name).weight.detach().double().cpu()
    out = {"softmax_share": float(w.sum(0).norm() / (math.sqrt(w.shape[0]) * w.norm()))}
    rows = w.norm(dim=1)
    for c in exclude:
        out[f"dead_share_{c}"] = float(rows[c] / rows.mean())
    return out


def output_jacobian_structure(model: nn.Module, x: Tensor, exclude: tuple[int, ...],
                              ) -> dict[str, float]:
    """What Algorithm 1 sees of that structure: the Jacobian Dy of the logits on images.

    For each image, Dy = d logits / d input (n x P) and its smallest left singular
    directions. ``softmax_angle``: degrees between (1,...,1) and the span of the
    1 + len(exclude) smallest ones; ``dead_angle_c``: the same for e_c (0: e_c lies in the
    near-null space, as the paper's DN4cl critical space needs); ``dead_grad_share_c``:
    ||d logit_c/d input|| / mean_j ||d logit_j/d input||. Medians over the images.
    """
    model.eval()
    dev = next(model.parameters()).device
    x = as_float(x).to(dev).requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        jac = torch.stack([torch.autograd.grad(out[:, j].sum(), x, retain_graph=True)[0]
                           .flatten(1) for j in range(out.shape[1])], 1)  # (B, n, P)
    jac = jac.detach().double().cpu()
    n = jac.shape[1]
    _, vecs = torch.linalg.eigh(jac @ jac.transpose(1, 2))  # ascending eigenvalues
    low = vecs[:, :, :1 + len(exclude)]

    def angle(v: Tensor) -> Tensor:
        cos = (low.transpose(1, 2) @ (v / v.norm())).norm(dim=1).clamp(max=1.0)
        return torch.rad2deg(torch.arccos(cos)).median()

    rows = jac.norm(dim=2)
    out_stats = {"softmax_angle": float(angle(torch.ones(n, dtype=torch.float64)))}
    for c in exclude:
        out_stats[f"dead_angle_{c}"] = float(angle(torch.eye(n, dtype=torch.float64)[c]))
        out_stats[f"dead_grad_share_{c}"] = float((rows[:, c] / rows.mean(1)).median())
    return out_stats


def train(spec: ModelSpec, cache_dir: str | Path | None = None, progress: bool = True,
          data_root: str | Path | None = None, download: bool = False,
          device: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``spec`` with its recipe and write the checkpoint; returns the training record.

    ``data_root``/``download``: where a file data set (CIFAR-10) lives and whether it may be
    downloaded there. ``device``: None picks CUDA where there is one, else the CPU (the
    same seed gives the same metrics on the same device and thread count). ``log`` gets one
    line with the estimated training time, measured on the first steps (``ESTIMATE_STEPS``).
    """
    r = spec.recipe
    if getattr(r, "task", "classify") == "superres":
        return train_srnet(spec, cache_dir, progress, device)
    if not spec.trainable:
        raise UserError(f"{spec.name} uses pretrained weights ({spec.weights_source}) and is "
                        "not trained by ifv; see `ifv list`")
    if r.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {r.schedule!r}; valid: {', '.join(SCHEDULES)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(r.seed)
    g = torch.Generator().manual_seed(r.seed)
    x_tr, y_tr, x_te, y_te = dataset(spec, data_root, download, progress)
    if len(x_tr) == 0 or len(x_te) == 0:
        raise UserError(f"no training or test images for {spec.name} (n_train={r.n_train}, "
                        f"n_test={r.n_test})")
    model = spec.build().to(dev)
    head = getattr(model, spec.classifier, None)
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if isinstance(head, nn.Linear):
        # zero column sums stay zero under cross-entropy: see classifier_structure
        nn.init.zeros_(head.weight)
        groups = [{"params": [p for p in model.parameters() if p is not head.weight]},
                  {"params": [head.weight], "weight_decay": r.weight_decay
                   if r.classifier_weight_decay is None else r.classifier_weight_decay}]
    opt = torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=True,
                          weight_decay=r.weight_decay)
    steps_per_epoch = math.ceil(len(x_tr) / r.batch_size)
    total = r.epochs * steps_per_epoch
    if r.schedule == "step":
        sched: Any = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[total // 2, (3 * total) // 4], gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=total,
                                                    pct_start=0.15)
    partial = spec.checkpoint(cache_dir).with_suffix(".partial.pt")
    data_id = data_identity(x_tr, y_tr, x_te, y_te)
    state = resume(partial, model, opt, sched, g, data_id)
    loss_avg, first_loss = state.get("loss_avg", math.nan), state.get("first_loss", math.nan)
    epoch_losses: list[float] = state.get("epoch_losses", [])
    start = len(epoch_losses)
    if start:
        log(f"train {spec.name}: resuming after epoch {start} of {r.epochs} ({partial})")
    resumed = time.perf_counter()
    t0 = resumed - state.get("train_seconds", 0.0)  # counts the seconds before a resume
    bar = tqdm(total=total, initial=start * steps_per_epoch, desc=f"train {spec.name}",
               disable=not progress, unit="step")
    steps = 0  # since the start or the resume (a disabled bar counts nothing)
    for epoch in range(start, r.epochs):
        model.train()
        loss_sum = 0.0
        order = torch.randperm(len(x_tr), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * r.batch_size:(i + 1) * r.batch_size]
            xb = pad_crop(as_float(x_tr[idx]), r.pad_crop, g)
            if r.flip:
                flip = torch.rand(len(idx), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb.to(dev)), y_tr[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            val = loss.item()
            if math.isnan(first_loss):  # before any update: log(classes) at a zero classifier
                first_loss = val
            loss_sum += val
            loss_avg = val if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * val
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_avg:.3f}")
            steps += 1
            if steps == min(ESTIMATE_STEPS, total - start * steps_per_epoch):
                log(estimate(spec, dev, steps, total - start * steps_per_epoch,
                             time.perf_counter() - resumed))
        epoch_losses.append(loss_sum / steps_per_epoch)
        if epoch + 1 < r.epochs:
            save_progress(partial, model, opt, sched, g, {
                "data": data_id, "epoch_losses": epoch_losses, "loss_avg": loss_avg,
                "first_loss": first_loss, "train_seconds": time.perf_counter() - t0})
    bar.close()
    train_seconds = time.perf_counter() - t0
    acc, per_class = evaluate(model, x_te, y_te)
    seen = [c for c in range(len(per_class)) if c not in r.exclude_classes]
    exclude = tuple(r.exclude_classes)
    if r.dataset == "cifar10":
        data: dict[str, Any] = {"root": str(Path(data_root or DEFAULT_DATA_ROOT).expanduser()),
                                "order_and_augmentation_seed": r.seed}
    else:
        data = {"train": 2 * r.seed + 1, "test": 2 * r.seed + 2}
    record = {
        "model": spec.name,
        "tier": spec.tier,
        "arch": spec.arch,
        "arch_kwargs": spec.arch_kwargs,
        "recipe": asdict(spec.recipe),
        "data_seeds": data,
        "data_sha256": data_id,
        "n_train": len(x_tr),
        "n_test": len(x_te),
        "device": str(dev),
        "train_loss": loss_avg,
        "first_loss": first_loss,
        "epoch_losses": epoch_losses,
        "test_accuracy": acc,
        "test_accuracy_seen_classes": float(per_class[seen].mean()),
        "per_class_accuracy": [float(a) for a in per_class],
        **(classifier_structure(model, exclude, spec.classifier)
           if isinstance(head, nn.Linear) else {}),
        **output_jacobian_structure(model, x_te[:JACOBIAN_IMAGES], exclude),
        "train_seconds": train_seconds,
        "key": spec.key(),
    }
    out = save_checkpoint(spec, model, record, cache_dir)
    partial.unlink(missing_ok=True)
    return out


def save_progress(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                  g: torch.Generator, progress: dict[str, Any]) -> None:
    """Write the state after a finished epoch, so that a stopped training resumes there."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "generator": g.get_state(), **progress}
    atomic_write(path, lambda p: torch.save(state, p))


def resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
           g: torch.Generator, data: str) -> dict[str, Any]:
    """Load what ``save_progress`` wrote into the objects; {} when there is nothing.

    The file is ifv's own, named by the model's key, and read tensors-only. One made on
    other data than ``data`` (``data_identity``) is refused with ``UserError`` and kept:
    its epochs are not mixed with another data set's, nor thrown away.
    """
    if not path.is_file():
        return {}
    try:
        state = load_tensors(path)
        other = state.get("data") != data
        if not other:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            g.set_state(state["generator"])
    except Exception as e:  # a damaged file costs the epochs it held, not the training
        print(f"warning: ignoring {path} ({type(e).__name__}); training from the start")
        return {}
    if other:
        raise UserError(f"{path} holds epochs of a training on other data than "
                        "model.data.root gives now (or of an older ifv); rerun with the data "
                        "it began on, or delete it to train from the start")
    return state


def train_srnet(spec: ModelSpec, cache_dir: str | Path | None = None, progress: bool = True,
                device: str | None = None) -> dict[str, Any]:
    """Train an SRNet (an ``SRRecipe``) on procedural geometry images and write the checkpoint.

    The last convolution starts at zero, so training starts from bilinear upscaling; the
    record holds SRNet's and bilinear upscaling's quality on held-out images.
    """
    from ifv.zoo.data.geometry import make_geometry, random_crops
    from ifv.zoo.models.srnet import evaluate_upscaling, geometry_loss, upscale

    r = spec.recipe
    if spec.tier != "offline":
        raise UserError(f"{spec.name} is not trained by ifv: the original SRNet weights "
                        "(Weiss et al. 2019) are not public here; pass model.weights=PATH, "
                        "or train the offline stand-in with 'ifv train model=srnet_geometry'")
    if r.dataset != "geometry":
        raise UserError(f"unknown dataset {r.dataset!r} for {spec.name}; valid: geometry")
    crop = r.crop or r.low
    if not 1 <= crop <= r.low or min(r.n_train, r.n_test, r.steps, r.batch_size) < 1:
        raise UserError(f"invalid SRNet recipe for {spec.name}: need 1 <= crop <= low and "
                        f"positive n_train, n_test, steps, batch_size ({asdict(r)})")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    torch.manual_seed(r.seed)
    g = torch.Generator().manual_seed(r.seed)
    lo_tr, hi_tr = make_geometry(r.n_train, seed=2 * r.seed + 1, low=r.low)
    lo_te, hi_te = make_geometry(r.n_test, seed=2 * r.seed + 2, low=r.low)
    data_seconds = time.perf_counter() - t0
    model = spec.build().to(dev)
    nn.init.zeros_(model.out.weight)
    nn.init.zeros_(model.out.bias)
    opt = torch.optim.Adam(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.steps,
                                                pct_start=0.1)
    bar = tqdm(total=r.steps, desc=f"train {spec.name}", disable=not progress, unit="step")
    loss_avg = float("nan")
    model.train()
    for _ in range(r.steps):
        lo, hi = random_crops(lo_tr, hi_tr, r.batch_size, crop, g)
        loss = geometry_loss(model(lo.to(dev)), hi.to(dev), r.surface_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        val = loss.item()
        loss_avg = val if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * val
        bar.update()
        bar.set_postfix(loss=f"{loss_avg:.4f}")
    bar.close()
    train_seconds = time.perf_counter() - t0
    model = model.cpu().eval()
    quality = evaluate_upscaling(model, lo_te, hi_te)
    with torch.no_grad():
        test_loss = float(torch.stack([geometry_loss(model(lo_te[i:i + 16]), hi_te[i:i + 16],
                                                     r.surface_weight) * len(lo_te[i:i + 16])
                                       for i in range(0, len(lo_te), 16)]).sum() / len(lo_te))
        bilinear_loss = float(geometry_loss(upscale(lo_te), hi_te, r.surface_weight))
    record = {
        "model": spec.name,
        "tier": spec.tier,
        "task": "superres",
        "arch": spec.arch,
        "arch_kwargs": spec.arch_kwargs,
        "recipe": asdict(spec.recipe),
        "data_seeds": {"train": 2 * r.seed + 1, "test": 2 * r.seed + 2},
        "n_train": r.n_train,
        "n_test": r.n_test,
        "device": str(dev),
        "train_loss": loss_avg,
        "test_loss": test_loss,
        "bilinear_test_loss": bilinear_loss,
        **quality,
        "beats_bilinear": bool(quality["srnet_normal_error_deg"]
                               < quality["bilinear_normal_error_deg"]
                               and quality["srnet_mask_accuracy"]
                               > quality["bilinear_mask_accuracy"]),
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "key": spec.key(),
    }
    return save_checkpoint(spec, model, record, cache_dir)


def save_checkpoint(spec: ModelSpec, model: nn.Module, record: dict[str, Any],
                    cache_dir: str | Path | None) -> dict[str, Any]:
    """Write the state dict with its record, and the record as JSON beside it, atomically.

    Returns the record with the checkpoint's path added.
    """
    path = spec.checkpoint(cache_dir)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda p: torch.save({"state_dict": state, "record": record}, p))
    write_json(path.with_suffix(".json"), record)
    return {**record, "checkpoint": str(path)}
