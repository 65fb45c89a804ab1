"""Deployment: a generator exported to ONNX / TorchScript, and the inference backends the service and the CLI
run it on (PyTorch eager float32, PyTorch low precision, ONNX Runtime), chosen by measurement.

Depends on `models` only (and on `onnx` / `onnxruntime` where those backends are used). Seeds, noise and
uint8 images stay in `models.sampling`: a backend replaces the module's forward pass and nothing else.
"""
from .engines import BACKENDS, Backend, available
from .export import FORMATS, ParityError, export_model, read_exported_metadata
from .select import Selection, choose

__all__ = ["BACKENDS", "Backend", "FORMATS", "ParityError", "Selection", "available", "choose", "export_model",
           "read_exported_metadata"]
