"""An ONNX file as an ``nn.Module`` (``model=onnx:PATH``), converted by onnx2torch.

Each ONNX node becomes a submodule of a ``torch.fx.GraphModule`` named after the node, so
``ifv layers`` lists every tap under the file's own names. ONNX records no input range, so
the normalization is ``model.normalize`` (default none); the input size is the graph
input's static shape [C, H, W] where it has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ifv.errors import UserError


def _onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnx2torch
    except ImportError:
        raise UserError("model=onnx:PATH needs onnx and onnx2torch; install them with "
                        "pip install 'ifv[exchange]' (or pip install onnx onnx2torch)") from None
    return onnx, onnx2torch


def read(path: str | Path) -> Any:
    """The checked ``onnx.ModelProto`` of a file; one ``UserError`` where it is not one.
    External data files are not followed (the weights must be inside the file)."""
    onnx, _ = _onnx()
    path = Path(path)
    try:
        model = onnx.load_model(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is one line
        why = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(f"{path} is damaged or not an ONNX model: {why[:160]}") from None
    inputs = _inputs(model)
    if len(inputs) != 1:
        raise UserError(f"{path}: ifv takes models with one input image, this one has "
                        f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)})")
    return model


def _inputs(model: Any) -> list[Any]:
    """The graph's inputs that are not initializers (weights)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def input_size(model: Any) -> tuple[int, int, int] | None:
    """[C, H, W] of the graph input where its shape is static (B, C, H, W), else None."""
    dims = _inputs(model)[0].type.tensor_type.shape.dim
    if len(dims) != 4 or any(not d.HasField("dim_value") for d in dims[1:]):
        return None
    c, h, w = (int(d.dim_value) for d in dims[1:])
    return (c, h, w) if min(c, h, w) > 0 else None


def defaults(path: str | Path) -> tuple[None, tuple[int, int, int] | None]:
    """What the file says of its input: no normalization (ONNX records no range) and
    [C, H, W] (``input_size``)."""
    return None, input_size(read(path))


def convert(path: str | Path) -> nn.Module:
    """The file's network as a module in eval mode; an operator onnx2torch does not know is
    one ``UserError`` naming it."""
    _, onnx2torch = _onnx()
    model = read(path)
    try:
        net = onnx2torch.convert(model)
    except NotImplementedError as exc:
        why = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"{path}: onnx2torch cannot convert it: {why[:200]}") from None
    return net.eval()
