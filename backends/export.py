"""`ganforge export CKPT --format onnx|torchscript --out FILE`: a servable generator as one self-describing file.

The file has a dynamic batch (image-to-image also a dynamic height and width) and carries the checkpoint's
metadata: ONNX as `metadata_props`, TorchScript as the extra file `ganforge.json`; the same flat map of
strings in both (JSON values), so `read_exported_metadata` reads either, without torch:

    kind, architecture, class_names, native_size, normalization, provenance, img_resolution, img_channels,
    z_dim (conditional), stride (image-to-image), inputs, output, source_sha256 (the checkpoint's weights
    file), parity, ganforge (the whole checkpoint metadata)

Before anything is written, the exported graph is run (ONNX Runtime / torch.jit.load) at PARITY_BATCHES
(image-to-image also at a second, non-square size) on the same random inputs as the PyTorch module; the
largest absolute difference of the [-1, 1] outputs is recorded in `parity` and must be <= `bound`
(PARITY_BOUND), or the export is refused with ParityError and no file is left behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from models import load
from models.checkpoint import atomic_write, file_hash, normalization

from .signature import OUTPUT, dynamic_axes, example_inputs, input_names

FORMATS = ("onnx", "torchscript")
PARITY_BOUND = 1e-4  # max |exported - eager| on [-1, 1] outputs; float32 reassociation stays near 1e-6
PARITY_BATCHES = (1, 3, 8)
OPSET = 18
EXTRA_FILE = "ganforge.json"  # TorchScript extra file holding the metadata map


class ParityError(ValueError):
    """The exported graph does not reproduce the PyTorch module within the bound."""


@contextlib.contextmanager
def jit_quiet() -> Iterator[None]:
    """torch.jit.save/load warn that TorchScript is deprecated (for torch.export); the format is still what
    libtorch and older serving stacks load, and the warning is not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(save|load)` is deprecated", category=FutureWarning)
        yield


def _eager(module: nn.Module) -> nn.Module:
    """A contiguous float32 CPU copy for tracing (the loaded module is channels-last on the CPU)."""
    return module.to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()


def onnx_bytes(module: nn.Module, meta: dict[str, Any]) -> bytes:
    """The module's forward as an ONNX graph (opset OPSET) with the signature's names and dynamic axes."""
    module = _eager(module)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on the U-Net's shape check (a no-op once traced)
        torch.onnx.export(module, example_inputs(module, meta, 2), buf, input_names=list(input_names(meta)),
                          output_names=[OUTPUT], dynamic_axes=dynamic_axes(meta), opset_version=OPSET,
                          dynamo=False)
    return buf.getvalue()


def torchscript_module(module: nn.Module, meta: dict[str, Any]) -> torch.jit.ScriptModule:
    """The module traced (eval mode, no gradients); batch and spatial sizes stay dynamic."""
    module = _eager(module)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, example_inputs(module, meta, 2), check_trace=False)


def parity_sizes(module: nn.Module, meta: dict[str, Any]) -> list[tuple[int, tuple[int, int] | None]]:
    """(batch, spatial size) pairs the export is checked at."""
    sizes: list[tuple[int, tuple[int, int] | None]] = [(b, None) for b in PARITY_BATCHES]
    if meta["kind"] == "image-to-image":  # a second, non-square size: height and width are dynamic too
        r, s = module.img_resolution, module.stride
        sizes.append((2, (r + s, max(s, r - s))))
    return sizes


def parity(module: nn.Module, meta: dict[str, Any], run: Callable[..., torch.Tensor]) -> dict[str, Any]:
    """Largest |run(inputs) - module(inputs)| over `parity_sizes`; `run` takes and returns CPU tensors."""
    module = _eager(module)
    worst, checked = 0.0, []
    with torch.no_grad():
        for i, (batch, size) in enumerate(parity_sizes(module, meta)):
            inputs = example_inputs(module, meta, batch, size, seed=i)
            expected, got = module(*inputs), run(*inputs)
            if got.shape != expected.shape:
                raise ParityError(f"exported graph gives shape {tuple(got.shape)} for inputs "
                                  f"{[tuple(t.shape) for t in inputs]}; PyTorch gives {tuple(expected.shape)}")
            worst = max(worst, float((got.float() - expected).abs().max()))
            checked.append(list(inputs[0].shape))
    return {"max_abs_diff": worst, "bound": PARITY_BOUND, "input_shapes": checked}


def onnx_runner(model: bytes | str, providers: list[str] | None = None,
                threads: int | None = None) -> Callable[..., torch.Tensor]:
    """`inputs -> output` through an ONNX Runtime session on `model` (bytes or a path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ONNX Runtime's idle pool threads spin by default: they took the CPU from torch's threads and the event
    # loop of the same process, and from other processes on a shared CPU (on 2 busy cores, torch eager right
    # after an ONNX Runtime call ran ~4x slower with spinning on, RESULTS.md); a few microseconds of wake-up
    # latency are the price of turning it off.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
        return torch.from_numpy(session.run(None, feed)[0])

    run.session = session  # type: ignore[attr-defined]
    return run


def _describe(module: nn.Module, meta: dict[str, Any], sha256: str, fmt: str, check: dict[str, Any]) -> dict[str, str]:
    """The flat string map embedded in the file (JSON values)."""
    values: dict[str, Any] = {
        "kind": meta["kind"], "architecture": meta["architecture"], "class_names": meta.get("class_names"),
        "native_size": meta.get("native_size"), "normalization": normalization(meta),
        "provenance": meta.get("provenance", {}), "img_resolution": module.img_resolution,
        "img_channels": module.img_channels, "inputs": list(input_names(meta)), "output": OUTPUT,
        "source_sha256": sha256, "parity": check,
        "export": {"format": fmt, "torch": torch.__version__, **({"opset": OPSET} if fmt == "onnx" else {})},
        "ganforge": meta,
    }
    if meta["kind"] == "conditional":
        values["z_dim"] = module.z_dim
    else:
        values["stride"] = module.stride
        values["task"] = meta.get("task", {})
    return {k: json.dumps(v, sort_keys=True) for k, v in values.items()}


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str,
           bound: float = PARITY_BOUND) -> dict[str, Any]:
    """Export a servable checkpoint's generator to `out` (written atomically) after the parity check.

    Returns {"out", "format", "parity": {max_abs_diff, bound, input_shapes}, "source_sha256"}; raises
    ParityError (nothing written) when the exported graph differs from PyTorch by more than `bound`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {list(FORMATS)}")
    module, meta = load(checkpoint, "cpu")
    input_names(meta)  # a clear error for discriminators and classifiers
    if fmt == "onnx":
        graph = onnx_bytes(module, meta)
        run = onnx_runner(graph)
    else:
        traced = torchscript_module(module, meta)
        buf = io.BytesIO()
        with jit_quiet():
            torch.jit.save(traced, buf)
            run = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")  # the saved file, not the tracer
    check = parity(module, meta, run)
    check["bound"] = bound
    if not check["max_abs_diff"] <= bound:  # NaN fails too
        raise ParityError(f"{fmt} export of {checkpoint} differs from PyTorch by {check['max_abs_diff']:.3g} "
                          f"(max abs, outputs in [-1, 1]); the bound is {bound:g}: not written")
    sha256 = file_hash(checkpoint)
    props = _describe(module, meta, sha256, fmt, check)
    if fmt == "onnx":
        import onnx

        model = onnx.load_from_string(graph)
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        data = model.SerializeToString()
        atomic_write(out, lambda tmp: tmp.write_bytes(data))
    else:
        extra = {EXTRA_FILE: json.dumps(props, sort_keys=True)}
        with jit_quiet():
            atomic_write(out, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
    return {"out": str(out), "format": fmt, "parity": check, "source_sha256": sha256}


def read_exported_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The embedded metadata of an exported file (ONNX or TorchScript), JSON-decoded; needs neither torch nor
    onnxruntime (TorchScript files are zip archives; ONNX is read with `onnx`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")), None)
            if name is None:
                raise ValueError(f"{path} is a TorchScript archive without ganforge metadata ({EXTRA_FILE})")
            props = json.loads(archive.read(name))
    else:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends
            raise ValueError(f"{path} is neither a TorchScript archive nor an ONNX model: {e}") from None
        props = {p.key: p.value for p in model.metadata_props}
        if "ganforge" not in props:
            raise ValueError(f"{path} is an ONNX model without ganforge metadata")
    return {k: json.loads(v) for k, v in props.items()}
