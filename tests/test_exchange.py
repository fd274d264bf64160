"""Networks from other frameworks' files: tiny ONNX and TensorFlow Lite files that the tests
build, converted and checked against numpy references written in the files' own layouts
(NCHW for ONNX, NHWC with TFLite's SAME padding for TFLite), then run through the faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ifv.errors import UserError
from ifv.faces.cli import main
from ifv.math.objective import tap
from ifv.zoo.registry import load, model_entry

tflite = pytest.importorskip("tflite")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
import flatbuffers  # noqa: E402  (a dependency of tflite)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RUN = ["features.n=4", "sampling.n_total=4", "fv.adam_steps=3", "fv.lbfgs_steps=3",
       "reopt.steps=2", "progress=false"]
RNG = np.random.default_rng(0)
# the quantized input of the TFLite net: uint8 pixels q = 255 x meaning (q - 128) / 128
IN_SCALE, IN_ZP = 1 / 128, 128


def _quantized(real: np.ndarray, axis: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 values, scales and zero points of ``real`` (per ``axis`` where given), and
    what they mean: the dequantized values the test compares against."""
    moved = real if axis is None else np.moveaxis(real, axis, 0).reshape(real.shape[axis], -1)
    lo = np.minimum(moved.min(axis=-1 if axis is not None else None), 0)
    hi = np.maximum(moved.max(axis=-1 if axis is not None else None), 0)
    scale = np.atleast_1d((hi - lo) / 255).astype(np.float32)
    zp = np.atleast_1d(np.round(-lo / scale)).astype(np.int64)
    shape = [1] * real.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.round(real / scale.reshape(shape) + zp.reshape(shape)), 0, 255)
    return q.astype(np.uint8), scale, zp


class _Writer:
    """A TFLite flatbuffer written with the tflite package's schema functions."""

    def __init__(self) -> None:
        self.b = flatbuffers.Builder(1024)
        self.buffers: list[bytes] = [b""]
        self.tensors: list[tuple] = []
        self.codes: list[int] = []
        self.ops: list[tuple] = []

    def tensor(self, name: str, shape: tuple[int, ...], dtype: int,
               data: np.ndarray | None = None, scale: np.ndarray | None = None,
               zp: np.ndarray | None = None, axis: int = 0) -> int:
        buf = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buf = len(self.buffers) - 1
        self.tensors.append((name, shape, dtype, buf, scale, zp, axis))
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int],
           options: tuple[int, object] | None = None) -> None:
        if code not in self.codes:
            self.codes.append(code)
        self.ops.append((self.codes.index(code), inputs, outputs, options))

    def _ints(self, values: list[int] | tuple[int, ...]) -> int:
        return self.b.CreateNumpyVector(np.asarray(values, dtype=np.int32))

    def finish(self, inputs: list[int], outputs: list[int]) -> bytes:
        b, t = self.b, tflite
        bufs = []
        for data in self.buffers:
            vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
            t.BufferStart(b)
            if vec is not None:
                t.BufferAddData(b, vec)
            bufs.append(t.BufferEnd(b))
        tens = []
        for name, shape, dtype, buf, scale, zp, axis in self.tensors:
            n, s = b.CreateString(name), self._ints(shape)
            q = None
            if scale is not None:
                sv = b.CreateNumpyVector(np.asarray(scale, np.float32))
                zv = b.CreateNumpyVector(np.asarray(zp, np.int64))
                t.QuantizationParametersStart(b)
                t.QuantizationParametersAddScale(b, sv)
                t.QuantizationParametersAddZeroPoint(b, zv)
                t.QuantizationParametersAddQuantizedDimension(b, axis)
                q = t.QuantizationParametersEnd(b)
            t.TensorStart(b)
            t.TensorAddShape(b, s)
            t.TensorAddType(b, dtype)
            t.TensorAddBuffer(b, buf)
            t.TensorAddName(b, n)
            if q is not None:
                t.TensorAddQuantization(b, q)
            tens.append(t.TensorEnd(b))
        ops = []
        for code, ins, outs, options in self.ops:
            iv, ov = self._ints(ins), self._ints(outs)
            opt = options[1](b) if options else None
            t.OperatorStart(b)
            t.OperatorAddOpcodeIndex(b, code)
            t.OperatorAddInputs(b, iv)
            t.OperatorAddOutputs(b, ov)
            if options:
                t.OperatorAddBuiltinOptionsType(b, options[0])
                t.OperatorAddBuiltinOptions(b, opt)
            ops.append(t.OperatorEnd(b))
        codes = []
        for code in self.codes:
            t.OperatorCodeStart(b)
            t.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            t.OperatorCodeAddBuiltinCode(b, code)
            t.OperatorCodeAddVersion(b, 1)
            codes.append(t.OperatorCodeEnd(b))
        vectors = {}
        for key, items in (("tensors", tens), ("ops", ops), ("codes", codes), ("bufs", bufs)):
            b.StartVector(4, len(items), 4)
            for item in reversed(items):
                b.PrependUOffsetTRelative(item)
            vectors[key] = b.EndVector()
        iv, ov = self._ints(inputs), self._ints(outputs)
        t.SubGraphStart(b)
        t.SubGraphAddTensors(b, vectors["tensors"])
        t.SubGraphAddInputs(b, iv)
        t.SubGraphAddOutputs(b, ov)
        t.SubGraphAddOperators(b, vectors["ops"])
        graph = t.SubGraphEnd(b)
        b.StartVector(4, 1, 4)
        b.PrependUOffsetTRelative(graph)
        graphs = b.EndVector()
        t.ModelStart(b)
        t.ModelAddVersion(b, 3)
        t.ModelAddOperatorCodes(b, vectors["codes"])
        t.ModelAddSubgraphs(b, graphs)
        t.ModelAddBuffers(b, vectors["bufs"])
        b.Finish(t.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _conv_options(depthwise: bool, stride: int, activation: int):
    t = tflite

    def write(b: flatbuffers.Builder) -> int:
        (t.DepthwiseConv2DOptionsStart if depthwise else t.Conv2DOptionsStart)(b)
        p = "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions"
        getattr(t, f"{p}AddPadding")(b, t.Padding.SAME)
        getattr(t, f"{p}AddStrideW")(b, stride)
        getattr(t, f"{p}AddStrideH")(b, stride)
        getattr(t, f"{p}AddFusedActivationFunction")(b, activation)
        getattr(t, f"{p}AddDilationWFactor")(b, 1)
        getattr(t, f"{p}AddDilationHFactor")(b, 1)
        if depthwise:
            t.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
        return getattr(t, f"{p}End")(b)

    kind = (t.BuiltinOptions.DepthwiseConv2DOptions if depthwise
            else t.BuiltinOptions.Conv2DOptions)
    return kind, write


def _pool_options(size: int):
    t = tflite

    def write(b: flatbuffers.Builder) -> int:
        t.Pool2DOptionsStart(b)
        t.Pool2DOptionsAddPadding(b, t.Padding.VALID)
        for f in (t.Pool2DOptionsAddStrideW, t.Pool2DOptionsAddStrideH,
                  t.Pool2DOptionsAddFilterWidth, t.Pool2DOptionsAddFilterHeight):
            f(b, size)
        return t.Pool2DOptionsEnd(b)

    return t.BuiltinOptions.Pool2DOptions, write


def _tflite_net(path: Path, extra_op: int | None = None) -> dict[str, np.ndarray]:
    """An 8x8 uint8 network in TFLite's NHWC layout: a 3x3 stride-2 SAME convolution with
    per-tensor weights and RELU6 (8 -> 4: the padding row and column at the bottom and
    right), a 3x3 depthwise SAME convolution with per-channel weights and RELU6, a residual
    ADD, a 4x4 average pool, a RESHAPE to (1, 5) and a SOFTMAX. Returns the dequantized
    weights the file means."""
    t, w = tflite.TensorType, _Writer()
    u8 = dict(dtype=t.UINT8, scale=np.float32([0.05]), zp=np.int64([0]))
    x = w.tensor("input", (1, 8, 8, 3), t.UINT8, scale=np.float32([IN_SCALE]),
                 zp=np.int64([IN_ZP]))
    q1, s1, z1 = _quantized(RNG.normal(size=(5, 3, 3, 3)).astype(np.float32))
    k1 = w.tensor("net/conv1/weights", (5, 3, 3, 3), t.UINT8, q1, s1, z1)
    b1 = RNG.integers(-500, 500, 5).astype(np.int32)
    bias_scale = np.float32(IN_SCALE * s1[0])
    c1 = w.tensor("net/conv1/bias", (5,), t.INT32, b1, np.float32([bias_scale]), np.int64([0]))
    h1 = w.tensor("net/conv1/Relu6;net/conv1/BiasAdd", (1, 4, 4, 5), **u8)
    w.op(tflite.BuiltinOperator.CONV_2D, [x, k1, c1], [h1],
         _conv_options(False, 2, tflite.ActivationFunctionType.RELU6))
    q2, s2, z2 = _quantized(RNG.normal(size=(1, 3, 3, 5)).astype(np.float32), axis=3)
    k2 = w.tensor("net/dw/weights", (1, 3, 3, 5), t.UINT8, q2, s2, z2, axis=3)
    b2 = RNG.normal(size=5).astype(np.float32)
    c2 = w.tensor("net/dw/bias", (5,), t.FLOAT32, b2)
    h2 = w.tensor("net/dw/Relu6", (1, 4, 4, 5), **u8)
    w.op(tflite.BuiltinOperator.DEPTHWISE_CONV_2D, [h1, k2, c2], [h2],
         _conv_options(True, 1, tflite.ActivationFunctionType.RELU6))
    h3 = w.tensor("net/add", (1, 4, 4, 5), **u8)
    w.op(extra_op or tflite.BuiltinOperator.ADD, [h1, h2], [h3])
    h4 = w.tensor("net/pool", (1, 1, 1, 5), **u8)
    w.op(tflite.BuiltinOperator.AVERAGE_POOL_2D, [h3], [h4], _pool_options(4))
    shape = w.tensor("net/shape", (2,), t.INT32, np.int32([1, 5]))
    h5 = w.tensor("net/logits", (1, 5), **u8)
    w.op(tflite.BuiltinOperator.RESHAPE, [h4, shape], [h5])
    h6 = w.tensor("net/Softmax", (1, 5), t.UINT8, scale=np.float32([1 / 256]),
                  zp=np.int64([0]))
    w.op(tflite.BuiltinOperator.SOFTMAX, [h5], [h6])
    path.write_bytes(w.finish([x], [h6]))
    return {"w1": (q1.astype(np.float32) - z1[0]) * s1[0], "b1": b1 * bias_scale,
            "w2": (q2.astype(np.float32) - z2.reshape(1, 1, 1, -1)) * s2.reshape(1, 1, 1, -1),
            "b2": b2}


def _nhwc_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int,
               depthwise: bool) -> np.ndarray:
    """TFLite's SAME convolution on NHWC, written out: pad (total // 2 before, the rest
    after), then sum over each output's 3x3 window."""
    n, h, wd, _ = x.shape
    out = -(-h // stride)
    total = max((out - 1) * stride + 3 - h, 0)
    xp = np.pad(x, ((0, 0), (total // 2, total - total // 2),
                    (total // 2, total - total // 2), (0, 0)))
    y = np.zeros((n, out, out, w.shape[3] if depthwise else w.shape[0]), np.float64)
    for i in range(out):
        for j in range(out):
            patch = xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3, :]
            y[:, i, j] = (np.einsum("nhwc,hwc->nc", patch, w[0]) if depthwise
                          else np.einsum("nhwc,ohwc->no", patch, w))
    return y + b


def _reference(x01: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
    """The TFLite net of ``_tflite_net`` on images in [0, 1] (N, H, W, 3), in numpy."""
    x = (np.round(x01 * 255) - IN_ZP) * IN_SCALE
    h1 = np.clip(_nhwc_conv(x, f["w1"], f["b1"], 2, False), 0, 6)
    h2 = np.clip(_nhwc_conv(h1, f["w2"], f["b2"], 1, True), 0, 6)
    logits = (h1 + h2).mean(axis=(1, 2))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _onnx_net(path: Path) -> dict[str, np.ndarray]:
    """A 3x8x8 ONNX network: Conv (pads 1) + Relu, global average pool, Flatten, Gemm."""
    w = {"w1": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32),
         "b1": RNG.normal(size=4).astype(np.float32),
         "w2": RNG.normal(size=(5, 4)).astype(np.float32),
         "b2": RNG.normal(size=5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("exchange")
    return {"tflite": (root / "tiny.tflite", _tflite_net(root / "tiny.tflite")),
            "onnx": (root / "tiny.onnx", _onnx_net(root / "tiny.onnx"))}


def test_a_tflite_file_computes_what_it_means(nets: dict) -> None:
    """The converted TFLite net equals the numpy reference in NHWC, with the input range read
    from the file's quantization (an image x in [0, 1] is the pixel q = 255 x)."""
    path, weights = nets["tflite"]
    spec = model_entry(f"tflite:{path}")
    assert spec.input_size == (8, 8) and spec.in_channels == 3
    mean, std = spec.normalize
    assert mean == pytest.approx((IN_ZP / 255,) * 3) and std == pytest.approx(
        (1 / (255 * IN_SCALE),) * 3)
    net = load(spec)
    x = np.round(RNG.uniform(size=(2, 8, 8, 3)) * 255) / 255
    got = net(torch.from_numpy(x).permute(0, 3, 1, 2).float()).double().numpy()
    np.testing.assert_allclose(got, _reference(x, weights), atol=1e-5)
    assert {"net.conv1.Relu6", "net.dw.Relu6", "net.dw.Relu6.preact", "net.add", "net.pool",
            "net.logits"} <= set(spec.layers)
    assert spec.layers["net.dw.Relu6"] == 5 and spec.name == "tflite:tiny.tflite"
    with torch.no_grad():  # the fused RELU6's input is tapped before it
        pre = tap(net, "net.conv1.Relu6.preact", torch.from_numpy(x).permute(0, 3, 1, 2).float())
    ref = _nhwc_conv((np.round(x * 255) - IN_ZP) * IN_SCALE, weights["w1"], weights["b1"], 2,
                     False)
    np.testing.assert_allclose(pre.permute(0, 2, 3, 1).double().numpy(), ref, atol=1e-5)
    assert (ref < 0).any() and (ref > 6).any()  # so the tap is not the activation's output


def test_an_onnx_file_computes_what_it_means(nets: dict) -> None:
    """The converted ONNX net equals the numpy reference; its input size comes from the
    graph; ONNX says nothing of the range, so there is no normalization."""
    path, w = nets["onnx"]
    spec = model_entry(f"onnx:{path}")
    assert (spec.in_channels, *spec.input_size) == (3, 8, 8) and spec.normalize is None
    assert {"conv1", "relu1", "pool", "fc"} <= set(spec.layers)
    x = RNG.uniform(size=(2, 3, 8, 8)).astype(np.float32)
    c = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w["w1"]),
                                   torch.from_numpy(w["b1"]), padding=1).numpy()
    ref = np.maximum(c, 0).mean((2, 3)) @ w["w2"].T + w["b2"]
    np.testing.assert_allclose(load(spec)(torch.from_numpy(x)).numpy(), ref, atol=1e-5)


def test_a_changed_file_is_another_network(nets: dict, tmp_path: Path) -> None:
    """The cache key is the file's content: a copy keys alike, a changed file does not."""
    path, _ = nets["tflite"]
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(path.read_bytes())
    key = model_entry(f"tflite:{copy}").key()
    assert model_entry(f"tflite:{path}").key() != model_entry(f"onnx:{nets['onnx'][0]}").key()
    _tflite_net(copy)  # new weights in the same place
    assert model_entry(f"tflite:{copy}").key() != key


def test_files_through_run_invert_and_layers(nets: dict, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """Both files run through ifv run and ifv invert, tapped under their own names, and
    ifv layers lists those names."""
    for kind, layer in (("tflite", "net.dw.Relu6"), ("onnx", "relu1")):
        model = f"model={kind}:{nets[kind][0]}"
        assert main(["layers", model]) == 0
        assert layer in capsys.readouterr().out
        out = tmp_path / kind
        assert main(["run", model, f"layer={layer}", *RUN, f"hydra.run.dir={out}"]) == 0
        df = pd.read_parquet(out / "results.parquet")
        assert len(df) == 4 and df.angle_pred.notna().all()
        image = tmp_path / f"{kind}.npy"
        np.save(image, RNG.uniform(size=(3, 8, 8)).astype(np.float32))
        assert main(["invert", str(image), model, f"layer={layer}", "features.n=4",
                     f"invert.out={tmp_path / (kind + '.json')}", "progress=false"]) == 0
        assert (tmp_path / f"{kind}.json").exists()


@pytest.mark.parametrize("case", ["missing", "not_tflite", "not_onnx", "unsupported_op"])
def test_bad_files_are_one_line(case: str, nets: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 64)
    model, match = {
        "missing": (f"tflite:{tmp_path / 'none.tflite'}", "no file"),
        "not_tflite": (f"tflite:{bad}", "not a TensorFlow Lite file"),
        "not_onnx": (f"onnx:{bad}", "not an ONNX model"),
        "unsupported_op": (f"tflite:{tmp_path / 'op.tflite'}", "TRANSPOSE_CONV is not supported"),
    }[case]
    if case == "unsupported_op":
        _tflite_net(tmp_path / "op.tflite", tflite.BuiltinOperator.TRANSPOSE_CONV)
    with pytest.raises(UserError, match=match) as err:
        load(model_entry(model))
    assert "\n" not in str(err.value)
