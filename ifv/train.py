"""Training of the zoo models (Sec. 3.1): SGD with Nesterov momentum and weight decay.

The result is written atomically to the model cache: the checkpoint (state dict and the
training record) and the same record as JSON beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ifv.data.patterns import make_patterns
from ifv.errors import UserError
from ifv.models.registry import ModelSpec
from ifv.store import atomic_write, write_json

DATASETS = ("patterns",)


def dataset(spec: ModelSpec) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training and test images and labels of a zoo model; test data holds every class."""
    r = spec.recipe
    if r.dataset != "patterns":
        raise UserError(f"unknown dataset {r.dataset!r}; valid: {', '.join(DATASETS)}")
    size = spec.input_size[0]
    x_tr, y_tr = make_patterns(r.n_train, seed=2 * r.seed + 1, size=size,
                               exclude=tuple(r.exclude_classes))
    x_te, y_te = make_patterns(r.n_test, seed=2 * r.seed + 2, size=size)
    return x_tr, y_tr, x_te, y_te


def pad_crop(x: Tensor, pad: int, g: torch.Generator) -> Tensor:
    """Pad each image by ``pad`` zeros and crop it back at a random offset (Sec. 3.1)."""
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    xp = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (x.shape[0], 2), generator=g).tolist()
    return torch.stack([xp[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(off)])


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> tuple[float, Tensor]:
    """Accuracy and per-class accuracy (classes absent from y get NaN)."""
    model.eval()
    pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    correct = (pred == y).double()
    per_class = torch.stack([correct[y == c].mean() if (y == c).any() else
                             torch.tensor(float("nan"), dtype=torch.float64)
                             for c in range(int(y.max()) + 1)])
    return float(correct.mean()), per_class


def classifier_structure(model: nn.Module, exclude: tuple[int, ...]) -> dict[str, float]:
    """The structure the critical-space experiment relies on (Sec. 3.5).

    ``softmax_share``: ||1^T W|| / (sqrt(n) ||W||), how much the classifier still depends on
    adding a constant to all logits (0: exactly invariant). ``dead_share``: for each
    excluded class c, ||W_c|| / mean_j ||W_j|| (0: a dead output).
    """
    w = model.classifier.weight.double()
    out = {"softmax_share": float(w.sum(0).norm() / (math.sqrt(w.shape[0]) * w.norm()))}
    rows = w.norm(dim=1)
    for c in exclude:
        out[f"dead_share_{c}"] = float(rows[c] / rows.mean())
    return out


def train(spec: ModelSpec, cache_dir: str | Path | None = None, progress: bool = True,
          ) -> dict[str, Any]:
    """Train ``spec`` with its recipe and write the checkpoint; returns the training record."""
    r = spec.recipe
    torch.manual_seed(r.seed)
    g = torch.Generator().manual_seed(r.seed)
    x_tr, y_tr, x_te, y_te = dataset(spec)
    model = spec.build()
    if hasattr(model, "classifier"):
        # zero column sums stay zero under cross-entropy: see classifier_structure
        nn.init.zeros_(model.classifier.weight)
    opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, nesterov=True,
                          weight_decay=r.weight_decay)
    steps_per_epoch = math.ceil(len(x_tr) / r.batch_size)
    total = r.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=total,
                                                pct_start=0.15)
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"train {spec.name}", disable=not progress, unit="step")
    loss_avg = float("nan")
    for epoch in range(r.epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * r.batch_size:(i + 1) * r.batch_size]
            xb = pad_crop(x_tr[idx], r.pad_crop, g)
            if r.flip:
                flip = torch.rand(len(idx), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            val = loss.item()
            loss_avg = val if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * val
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_avg:.3f}")
    bar.close()
    acc, per_class = evaluate(model, x_te, y_te)
    seen = [c for c in range(len(per_class)) if c not in r.exclude_classes]
    record = {
        "model": spec.name,
        "tier": spec.tier,
        "arch": spec.arch,
        "arch_kwargs": spec.arch_kwargs,
        "recipe": asdict(spec.recipe),
        "data_seeds": {"train": 2 * r.seed + 1, "test": 2 * r.seed + 2},
        "train_loss": loss_avg,
        "test_accuracy": acc,
        "test_accuracy_seen_classes": float(per_class[seen].mean()),
        "per_class_accuracy": [float(a) for a in per_class],
        **classifier_structure(model, tuple(r.exclude_classes)),
        "train_seconds": time.perf_counter() - t0,
        "key": spec.key(),
    }
    path = spec.checkpoint(cache_dir)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda p: torch.save({"state_dict": state, "record": record}, p))
    write_json(path.with_suffix(".json"), record)
    record["checkpoint"] = str(path)
    return record
