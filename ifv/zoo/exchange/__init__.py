"""Networks stored in other frameworks' files, as float ``nn.Module``s: ONNX
(``model=onnx:PATH``, through onnx2torch) and TensorFlow Lite (``model=tflite:PATH``)."""
