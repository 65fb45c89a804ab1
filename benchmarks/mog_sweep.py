"""Sweep the mixture-of-Gaussians lab: every loss x regularizer strength x seeds, on the ring and the grid.

    .venv/bin/python -m benchmarks.mog_sweep --out benchmarks/results/mog_sweep --jobs 4
    .venv/bin/python -m benchmarks.mog_sweep --out /tmp/smoke --datasets ring --losses hinge \\
        --strengths 0,1 --seeds 0 --steps 300                                      # a smoke run

Each loss is swept over R1 gamma (its gradient penalty on real data); "wasserstein" is swept over the WGAN-GP
lambda instead (lambda = 0 is the unconstrained critic). `--regularizers r1,gp` also sweeps GP for the other losses.
Every finished run is appended to OUT/runs.jsonl and a rerun skips those already there, so an interrupted sweep
resumes. At the end OUT/mog_sweep.md gets the tables (per dataset: modes covered, high-quality share, KL to
uniform, generator gradient norm; mean over seeds with min-max) and OUT/mog_sweep.png the plot (modes covered vs
regularizer strength, one line per loss). Before running, the script times a few hundred steps of each kind of run
and prints the estimated total; `--estimate` stops there.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from training.losses import LOSSES
from training.mog import MogConfig, get_mixture, train_mog

DEFAULT_STRENGTHS = "0,0.01,0.1,1,10,100"
REGULARIZER_FIELD = {"r1": "r1_gamma", "gp": "gp_lambda"}
REGULARIZER_LABEL = {"r1": "R1 γ", "gp": "GP λ"}


def plan(datasets: list[str], losses: list[str], regularizers: list[str], strengths: list[float],
         seeds: list[int], steps: dict[str, int]) -> list[tuple[str, str, float, MogConfig]]:
    """(run key, regularizer, strength, config) for every run of the sweep; strength 0 is run once per loss."""
    runs = []
    for dataset in datasets:
        for loss in losses:
            regs = ["gp"] if loss == "wasserstein" else regularizers
            for reg in regs:
                for strength in strengths:
                    if strength == 0 and reg != regs[0]:
                        continue  # no regularizer is the same run whichever one is at 0
                    for seed in seeds:
                        penalties = {"r1_gamma": 0.0, "gp_lambda": 0.0, REGULARIZER_FIELD[reg]: strength}
                        cfg = MogConfig(dataset=dataset, loss=loss, seed=seed, steps=steps.get(dataset, 0), **penalties)
                        key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)  # resume reuses only equal runs
                        runs.append((key, reg, strength, cfg))
    return runs


def run_one(key: str, reg: str, strength: float, cfg: MogConfig) -> dict:
    """One lab run in a worker process, reduced to what the tables need."""
    torch.set_num_threads(1)
    report = train_mog(cfg)[1]
    keep = ("modes_covered", "num_modes", "high_quality", "kl", "g_grad_norm", "diverged", "history", "seconds",
            "cpu_seconds")
    return {"key": key, "dataset": cfg.dataset, "loss": cfg.loss, "regularizer": reg, "strength": strength,
            "seed": cfg.seed, "steps": cfg.steps, **{k: report[k] for k in keep}}


def estimate_seconds(runs: list[tuple[str, str, float, MogConfig]], jobs: int, probe_steps: int = 200) -> float:
    """CPU-seconds per step of each run kind (no penalty / R1 / GP), times the planned steps, over `jobs` workers."""
    torch.set_num_threads(1)
    per_step = {}
    for reg, fields in (("none", {}), ("r1", {"r1_gamma": 1.0}), ("gp", {"gp_lambda": 1.0})):
        cfg = MogConfig(steps=probe_steps, eval_every=0, **{"r1_gamma": 0.0, **fields})
        per_step[reg] = train_mog(cfg)[1]["cpu_seconds"] / probe_steps
    total = sum(per_step["none" if s == 0 else reg] * cfg.steps for _, reg, s, cfg in runs)
    return total / jobs


# ------------------------------------------------------------------------------------------------ report


def _stats(values: list[float | None]) -> tuple[float, float, float, int] | None:
    """(mean, min, max, missing) of the finite values; None when there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return sum(vals) / len(vals), min(vals), max(vals), len(values) - len(vals)


def _cell(values: list[float | None], fmt: str) -> str:
    s = _stats(values)
    if s is None:
        return "–"
    mean, lo, hi, missing = s
    ends = [f"{v:.0f}" if float(v).is_integer() else fmt.format(v) for v in (lo, hi)]  # modes: 3–8, not 3.0–8.0
    text = fmt.format(mean) if lo == hi else f"{fmt.format(mean)} ({ends[0]}–{ends[1]})"
    return text + (f" [{missing}×n/a]" if missing else "")


def _series(rows: list[dict]) -> dict[tuple[str, str, str], dict[float, list[dict]]]:
    """(dataset, loss, regularizer) -> strength -> runs; the unregularized runs join every regularizer's series."""
    out: dict[tuple[str, str, str], dict[float, list[dict]]] = {}
    for row in rows:
        key = (row["dataset"], row["loss"], row["regularizer"])
        out.setdefault(key, {}).setdefault(row["strength"], []).append(row)
    for (dataset, loss, reg), by_strength in out.items():
        for (d2, l2, r2), other in out.items():
            if (d2, l2) == (dataset, loss) and r2 != reg and 0.0 in other and 0.0 not in by_strength:
                by_strength[0.0] = other[0.0]
    return out


METRICS = [  # (title, row -> value, format)
    ("modes covered (of {K})", lambda r: r["modes_covered"], "{:.1f}"),
    ("high-quality samples (%)", lambda r: 100 * r["high_quality"], "{:.0f}"),
    ("KL(mode histogram ‖ uniform), nats; n/a = no high-quality sample", lambda r: r["kl"], "{:.2f}"),
    ("generator gradient norm, mean over the first 10% of steps", lambda r: r["g_grad_norm"]["first_10pct"], "{:.3g}"),
    ("generator gradient norm, mean over the run", lambda r: r["g_grad_norm"]["mean"], "{:.3g}"),
]


def markdown(rows: list[dict], strengths: list[float], command: str) -> str:
    """One table per dataset and metric: rows loss x regularizer, columns strength, cells mean (min–max) of seeds."""
    series = _series(rows)
    seeds = sorted({r["seed"] for r in rows})
    cpu = sum(r["cpu_seconds"] for r in rows)
    lines = ["# Mixture-of-Gaussians sweep\n", f"`{command}`\n",
             f"{len(rows)} runs, seeds {seeds}, {cpu / 3600:.2f} CPU-hours. Each cell: mean over seeds "
             f"(min–max). Defaults otherwise as in `training/mog.py` `MogConfig` (a mode is covered when it has "
             f"≥ {MogConfig.min_count} of {MogConfig.eval_samples} samples within 3σ of its centre). "
             f"`wasserstein` is swept over the WGAN-GP λ.\n"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        k = get_mixture(dataset).num_modes
        steps = sorted({r["steps"] for r in rows if r["dataset"] == dataset})
        keys = [key for key in series if key[0] == dataset]
        for title, value, fmt in METRICS:
            lines.append(f"## {dataset} ({k} modes, {'/'.join(map(str, steps))} steps): {title.format(K=k)}\n")
            lines.append("| loss | regularizer | " + " | ".join(f"{s:g}" for s in strengths) + " |")
            lines.append("|---|---|" + "---|" * len(strengths))
            for key in keys:
                cells = [_cell([value(r) for r in series[key].get(s, [])], fmt) if s in series[key] else ""
                         for s in strengths]
                lines.append(f"| {key[1]} | {REGULARIZER_LABEL[key[2]]} | " + " | ".join(cells) + " |")
            lines.append("")
        diverged = [r for r in rows if r["dataset"] == dataset and r["diverged"]]
        if diverged:
            lines.append(f"Diverged (non-finite loss) on {dataset}: " + ", ".join(
                f"{r['loss']} {r['regularizer']}={r['strength']:g} seed {r['seed']}" for r in diverged) + "\n")
    return "\n".join(lines)


COLOURS = {"minimax": (214, 39, 40), "non-saturating": (255, 127, 14), "hinge": (31, 119, 180),
           "wasserstein": (44, 160, 44), "least-squares": (148, 103, 189)}


def plot(rows: list[dict], strengths: list[float], path: Path) -> None:
    """Modes covered (mean over seeds, bars min–max) vs regularizer strength, a panel per dataset; drawn with PIL."""
    from PIL import Image, ImageDraw

    series = _series(rows)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    pw, ph, left, top, bottom = 520, 360, 50, 30, 40
    keys_all = list(dict.fromkeys((k[1], k[2]) for k in series))
    img = Image.new("RGB", (max(pw * len(datasets), 760), ph + 18 * math.ceil(len(keys_all) / 3) + 8), "white")
    draw = ImageDraw.Draw(img)
    # thick: each loss's main sweep (R1, or GP for wasserstein); thin: the optional GP sweep of the others
    width = lambda loss, reg: 3 if reg == ("gp" if loss == "wasserstein" else "r1") else 1  # noqa: E731
    label = {"r1": "R1 gamma", "gp": "GP lambda"}  # PIL's default font has no Greek letters
    for d, dataset in enumerate(datasets):
        k = get_mixture(dataset).num_modes
        x0, x1, y0, y1 = d * pw + left, (d + 1) * pw - 15, top, ph - bottom
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 8), f"{dataset}: modes covered (of {k}) vs regularizer strength", fill="black")
        xs = {s: x0 + 20 + i * (x1 - x0 - 40) / max(len(strengths) - 1, 1) for i, s in enumerate(strengths)}
        y = lambda v: y1 - v / k * (y1 - y0)  # noqa: E731
        for s, xp in xs.items():
            draw.line([xp, y1, xp, y1 + 4], fill="black")
            draw.text((xp - 10, y1 + 8), f"{s:g}", fill="black")
        for tick in range(0, k + 1, 1 if k <= 10 else 5):
            draw.line([x0 - 4, y(tick), x0, y(tick)], fill="black")
            draw.text((x0 - 24, y(tick) - 6), str(tick), fill="black")
        for j, (loss, reg) in enumerate(keys_all):
            by_strength = series.get((dataset, loss, reg))
            if not by_strength:
                continue
            colour, shift = COLOURS.get(loss, (0, 0, 0)), (j - len(keys_all) / 2) * 3  # spread the error bars
            points = []
            for s in strengths:
                vals = [r["modes_covered"] for r in by_strength.get(s, [])]
                if vals:
                    xp = xs[s] + shift
                    draw.line([xp, y(min(vals)), xp, y(max(vals))], fill=colour)
                    points.append((xp, y(sum(vals) / len(vals))))
            if len(points) > 1:
                draw.line(points, fill=colour, width=width(loss, reg))
            for xp, yp in points:
                draw.ellipse([xp - 3, yp - 3, xp + 3, yp + 3], fill=colour)
    for j, (loss, reg) in enumerate(keys_all):
        lx, ly = 10 + (j % 3) * 250, ph + 4 + 18 * (j // 3)
        draw.line([lx, ly + 6, lx + 24, ly + 6], fill=COLOURS.get(loss, (0, 0, 0)), width=width(loss, reg))
        draw.text((lx + 30, ly), f"{loss}, {label[reg]}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for runs.jsonl, mog_sweep.md and mog_sweep.png")
    p.add_argument("--datasets", default="ring,grid")
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--regularizers", default="r1", help="r1 and/or gp for the non-Wasserstein losses")
    p.add_argument("--strengths", default=DEFAULT_STRENGTHS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=MogConfig.steps, help="generator steps on the ring")
    p.add_argument("--grid-steps", type=int, default=4 * MogConfig.steps,
                   help="generator steps on the grid (the default recipe had 12/25 modes at 4,000 and was rising)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, one CPU thread each")
    p.add_argument("--estimate", action="store_true", help="print the planned runs and estimated time, then stop")
    args = p.parse_args(argv)

    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    strengths = sorted(float(s) for s in split(args.strengths))
    regularizers = split(args.regularizers)
    for reg in regularizers:
        if reg not in REGULARIZER_FIELD:
            p.error(f"unknown regularizer {reg!r}; allowed: {list(REGULARIZER_FIELD)}")
    try:
        runs = plan(split(args.datasets), split(args.losses), regularizers, strengths,
                    [int(s) for s in split(args.seeds)], {"ring": args.steps, "grid": args.grid_steps})
    except ValueError as e:
        p.error(str(e))

    out = Path(args.out)
    log = out / "runs.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    todo = [r for r in runs if r[0] not in done]
    eta = estimate_seconds(todo, args.jobs) if todo else 0.0
    print(f"{len(runs)} runs planned, {len(runs) - len(todo)} already in {log}; {len(todo)} to go, estimated "
          f"{eta / 60:.1f} min with {args.jobs} job(s) on idle cores", file=sys.stderr)
    if args.estimate:
        return 0

    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    spawn = multiprocessing.get_context("spawn")  # no fork of a process whose torch thread pools already ran
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn) as pool, log.open("a") as f:
        futures = [pool.submit(run_one, *r) for r in todo]
        for i, future in enumerate(as_completed(futures), 1):
            row = future.result()
            done[row["key"]] = row
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"[{i}/{len(todo)} {time.time() - start:.0f}s] {row['dataset']} {row['loss']} "
                  f"{row['regularizer']}={row['strength']:g} seed {row['seed']}: "
                  f"{row['modes_covered']}/{row['num_modes']} modes, {100 * row['high_quality']:.0f}% HQ",
                  file=sys.stderr)

    rows = [done[key] for key, *_ in runs]  # this sweep's runs only, in plan order
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", "benchmarks.mog_sweep", *(argv or sys.argv[1:])])
    (out / "mog_sweep.md").write_text(markdown(rows, strengths, command))
    plot(rows, strengths, out / "mog_sweep.png")
    print(f"wrote {out / 'mog_sweep.md'} and {out / 'mog_sweep.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
