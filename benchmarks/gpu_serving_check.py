"""The serving path on a GPU, without BentoML (run by hand on a CUDA machine; not a test).

    python -m benchmarks.gpu_serving_check > gpu_check.json       # from the repository root

Loads each bundled checkpoint through `service.served.load_served` (device and dtype `auto`, as the service
does), and reports the dtype chosen with its precision check, whether the same seed gives the same image,
how far the GPU's images are from the CPU's, and the raw images/s of `render` at batch 1/16/64 in float32 and
in the chosen dtype (2 s each). The store model is stood in for by the checkpoint folder, so only torch,
numpy, Pillow and safetensors are needed on the GPU machine (run from the repository root, `models` and `service`
import from the checkout without installing the project).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from models import load
from models.checkpoint import file_hash
from models.sampling import generate, to_uint8
from service.served import load_served, render, translate

ROOT = Path(__file__).resolve().parents[1]


def images_per_second(served, batch: int, seconds: float = 2.0) -> int:
    render(served, [0] * batch, list(range(batch)), None)
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        render(served, [i % 10 for i in range(batch)], list(range(n, n + batch)), None)  # returns uint8: synced
        n += batch
    return round(n / (time.perf_counter() - start))


def main() -> None:
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    for name in ("fashion_mnist_cgan", "fashion_mnist_edges2image"):
        path = ROOT / "checkpoints" / name
        stored = SimpleNamespace(path=str(path), tag=name,  # the checkpoint is its own record
                                 info=SimpleNamespace(metadata={"sha256": file_hash(path)}, labels={}))
        served = load_served(name, stored)
        info = {"device": str(served.device), "dtype": str(served.dtype), "precision_check": served.precision_check}
        if served.meta["kind"] == "conditional":
            labels, seeds = [7] * 8, list(range(8))
            a, b = render(served, labels, seeds, None), render(served, labels, seeds, None)
            G, meta = load(path, "cpu")
            diff = np.abs(a.astype(int) - to_uint8(generate(G, labels, seeds), meta).astype(int))
            info.update(same_seed_same_image=bool(np.array_equal(a, b)),
                        gpu_vs_cpu_mean_level_diff=float(diff.mean()), gpu_vs_cpu_max_level_diff=int(diff.max()))
            full = load_served(name, stored, dtype_name="float32")
            for label, s in (("float32", full), (str(served.dtype).removeprefix("torch."), served)):
                for batch in (1, 16, 64):
                    info[f"images_per_s_{label}_batch{batch}"] = images_per_second(s, batch)
        else:
            edges = np.full((40, 52), 255, np.uint8)
            edges[10:30, 12:40] = 0
            info["translate_40x52_shape"] = list(translate(served, edges, derive=False).shape)
        out[name] = info
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
