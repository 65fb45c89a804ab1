"""Inference backends: one generator's forward pass on one runtime.

A backend is called like the module (`backend(z, y)` or `backend(x)`) with host tensors (float32 inputs,
int64 labels) and returns the (B, C, H, W) output; it moves the inputs to its device itself. It exposes the
attributes `models.sampling` reads (`z_dim`, `num_classes`, `stride`, ...), so `generate` and `translate`
run through it unchanged: seeds, noise and uint8 conversion stay in one place.

    torch           PyTorch eager, float32: the reference every other backend is checked against
    torch-autocast  PyTorch eager under autocast: bfloat16 on the CPU, float16 on CUDA / MPS (or `low_dtype`)
    onnxruntime     the module exported to ONNX in memory, run by ONNX Runtime: CPU execution provider, on CUDA
                    the TensorRT and CUDA providers first when the installed onnxruntime has them
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

import torch
import torch.nn as nn

LOW_DTYPES = {"cpu": torch.bfloat16, "cuda": torch.float16, "mps": torch.float16}  # autocast's dtype by device
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
SHARED_ATTRIBUTES = ("z_dim", "num_classes", "img_resolution", "img_channels", "in_channels", "out_channels",
                     "stride", "config")


class Backend:
    """The forward pass of `module` (a loaded generator on `device`) on some runtime; see the module docstring."""

    name = "backend"

    def __init__(self, module: nn.Module, meta: dict[str, Any], device: torch.device | str):
        self.module, self.meta, self.device = module, meta, torch.device(device)
        for attr in SHARED_ATTRIBUTES:
            if hasattr(module, attr):
                setattr(self, attr, getattr(module, attr))

    @property
    def precision(self) -> str:
        return "float32"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What /models reports about the backend."""
        return {"backend": self.name, "precision": self.precision, "device": str(self.device)}


class TorchEager(Backend):
    name = "torch"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(*(t.to(self.device) for t in inputs))


class TorchAutocast(Backend):
    name = "torch-autocast"

    def __init__(self, module: nn.Module, meta: dict[str, Any], device: torch.device | str,
                 low_dtype: torch.dtype | None = None):
        super().__init__(module, meta, device)
        self.low_dtype = low_dtype or LOW_DTYPES.get(self.device.type, torch.bfloat16)

    @property
    def precision(self) -> str:
        return str(self.low_dtype).removeprefix("torch.")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.low_dtype):
            return self.module(*(t.to(self.device) for t in inputs)).float()


class OnnxRuntime(Backend):
    name = "onnxruntime"

    def __init__(self, module: nn.Module, meta: dict[str, Any], device: torch.device | str):
        from .export import onnx_bytes, onnx_runner

        super().__init__(module, meta, device)
        self.providers = onnx_providers(self.device)
        self._run = onnx_runner(onnx_bytes(module, meta), self.providers, threads=torch.get_num_threads())
        self.providers = list(self._run.session.get_providers())  # what the session really got

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._run(*inputs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}


def onnx_providers(device: torch.device) -> list[str]:
    """ONNX Runtime's providers for `device`, best first, among those the installed package has."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    gpu = [p for p in GPU_PROVIDERS if p in have] if device.type == "cuda" else []
    return gpu + ["CPUExecutionProvider"]


BACKENDS: dict[str, Callable[..., Backend]] = {
    "torch": TorchEager,
    "torch-autocast": TorchAutocast,
    "onnxruntime": OnnxRuntime,
}


def available(device: torch.device | str) -> list[str]:
    """The backends that can run on `device` with the packages installed here (the candidates of `auto`)."""
    device = torch.device(device)
    names = ["torch", "torch-autocast"]
    if importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None:
        if device.type == "cpu" or (device.type == "cuda" and onnx_providers(device)[0] != "CPUExecutionProvider"):
            names.append("onnxruntime")
    return names
