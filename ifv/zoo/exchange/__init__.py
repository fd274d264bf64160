"""Networks stored in other frameworks' files, as float ``nn.Module``s: ONNX
(``model=onnx:PATH``, through onnx2torch) and TensorFlow Lite (``model=tflite:PATH``).

Each format's module has ``convert(path)`` (the network, its weights in) and
``defaults(path)`` (the normalization and input size [C, H, W] the file says, None where it
says nothing); ``FORMATS`` names them."""

from __future__ import annotations

from types import ModuleType

FORMATS = ("onnx", "tflite")


def file_format(kind: str) -> ModuleType:
    """The module of the format ``kind`` (one of ``FORMATS``)."""
    from ifv.zoo.exchange import onnx, tflite

    return {"onnx": onnx, "tflite": tflite}[kind]
