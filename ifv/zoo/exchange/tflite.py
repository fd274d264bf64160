"""A TensorFlow Lite flatbuffer as a float ``nn.Module`` (``model=tflite:PATH``).

The file is read by the ``tflite`` package (a flatbuffer parser; no TensorFlow), its
weights dequantized to float32 as ``(q - zero_point) * scale`` (per output channel where the
file says so), and each operator becomes one module named after its output tensor, so that
``ifv layers`` lists every tap under the file's own names (``MobilenetV2.expanded_conv_6.
project``). Tensors are NCHW inside the module: TFLite's NHWC weights and axes are moved
once, at conversion. Activation quantization is dropped, so the module computes what the
quantized network approximates. SAME padding is TFLite's: asymmetric for even totals, the
extra row and column at the bottom and right.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifv.errors import UserError

# TFLite's tensor types (schema TensorType) and the numpy dtypes of their buffers
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16,
           9: np.int8}
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}
_ACTIVATIONS: dict[int, Callable[[Tensor], Tensor]] = {
    0: lambda x: x, 1: F.relu, 2: lambda x: x.clamp(-1.0, 1.0), 3: F.relu6, 4: torch.tanh}


def _tflite() -> Any:
    try:
        import tflite
    except ImportError:
        raise UserError("model=tflite:PATH needs the tflite package; install it with "
                        "pip install 'ifv[exchange]' (or pip install tflite)") from None
    return tflite


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: its name, shape (as stored, NHWC), type and quantization."""

    name: str
    shape: tuple[int, ...]
    dtype: int
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    axis: int
    data: np.ndarray | None  # the constant's stored values, None for activations

    def value(self) -> np.ndarray:
        """The constant as float32, dequantized where it is quantized."""
        assert self.data is not None
        x = self.data.astype(np.float32)
        if self.dtype != 0 and self.scale is not None and self.scale.size:
            shape = [1] * x.ndim
            if self.scale.size > 1:
                shape[self.axis] = -1
            zp = (self.zero_point if self.zero_point is not None and self.zero_point.size
                  else np.zeros(1))
            x = (x - zp.reshape(shape).astype(np.float32)) * self.scale.reshape(shape)
        return x


def _nchw(x: np.ndarray) -> Tensor:
    """A constant in the module's layout: 4-D NHWC arrays become NCHW."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    return t.permute(0, 3, 1, 2).contiguous() if t.dim() == 4 else t


class Op(nn.Module):
    """One operator: the indices of its input tensors and of its output. An operator with a
    fused activation has a child ``preact`` (an identity) that its value before the
    activation passes through, so that it can be tapped too (``layer=NAME.preact``)."""

    def __init__(self, inputs: tuple[int, ...], output: int, activation: int = 0) -> None:
        super().__init__()
        self.inputs, self.output, self.activation = inputs, output, activation
        if activation:
            self.preact = nn.Identity()

    def activate(self, y: Tensor) -> Tensor:
        """The fused activation of the value ``y`` before it."""
        return _ACTIVATIONS[self.activation](self.preact(y)) if self.activation else y


def _same_pad(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding of one axis: (before, after), the extra one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Window(Op):
    """The padding of a sliding window (convolutions and pooling): SAME (0) or VALID (1)."""

    def _setup(self, padding: int, kernel: tuple[int, int], stride: tuple[int, int],
               dilation: tuple[int, int] = (1, 1)) -> None:
        self.same, self.kernel, self.stride, self.dilation = (padding == 0, kernel, stride,
                                                              dilation)

    def pad(self, x: Tensor, value: float = 0.0) -> Tensor:
        """``x`` (B, C, H, W) padded as TFLite's SAME padding says (VALID: as it is), with
        ``value``."""
        if not self.same:
            return x
        top, bottom = _same_pad(x.shape[-2], self.kernel[0], self.stride[0], self.dilation[0])
        left, right = _same_pad(x.shape[-1], self.kernel[1], self.stride[1], self.dilation[1])
        pads = (left, right, top, bottom)
        return F.pad(x, pads, value=value) if any(pads) else x


class Conv(Window):
    """CONV_2D and DEPTHWISE_CONV_2D with their fused activation."""

    def __init__(self, inputs: tuple[int, ...], output: int, weight: Tensor,
                 bias: Tensor | None, groups: int, padding: int, stride: tuple[int, int],
                 dilation: tuple[int, int], activation: int) -> None:
        super().__init__(inputs[:1], output, activation)
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.groups = groups
        self._setup(padding, (weight.shape[2], weight.shape[3]), stride, dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(F.conv2d(self.pad(x), self.weight, self.bias, self.stride, 0,
                                      self.dilation, self.groups))


class Pool(Window):
    """AVERAGE_POOL_2D and MAX_POOL_2D (the average over the window's valid cells, as
    TFLite counts it)."""

    def __init__(self, inputs: tuple[int, ...], output: int, kind: str, padding: int,
                 kernel: tuple[int, int], stride: tuple[int, int], activation: int) -> None:
        super().__init__(inputs, output, activation)
        self.kind = kind
        self._setup(padding, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":  # padded cells never win
            return self.activate(F.max_pool2d(self.pad(x, float("-inf")), self.kernel,
                                              self.stride))
        total = F.avg_pool2d(self.pad(x), self.kernel, self.stride, divisor_override=1)
        count = F.avg_pool2d(self.pad(torch.ones_like(x[:1, :1])), self.kernel, self.stride,
                             divisor_override=1)
        return self.activate(total / count)


class Binary(Op):
    """ADD, SUB and MUL (with broadcasting; a constant operand is a buffer)."""

    def __init__(self, inputs: tuple[int, ...], output: int, kind: str, activation: int,
                 constant: Tensor | None = None, constant_first: bool = False) -> None:
        super().__init__(inputs, output, activation)
        self.kind, self.constant_first = kind, constant_first
        self.register_buffer("constant", constant)

    def forward(self, *xs: Tensor) -> Tensor:
        a, b = xs if self.constant is None else (
            (self.constant, xs[0]) if self.constant_first else (xs[0], self.constant))
        return self.activate(a + b if self.kind == "add" else a - b if self.kind == "sub"
                             else a * b)


class Unary(Op):
    """An elementwise operator without weights (RELU, RELU6, LOGISTIC, HARD_SWISH, TANH,
    QUANTIZE and DEQUANTIZE, which are the identity in float)."""

    FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
        "RELU": F.relu, "RELU6": F.relu6, "LOGISTIC": torch.sigmoid, "TANH": torch.tanh,
        "HARD_SWISH": F.hardswish, "QUANTIZE": lambda x: x, "DEQUANTIZE": lambda x: x}

    def __init__(self, inputs: tuple[int, ...], output: int, kind: str) -> None:
        super().__init__(inputs[:1], output)
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        return self.FUNCTIONS[self.kind](x)


class Reshape(Op):
    """RESHAPE and SQUEEZE to the stored output shape, in TFLite's NHWC element order."""

    def __init__(self, inputs: tuple[int, ...], output: int, shape: tuple[int, ...]) -> None:
        super().__init__(inputs[:1], output)
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        y = x.reshape(x.shape[0], *self.shape[1:])
        return y.permute(0, 3, 1, 2) if y.dim() == 4 else y


class Softmax(Op):
    """SOFTMAX over the last (channel) axis, with its beta."""

    def __init__(self, inputs: tuple[int, ...], output: int, beta: float) -> None:
        super().__init__(inputs[:1], output)
        self.beta = beta

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.beta * x, dim=1 if x.dim() == 4 else -1)


class Dense(Op):
    """FULLY_CONNECTED: weights (out, in) on the input flattened in NHWC order."""

    def __init__(self, inputs: tuple[int, ...], output: int, weight: Tensor,
                 bias: Tensor | None, activation: int) -> None:
        super().__init__(inputs[:1], output, activation)
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return self.activate(F.linear(x.reshape(x.shape[0], -1), self.weight, self.bias))


class Concat(Op):
    """CONCATENATION along an axis (NHWC axes of 4-D tensors moved to NCHW)."""

    def __init__(self, inputs: tuple[int, ...], output: int, axis: int, activation: int) -> None:
        super().__init__(inputs, output, activation)
        self.axis = axis

    def forward(self, *xs: Tensor) -> Tensor:
        axis = self.axis % xs[0].dim()
        dim = _NHWC_TO_NCHW[axis] if xs[0].dim() == 4 else axis
        return self.activate(torch.cat(xs, dim=dim))


class Mean(Op):
    """MEAN over constant axes (NHWC axes of 4-D tensors moved to NCHW)."""

    def __init__(self, inputs: tuple[int, ...], output: int, axes: tuple[int, ...],
                 keep: bool) -> None:
        super().__init__(inputs[:1], output)
        self.axes, self.keep = axes, keep

    def forward(self, x: Tensor) -> Tensor:
        dims = [(_NHWC_TO_NCHW[a % 4] if x.dim() == 4 else a) for a in self.axes]
        y = x.mean(dim=dims, keepdim=self.keep)
        if y.dim() == 4 or x.dim() != 4 or self.keep:
            return y
        kept = [d for d in (0, 2, 3, 1) if d not in dims]  # what is left, in NHWC order
        return y.permute(*[sorted(kept).index(d) for d in kept])


class Pad(Op):
    """PAD with zeros by constant NHWC paddings."""

    def __init__(self, inputs: tuple[int, ...], output: int, pads: np.ndarray) -> None:
        super().__init__(inputs[:1], output)
        p = [tuple(int(v) for v in row) for row in pads]
        self.pads = (p[2] + p[1] + p[3] + p[0]) if len(p) == 4 else tuple(
            v for row in reversed(p) for v in row)

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pads)


class TFLiteNet(nn.Module):
    """The converted graph: its operators in the file's order, each a submodule named
    after its output tensor. Input (B, C, H, W) as the file's input expects it (its range
    is ``input_stats``), output the file's first output."""

    def __init__(self, ops: list[tuple[str, Op]], inputs: int, outputs: int) -> None:
        super().__init__()
        self.order = [op for _, op in ops]
        self.input_index, self.output_index = inputs, outputs
        for path, op in ops:
            parent: nn.Module = self
            *heads, leaf = path.split(".")
            for head in heads:
                if not hasattr(parent, head):
                    parent.add_module(head, nn.Module())
                parent = getattr(parent, head)
            parent.add_module(leaf, op)

    def forward(self, x: Tensor) -> Tensor:
        values = {self.input_index: x}
        for op in self.order:
            values[op.output] = op(*(values[i] for i in op.inputs))
        return values[self.output_index]


@dataclass(frozen=True)
class TFLiteFile:
    """A parsed file's first subgraph: its tensors, its operators (name, options, input and
    output tensor indices, in execution order), and its input and output tensors."""

    path: Path
    tensors: list[TensorInfo]
    ops: list[tuple[str, Any, list[int], list[int]]]  # (op name, options, inputs, outputs)
    inputs: list[int]
    outputs: list[int]

    @property
    def input(self) -> TensorInfo:
        return self.tensors[self.inputs[0]]

    def input_size(self) -> tuple[int, int, int] | None:
        """[C, H, W] of the (NHWC) input; None where it is not a static image."""
        shape = self.input.shape
        if len(shape) != 4 or min(shape[1:]) < 1:
            return None
        return int(shape[3]), int(shape[1]), int(shape[2])

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The normalization of a [0, 1] image into the input's range: for a uint8 (int8)
        input the pixel q = 255 x (255 x - 128) means scale (q - zero_point), so mean =
        (zero_point [+ 128]) / 255 and std = 1 / (255 scale); a float input says nothing."""
        t = self.input
        if t.dtype not in (3, 9) or t.scale is None or not t.scale.size:
            return None
        zp = float(t.zero_point.reshape(-1)[0]) if t.zero_point is not None \
            and t.zero_point.size else 0.0
        mean = (zp + (128.0 if t.dtype == 9 else 0.0)) / 255.0
        std = 1.0 / (255.0 * float(t.scale.reshape(-1)[0]))
        c = int(t.shape[-1]) if len(t.shape) == 4 else 1
        return (mean,) * c, (std,) * c


def read(path: str | Path) -> TFLiteFile:
    """Parse a .tflite file (its first subgraph); one ``UserError`` where it is not one."""
    tfl = _tflite()
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise UserError(f"{path} is not a TensorFlow Lite file (no TFL3 identifier)")
    try:
        model = tfl.Model.GetRootAsModel(buf, 0)
        graph = model.Subgraphs(0)
        codes = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
        tensors = [_tensor(model, graph.Tensors(i)) for i in range(graph.TensorsLength())]
        ops = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            oc = model.OperatorCodes(op.OpcodeIndex())
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            ops.append((codes.get(code, f"builtin {code}"), _options(tfl, codes.get(code), op),
                        [int(j) for j in op.InputsAsNumpy()],
                        [int(j) for j in op.OutputsAsNumpy()]))
        inputs = [int(j) for j in graph.InputsAsNumpy()]
        outputs = [int(j) for j in graph.OutputsAsNumpy()]
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged flatbuffer is one line
        raise UserError(f"{path} is damaged or not a TensorFlow Lite model "
                        f"({exc.__class__.__name__})") from None
    if len(inputs) != 1 or not outputs:
        raise UserError(f"{path}: ifv takes models with one input image, this one has "
                        f"{len(inputs)} inputs")
    return TFLiteFile(path, tensors, ops, inputs, outputs)


def _tensor(model: Any, t: Any) -> TensorInfo:
    q = t.Quantization()
    scale = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else None
    zp = q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else None
    shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    data = None
    b = model.Buffers(t.Buffer())
    if b is not None and b.DataLength():
        dtype = _DTYPES.get(t.Type())
        if dtype is None:
            raise UserError(f"tensor {t.Name().decode()!r} has a type ifv does not read "
                            f"(TensorType {t.Type()})")
        data = np.frombuffer(b.DataAsNumpy().tobytes(), dtype=dtype).reshape(shape or (-1,))
    return TensorInfo(t.Name().decode(errors="replace"), shape, int(t.Type()),
                      None if scale is None else np.asarray(scale, np.float32),
                      None if zp is None else np.asarray(zp, np.int64),
                      int(q.QuantizedDimension()) if q is not None else 0, data)


_OPTIONS = {"CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
            "AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions",
            "ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions",
            "SOFTMAX": "SoftmaxOptions", "FULLY_CONNECTED": "FullyConnectedOptions",
            "CONCATENATION": "ConcatenationOptions", "MEAN": "ReducerOptions"}


def _options(tfl: Any, name: str | None, op: Any) -> Any:
    cls = getattr(tfl, _OPTIONS.get(name or "", ""), None)
    table = op.BuiltinOptions()
    if cls is None or table is None:
        return None
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts


SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD", "SUB",
             "MUL", "RESHAPE", "SQUEEZE", "SOFTMAX", "FULLY_CONNECTED", "CONCATENATION",
             "MEAN", "PAD", *Unary.FUNCTIONS)


def _act(opts: Any) -> int:
    a = int(opts.FusedActivationFunction()) if opts is not None else 0
    if a not in _ACTIVATIONS:
        raise UserError(f"fused activation {a} is not supported; valid: NONE, RELU, "
                        "RELU_N1_TO_1, RELU6, TANH")
    return a


def _operator(f: TFLiteFile, name: str, opts: Any, ins: list[int], out: int) -> Op:
    """The module of one operator."""
    t = f.tensors
    const = [i for i in ins if i >= 0 and t[i].data is not None]
    live = tuple(i for i in ins if i >= 0 and t[i].data is None)
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        w = torch.from_numpy(t[ins[1]].value())  # (O, kh, kw, I) or (1, kh, kw, O)
        bias = torch.from_numpy(t[ins[2]].value()) if len(ins) > 2 and ins[2] >= 0 else None
        depthwise = name == "DEPTHWISE_CONV_2D"
        weight = (w.permute(3, 0, 1, 2) if depthwise else w.permute(0, 3, 1, 2)).contiguous()
        groups = t[ins[0]].shape[3] if depthwise else 1
        return Conv(live, out, weight, bias, groups, int(opts.Padding()),
                    (int(opts.StrideH()), int(opts.StrideW())),
                    (int(opts.DilationHFactor()), int(opts.DilationWFactor())), _act(opts))
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        return Pool(live, out, "max" if name == "MAX_POOL_2D" else "avg", int(opts.Padding()),
                    (int(opts.FilterHeight()), int(opts.FilterWidth())),
                    (int(opts.StrideH()), int(opts.StrideW())), _act(opts))
    if name in ("ADD", "SUB", "MUL"):
        c = _nchw(t[const[0]].value()) if const else None
        return Binary(live, out, name.lower(), _act(opts), c, bool(const) and ins[0] in const)
    if name in Unary.FUNCTIONS:
        return Unary(live, out, name)
    if name in ("RESHAPE", "SQUEEZE"):
        return Reshape(live, out, t[out].shape)
    if name == "SOFTMAX":
        return Softmax(live, out, float(opts.Beta()) if opts is not None else 1.0)
    if name == "FULLY_CONNECTED":
        bias = torch.from_numpy(t[ins[2]].value()) if len(ins) > 2 and ins[2] >= 0 else None
        return Dense(live, out, torch.from_numpy(t[ins[1]].value()), bias, _act(opts))
    if name == "CONCATENATION":
        return Concat(live, out, int(opts.Axis()), _act(opts))
    if name == "MEAN":
        axes = tuple(int(a) for a in np.atleast_1d(t[ins[1]].data))
        return Mean(live, out, axes, bool(opts.KeepDims()) if opts is not None else False)
    if name == "PAD":
        return Pad(live, out, t[ins[1]].data.reshape(-1, 2))
    raise UserError(f"{f.path}: operator {name} is not supported; valid: {', '.join(SUPPORTED)}")


def _names(f: TFLiteFile) -> list[str]:
    """Each operator's module path: its output tensor's name (up to the first ';'), its
    '/'-separated parts made identifiers, unique (``_2``, ``_3`` where they repeat)."""
    seen: dict[str, int] = {}
    names = []
    for i, (_, _, _, outs) in enumerate(f.ops):
        raw = f.tensors[outs[0]].name.split(";")[0]
        parts = [re.sub(r"\W", "_", p) for p in raw.split("/") if p] or [f"op{i}"]
        parts = [p if p[0].isalpha() or p[0] == "_" else f"_{p}" for p in parts if p]
        path = ".".join(parts)
        seen[path] = seen.get(path, 0) + 1
        names.append(path if seen[path] == 1 else f"{path}_{seen[path]}")
    return names


def convert(path: str | Path) -> TFLiteNet:
    """The file's network as a float module in eval mode (``read``, then one module per
    operator, ``SUPPORTED``)."""
    f = read(path)
    ops = [(path, _operator(f, name, opts, ins, outs[0]))
           for path, (name, opts, ins, outs) in zip(_names(f), f.ops, strict=True)]
    return TFLiteNet(ops, f.inputs[0], f.outputs[0]).eval()


def defaults(path: str | Path) -> tuple[tuple[tuple[float, ...], tuple[float, ...]] | None,
                                        tuple[int, int, int] | None]:
    """What the file says of its input: the normalization and [C, H, W] (``read``)."""
    f = read(path)
    return f.input_stats(), f.input_size()
