"""Reading the user's images for Grad-IFV, and mapping them to the variables v of P (Sec. 2).

Grad-IFV differentiates N~ = Agg o N o P w.r.t. the parametrization's variables v, so an
image I in [0, 1] is first mapped to a v with P(v) = I by P's inverse (``to_params``).
Images come as .pt tensors, .npy arrays or .png files (8 or 16 bit), laid out (C, H, W) or
(H, W, C), optionally batched as (B, C, H, W) or (B, H, W, C). Every check raises
``UserError`` with one line that names the file, what it holds and what is valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ifv.errors import UserError
from ifv.files import Refused, load_tensors
from ifv.math.param import FFT, IMAGE_PARAMS, Parametrization

FORMATS = (".pt", ".npy", ".png")
# images are clamped to [EPS, 1 - EPS] before the logit: see ``to_params``
EPS = 1e-6

Source = str | Path | Tensor | np.ndarray


def read_array(path: str | Path) -> Tensor:
    """The raw content of a .pt, .npy or .png file as a float64 tensor.

    A .png is scaled to [0, 1] by its bit depth (255 or 65535); a fully opaque alpha channel
    is dropped; palette images become RGB. .pt and .npy values are taken as they are.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unknown image format {path.suffix or '(none)'!r}; valid: "
                        f"{', '.join(FORMATS)}")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        if suffix == ".pt":
            data = load_tensors(path)
            if not isinstance(data, Tensor):
                raise UserError(f"{path}: holds a {type(data).__name__}, not a tensor; save "
                                "one tensor with torch.save(tensor, path)")
            return _real(data.detach(), str(path))
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise UserError(f"{path}: holds {arr.dtype} values, not numbers")
            return _real(torch.from_numpy(arr), str(path))
        return _read_png(path)
    except UserError:
        raise
    except Refused as why:
        raise UserError(f"{path}: cannot read it as .pt: {why}; save one tensor with "
                        "torch.save(tensor, path)") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is one line for the user
        raise UserError(f"{path}: cannot read it as {suffix} "
                        f"({exc.__class__.__name__}: {(str(exc).strip().splitlines() or [''])[0]})"
                        ) from None


def _read_png(path: Path) -> Tensor:
    """A PNG as (H, W) or (H, W, C) float64 in [0, 1]."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode.startswith("I"):  # 16-bit grey
            return torch.from_numpy(np.asarray(img, dtype=np.float64) / 65535.0)
        if img.mode not in ("L", "LA", "RGB", "RGBA"):
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        raw = np.asarray(img)
    if img.mode in ("LA", "RGBA"):
        if not np.all(raw[..., -1] == 255):
            raise UserError(f"{path}: has transparent pixels; save it without transparency "
                            "(an opaque RGB image)")
        raw = raw[..., 0] if img.mode == "LA" else raw[..., :3]
    return torch.from_numpy(raw.astype(np.float64) / 255.0)


def as_image_batch(a: Tensor, channels: int, size: tuple[int, int] | None, name: str) -> Tensor:
    """(B, C, H, W) from a (C, H, W), (H, W, C), (B, C, H, W) or (B, H, W, C) tensor.

    ``size`` (H, W) is the network's input size; None accepts any size. Channels first wins
    where both layouts fit (e.g. 3 x 3 x 3).
    """
    def fits(c: int, h: int, w: int) -> bool:
        return c == channels and (size is None or (h, w) == tuple(size))

    if a.dim() in (3, 4):
        batch = a if a.dim() == 4 else a.unsqueeze(0)
        if fits(*batch.shape[1:]):
            return batch
        if fits(batch.shape[3], batch.shape[1], batch.shape[2]):
            return batch.permute(0, 3, 1, 2).contiguous()
    if a.dim() == 2 and channels == 1 and fits(1, *a.shape):
        return a[None, None]
    c = str(channels)
    h, w = (str(size[0]), str(size[1])) if size else ("H", "W")
    raise UserError(f"{name}: shape {tuple(a.shape)} does not fit the network input "
                    f"{c}x{h}x{w}; valid: ({c}, {h}, {w}), ({h}, {w}, {c}) or a batch of "
                    "either (B first)")


def as_param_batch(a: Tensor, shape: tuple[int, ...], name: str) -> Tensor:
    """(B, *shape) from parameters v of one sample (``shape``) or a batch (B, *shape)."""
    if tuple(a.shape) == tuple(shape):
        return a.unsqueeze(0)
    if a.dim() == len(shape) + 1 and tuple(a.shape[1:]) == tuple(shape):
        return a
    raise UserError(f"{name}: parameter shape {tuple(a.shape)} does not fit the "
                    f"parametrization's {tuple(shape)}; valid: {tuple(shape)} or "
                    f"(B, {', '.join(map(str, shape))})")


def check_range(a: Tensor, name: str) -> None:
    """Raise unless every value of the image batch is finite and in [0, 1]."""
    if a.numel() == 0:
        raise UserError(f"{name}: holds no pixels (shape {tuple(a.shape)})")
    if not torch.isfinite(a).all():
        raise UserError(f"{name}: holds NaN or infinite values; images must be in [0, 1]")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (8-bit values? divide by 255)" if hi > 1.0 and lo >= 0.0 and hi <= 255 else ""
        raise UserError(f"{name}: values in [{lo:.4g}, {hi:.4g}], outside [0, 1]; images "
                        f"must be in [0, 1]{hint}")


def _label(src: Source, i: int) -> str:
    return str(src) if isinstance(src, str | Path) else f"images[{i}]"


def load_images(sources: Source | Sequence[Source], channels: int,
                size: tuple[int, int] | None) -> tuple[Tensor, list[tuple[str, int]]]:
    """Images from files or tensors, checked for shape and range: (N, C, H, W) float64.

    ``sources``: one or several paths or tensors/arrays, each an image or a batch. Without a
    ``size`` the first image fixes it. Returns the batch and, per image, (source, index in
    its source).
    """
    items = _as_list(sources)
    out: list[Tensor] = []
    origin: list[tuple[str, int]] = []
    for i, src in enumerate(items):
        name = _label(src, i)
        raw = read_array(src) if isinstance(src, str | Path) else _tensor(src)
        batch = as_image_batch(raw, channels, size, name)
        size = size or (batch.shape[-2], batch.shape[-1])
        check_range(batch, name)
        out.append(batch)
        origin += [(name, j) for j in range(batch.shape[0])]
    return torch.cat(out), origin


def load_params(sources: Source | Sequence[Source], shape: tuple[int, ...]
                ) -> tuple[Tensor, list[tuple[str, int]]]:
    """Parameter tensors v of P from .pt/.npy files or tensors: (N, *shape) float64."""
    items = _as_list(sources)
    out: list[Tensor] = []
    origin: list[tuple[str, int]] = []
    for i, src in enumerate(items):
        name = _label(src, i)
        if isinstance(src, str | Path) and Path(src).suffix.lower() == ".png":
            raise UserError(f"{src}: a .png holds an image, not parameters; pass a .pt or "
                            ".npy of v, or read it as an image (input=image)")
        raw = read_array(src) if isinstance(src, str | Path) else _tensor(src)
        batch = as_param_batch(raw, shape, name)
        if not torch.isfinite(batch).all():
            raise UserError(f"{name}: holds NaN or infinite parameters")
        out.append(batch)
        origin += [(name, j) for j in range(batch.shape[0])]
    return torch.cat(out), origin


def _as_list(sources: Source | Sequence[Source]) -> list[Source]:
    items = list(sources) if isinstance(sources, list | tuple) else [sources]
    if not items:
        raise UserError("no images given")
    return items


def _real(a: Tensor, name: str) -> Tensor:
    """``a`` as float64; complex values are refused (their imaginary part would be lost)."""
    if a.is_complex():
        raise UserError(f"{name}: holds complex values ({a.dtype}); images and parameters are "
                        "real numbers")
    return a.to("cpu", torch.float64)


def _tensor(src: object) -> Tensor:
    if isinstance(src, Tensor):
        return _real(src.detach(), "the tensor given")
    if isinstance(src, np.ndarray):
        return _real(torch.from_numpy(np.asarray(src)), "the array given")
    raise UserError(f"cannot read images from a {type(src).__name__}; valid: file paths "
                    f"({', '.join(FORMATS)}), tensors or numpy arrays")


def to_params(images: Tensor, param: Parametrization, eps: float = EPS) -> Tensor:
    """Variables v with P(v) = images, by P's inverse: v = logit(clamp(I, eps, 1 - eps)) for
    P_rgb; for P_fft / P_ffte the Fourier coefficients of that logit image (``FFT.coefficients``).

    images: (B, 3, H, W) in [0, 1] -> v: (B, *param.shape), float64. Pixels at 0 or 1 are
    saturated: P maps no finite v onto them, so they are clamped to eps / 1 - eps, where
    sigmoid' = eps (1 - eps) ~ 1e-6. Their columns of Dy (Sec. 2) thereby vanish (about
    4e-6 of a mid-grey pixel's), as they do at FV's optimum, where saturated pixels have
    |v| -> infinity. An 8-bit image is unaffected otherwise: its values nearest to 0 and 1
    are 1/255 and 254/255. Since P_fft's v -> logit image is linear, Dy w.r.t. v does not
    depend on which of the v with P(v) = I is chosen (the unused imaginary parts).
    """
    if param.name not in IMAGE_PARAMS:
        raise UserError(f"images cannot be mapped to the variables of P_{param.name} without "
                        f"them; valid for images: {', '.join(IMAGE_PARAMS)}; for "
                        f"{param.name}, pass the parameter tensor v itself (input=params)")
    logits = torch.logit(images.double().clamp(eps, 1.0 - eps))
    if isinstance(param, FFT):
        return param.coefficients(logits)
    return logits
