"""qgraph: a pass-based compiler that turns speech-recognition models into fast, small ONNX."""

__version__ = "0.1.0"
