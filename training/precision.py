"""Where the training step runs in bf16: `amp` = off | cuda | always | auto, and whether this CPU has the instructions
that make `always` pay (benchmarks/RESULTS.md, "bf16 autocast and torch.compile for training")."""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch

# /proc/cpuinfo flags of the CPU instructions that run bf16 matrix work natively (x86: AVX-512 BF16, AMX; Arm: BF16)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags as Linux lists them, or None where there is no such file."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return {flag for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
            for flag in line.split(":", 1)[1].split()}


def training_autocast(mode: str, device: torch.device, warn: bool = True, flags: set[str] | None = None):
    """The context the training step runs in for `amp` = off | cuda | always | auto (bf16 autocast, float32
    weights). `auto` is bf16 on CUDA and on a CPU whose flags name a bf16 instruction, float32 elsewhere (and
    where the flags cannot be read), and says which on a CPU.
    `always` on a CPU whose flags name no bf16 instruction warns once: oneDNN then emulates bf16, and the step
    ran at 0.11x float32 on an AVX2-only CPU (benchmarks/RESULTS.md, "bf16 autocast and torch.compile for training")."""
    if mode == "off" or (mode == "cuda" and device.type != "cuda"):
        return nullcontext()
    if device.type != "cpu":  # auto is bf16 on CUDA only (not on MPS); cuda and always on any such device
        native = mode != "auto" or device.type == "cuda"
        return torch.autocast(device.type, dtype=torch.bfloat16) if native else nullcontext()
    flags = cpu_flags() if flags is None else flags
    have = sorted(flags & set(CPU_BF16_FLAGS)) if flags else []
    if mode == "auto":
        if warn:
            said = f"bf16 autocast, this CPU has {', '.join(have)}" if have else \
                f"float32, this CPU's flags name none of {list(CPU_BF16_FLAGS)}"
            print(f"amp=auto: {said}", file=sys.stderr)
        return torch.autocast("cpu", dtype=torch.bfloat16) if have else nullcontext()
    if warn and flags is not None and not have:
        print(f"warning: amp=always on a CPU without bf16 instructions (none of {list(CPU_BF16_FLAGS)} in its "
              "flags): the step will be much slower than with amp=off", file=sys.stderr)
    return torch.autocast("cpu", dtype=torch.bfloat16)
