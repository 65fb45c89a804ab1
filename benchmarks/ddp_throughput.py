"""Training images/s of a recipe at 1 and 2 processes (torchrun, gloo on the CPU), side by side in one run,
with the share of the 2-process step that goes to communication.

Run by hand:  .venv/bin/python benchmarks/ddp_throughput.py [--config configs/fashion_mnist_cgan.yaml] [--steps 40]

Three runs of the same config, one after the other, each `steps` generator steps of the same global batch B:
  1 process     one `ganforge train`, torch using every core (intra-op threads)
  2 processes   `torchrun --nproc_per_node=2`, one thread each, B/2 rows per rank, gradients all-reduced (DDP),
                BatchNorm over the global batch (batchnorm: sync, the recipes' setting)
  2 independent two single-process runs at the same time with batch B/2 and one thread each: the same
                computation on the same cores as "2 processes", with no communication at all
images/s = global-batch images per second (generator steps x B / s), the median of the log intervals after the
first (start-up excluded), as the loop logs it to TensorBoard (`speed/images_per_s`). Communication share =
1 - (2 processes) / (2 independent): the part of the DDP step spent in, or waiting for, collectives.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(tmp: Path, name: str, steps: int, log_every: int, batch: int | None = None) -> list[str]:
    sets = [f"workdir={tmp}/{name}/run", f"export={tmp}/{name}/ckpt", f"steps={steps}", f"log_every={log_every}",
            "sample_every=1000000", "state_every=1000000", "collapse_check_every=0", "max_minutes=null",
            "device=cpu"]
    if batch is not None:
        sets.append(f"batch_size={batch}")
    return [a for s in sets for a in ("--set", s)]


def rate(run: Path) -> float:
    """Median images/s over the log intervals after the first."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    values = [e.value for e in acc.Scalars("speed/images_per_s")][1:]
    return statistics.median(values)


def launch(cmd: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(*procs: subprocess.Popen) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            sys.exit(f"a benchmark run failed ({p.args[:4]}...):\n{err[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/fashion_mnist_cgan.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/ddp_throughput")
    args = ap.parse_args()
    from training.config import load_config

    batch = load_config(args.config).batch_size
    cli = [sys.executable, "-m", "training.cli", "train", args.config]
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        load_before = os.getloadavg()
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        finish(launch(cli + overrides(tmp, "one", args.steps, args.log_every), threads=cores))
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                    "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "-m", "training.cli", "train",
                    args.config]
        finish(launch(torchrun + overrides(tmp, "ddp", args.steps, args.log_every), threads=1))
        finish(*[launch(cli + overrides(tmp, f"solo{i}", args.steps, args.log_every, batch // 2), threads=1)
                 for i in range(2)])
        one, ddp = rate(tmp / "one" / "run"), rate(tmp / "ddp" / "run")
        solo = rate(tmp / "solo0" / "run") + rate(tmp / "solo1" / "run")
        load_after = os.getloadavg()
    result = {"config": args.config, "global_batch": batch, "steps": args.steps, "date": started,
              "machine": f"{platform.machine()}, {cores} CPUs, torch {torch.__version__}",
              "loadavg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
              "images_per_s": {"1 process": round(one, 1), "2 processes (DDP, gloo)": round(ddp, 1),
                               "2 independent (no communication)": round(solo, 1)},
              "speed_up_2_vs_1": round(ddp / one, 3), "communication_share": round(1 - ddp / solo, 3)}
    print(f"{'run':36s} images/s")
    for name, value in result["images_per_s"].items():
        print(f"{name:36s} {value:8.1f}")
    print(f"2 vs 1 process: x{result['speed_up_2_vs_1']}; communication share of the DDP step: "
          f"{result['communication_share']:.1%}; load average {result['loadavg_1min_before_after']}")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{time.strftime('%Y%m%d-%H%M', time.gmtime())}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
