"""Generators a run did not export: its raw training weights, and EMAs of other decays computed after the run
from its weight snapshots (`snapshot_every`). Each is written as a checkpoint (BatchNorm statistics
recalibrated as the export's are) that `ganforge evaluate` reads. Run by hand:

    .venv/bin/python -m benchmarks.posthoc_ema runs/X runs/X_posthoc --decays 0.9995 --warmups 10,5,3
        # -> runs/X_posthoc/ema0.9995_w10, ...: each (decay, warmup) pair, the training config's `ema_decay` and
        # `ema_warmup` (the decay at step t is min(decay, (1+t)/(warmup+t)); --warmups defaults to the run's);
        # needs a run trained with --set snapshot_every=N (N ~ 1-2 % of the steps)
    .venv/bin/python -m benchmarks.posthoc_ema runs/X runs/X_posthoc --raw
        # -> runs/X_posthoc/raw: G's weights in the run's resume state (any run)
    .venv/bin/ganforge evaluate runs/X_posthoc/ema0.9995_w3 --seed 0 --json report.json

A snapshot every N steps stands for the N steps that end at it, so a post-hoc EMA matches the online one up to
the weights' drift within N steps (exactly, for N = 1; tests/test_posthoc_ema.py).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from models.checkpoint import load, save
from training.config import load_config
from training.ema import posthoc_ema
from training.loop import EXPORT_RECALIBRATION_BATCHES, SNAPSHOTS, STATE_NAME
from training.tasks import CONDITIONAL, TASKS


def _save_recalibrated(task, G: torch.nn.Module, meta: dict, out: Path, note: str) -> Path:
    task.recalibrate(G, batches=EXPORT_RECALIBRATION_BATCHES)  # as the run's export was (its own seeded noise)
    return save(G, out, {**meta, "note": note})


def _task(run: Path):
    """The run's task (its dataset), for the BatchNorm recalibration."""
    return TASKS[CONDITIONAL](load_config(run / "config.yaml"), torch.device("cpu"))


def export_raw(run: Path, out: Path, task=None) -> Path:
    """G's raw weights from the run's resume state."""
    G, meta = load(load_config(run / "config.yaml").export)  # the architecture and metadata of the export
    state = torch.load(run / STATE_NAME, map_location="cpu", weights_only=True)
    G.load_state_dict(state["G"])
    return _save_recalibrated(task or _task(run), G, meta, out, f"raw generator (no EMA) of {run / STATE_NAME} "
                                                                f"at step {state['step']}")


def snapshots(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's snapshots up to its exported step (a rollback by the collapse alarm exports an
    earlier step than the last snapshot written)."""
    found = sorted((int(p.stem.split("_")[1]), p) for p in (run / SNAPSHOTS).glob("G_*.safetensors"))
    exported = run / "export.json"
    if exported.exists():
        found = [(s, p) for s, p in found if s <= json.loads(exported.read_text())["step"]]
    if not found:
        raise SystemExit(f"no snapshots in {run / SNAPSHOTS}: train with --set snapshot_every=N")
    return found


def export_posthoc(run: Path, profiles: list[tuple[float, float]], out: Path, task=None) -> list[Path]:
    """The EMAs of `profiles` ((decay, warmup) pairs) at the run's last snapshot, one pass over the snapshots:
    out/ema<decay>_w<warmup> each."""
    found = snapshots(run)
    last_step, last = found[-1]
    G, meta = load(last)
    names = [n for n, _ in G.named_parameters()]
    emas = posthoc_ema(((s, load_file(str(p))) for s, p in found), profiles, names)
    every = found[1][0] - found[0][0] if len(found) > 1 else 0
    task, raw, paths = task or _task(run), load_file(str(last)), []
    for (decay, warmup), ema in emas.items():
        G.load_state_dict({**raw, **ema})
        paths.append(_save_recalibrated(task, G, meta, out / f"ema{decay:g}_w{warmup:g}",
                                        f"post-hoc EMA (decay {decay:g}, warmup {warmup:g}) at step {last_step} "
                                        f"from {len(found)} snapshots (every {every} steps)"))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the run's workdir (config.yaml, resume state, snapshots/)")
    p.add_argument("out", type=Path, help="folder for the checkpoints: raw/, ema<decay>/")
    numbers = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--decays", type=numbers, default=[], help="comma-separated EMA decays in [0, 1)")
    p.add_argument("--warmups", type=numbers, default=[],
                   help="comma-separated EMA warm-ups > 1, each paired with every decay (default: the run's)")
    p.add_argument("--raw", action="store_true", help="also the raw G of the resume state")
    args = p.parse_args()
    if not args.decays and not args.raw:
        p.error("nothing to export: give --decays and/or --raw")
    for decay in args.decays:
        if not 0 <= decay < 1:
            p.error(f"--decays: {decay} is not in [0, 1)")
    for warmup in args.warmups:
        if not warmup > 1:
            p.error(f"--warmups: {warmup} is not > 1")
    task = _task(args.run)
    warmups = args.warmups or [load_config(args.run / "config.yaml").ema_warmup]
    if args.raw:
        print(export_raw(args.run, args.out / "raw", task=task))
    if args.decays:
        profiles = [(decay, warmup) for decay in args.decays for warmup in warmups]
        print(*export_posthoc(args.run, profiles, args.out, task=task), sep="\n")


if __name__ == "__main__":
    main()
