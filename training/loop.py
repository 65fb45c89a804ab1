"""The GAN training loop: D-steps, G-step, EMA; resume state, TensorBoard, sample grids, final export.

One loop serves both kinds of model; what differs lives in a task object (training/tasks.py). Under torchrun
each rank runs it on its share of every global batch; process group, DDP, rank-0 writes and the stop decisions
all ranks agree on are at its edges (training/distributed.py, docs/distributed.md).
The batch order (loader.py), the EMA and BatchNorm helpers (ema.py), the learning-rate schedule (optim.py)
and the mode-collapse alarm (collapse.py) each have their own module.
"""
from __future__ import annotations

import copy
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models import build, save
from models.checkpoint import CONDITIONAL, IMAGE_TO_IMAGE, atomic_write, to_device
from models.sampling import pick_device

from .collapse import domain_classifier, make_monitor
from .config import RESUME_MODES, TrainConfig, to_dict, write_config
from .diffaugment import diff_augment
from .discriminator import save_discriminator
from .distributed import (Dist, Interrupted, MainWrites, StopSignals, local_device, prepare, process_group, read_state,
                          rng_restore, rng_snapshot, seed_rank_stream, world_from_env)
from .ema import ema_decay_at, ema_update
from .loader import GlobalBatchSampler, step_draws
from .losses import feature_matching, get_loss
from .optim import grad_norm, lr_scale
from .precision import training_autocast
from .regularizers import gradient_penalty, r1_penalty
from .tasks import TASKS
from .telemetry import Throughput, log_config, log_grid, purge_step

STATE_NAME = "state.pt"
SNAPSHOTS = "snapshots"  # the workdir's folder of raw G weights (snapshot_every)
EXPORT_RECALIBRATION_BATCHES = 32  # BatchNorm statistics of an exported G: over 32 batches of 64


def train(cfg: TrainConfig, resume: bool | str = False) -> Path:
    """Train a GAN as configured (class-conditional, or image-to-image when `data.paired` is set);
    returns the exported checkpoint's path. Under torchrun every rank calls this with the same config
    (docs/distributed.md); `resume`: True continues from the resume state (which must exist), "auto"
    continues when there is one; False defers to `cfg.resume`. `cfg` validated itself on construction; the
    workdir is written only once the data, the networks and the collapse monitor's classifier have loaded."""
    mode = resume if resume else cfg.resume
    if mode not in RESUME_MODES:
        raise ValueError(f"resume must be one of {list(RESUME_MODES)}; got {mode!r}")
    rank, world, local = world_from_env()
    device = local_device(pick_device(cfg.device), local, world)
    with process_group(device, cfg.dist_timeout_minutes) as d, StopSignals(verbose=d.main) as stop:
        return _train(cfg, mode, device, d, stop)


def _train(cfg: TrainConfig, resume: bool | str, device: torch.device, d: Dist, stop: StopSignals) -> Path:
    d.per_rank(cfg.batch_size)  # a global batch the world size does not divide is refused before any work
    rows = d.shard(cfg.batch_size)  # this rank's rows of every global batch (the sampler's block, its z)
    torch.manual_seed(cfg.seed)
    task = TASKS[IMAGE_TO_IMAGE if cfg.data.paired else CONDITIONAL](cfg, device)
    g_common, d_common = task.arch_defaults()
    g_cfg, d_cfg = dict(cfg.generator), dict(cfg.discriminator)
    G = to_device(build(g_cfg.pop("architecture"), {**g_cfg, **g_common}), device).train()
    D = to_device(build(d_cfg.pop("architecture"), {**d_cfg, **d_common}), device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # What the loop calls on this rank: global-batch BatchNorm and DDP when there are several ranks, else G
    # and D themselves. EMA, resume state and export use G and D (unwrapped).
    G_run, D_run = prepare(G, d, cfg.batchnorm), prepare(D, d, cfg.batchnorm)
    seed_rank_stream(cfg.seed, d)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    d_loss_fn, g_loss_fn = get_loss(cfg.loss)
    adversarial = cfg.adversarial_weight > 0
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1)  # the same on every rank: the global batch's z
    amp = training_autocast(cfg.amp, device, warn=d.main)
    aug = lambda x: diff_augment(x, cfg.diffaugment)  # noqa: E731
    step, images_seen, train_seconds = 0, 0, 0.0

    # The domain classifier (classifier: auto trains it, into the workdir) and the collapse monitor are rank 0's:
    # the monitor reads G_ema, the same on every rank, and its verdict is broadcast. The other ranks wait.
    classifier = domain_classifier(cfg, task, device) if task.kind == CONDITIONAL and d.main else None
    monitor = make_monitor(cfg, task, device, classifier) if d.main else None

    workdir = Path(cfg.workdir)
    writes = MainWrites(d)  # rank 0 writes every file; the other ranks none
    writes(lambda: (workdir.mkdir(parents=True, exist_ok=True), write_config(cfg, workdir / "config.yaml")))
    state_path = workdir / STATE_NAME

    def snapshot() -> dict[str, Any]:
        return {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                "images_seen": images_seen, "seconds": train_seconds,
                "rng": torch.get_rng_state(), "noise_rng": noise_gen.get_state(),
                "collapse_armed": sorted(monitor.armed) if monitor is not None else []}

    def restore(state: dict[str, Any], saved_by_ranks: bool) -> None:
        """`saved_by_ranks`: a resume state (every rank's random stream) rather than this rank's snapshot."""
        nonlocal step, images_seen, train_seconds
        G.load_state_dict(state["G"]), D.load_state_dict(state["D"]), G_ema.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_g"]), opt_d.load_state_dict(state["opt_d"])
        step, images_seen, train_seconds = int(state["step"]), int(state["images_seen"]), float(state["seconds"])
        if saved_by_ranks:
            rng_restore(state, d, cfg.seed, step)
        else:
            torch.set_rng_state(state["rng"])
        noise_gen.set_state(state["noise_rng"])
        if monitor is not None:
            monitor.armed = set(state.get("collapse_armed", ()))  # the alarm's memory is part of the run

    resumed = False
    if resume:
        state = read_state(state_path, d, required=resume is True)
        if state is not None:
            restore(state, saved_by_ranks=True)
            resumed = True
            if d.main:
                print(f"resumed from {state_path} at step {step}", file=sys.stderr)

    def save_state() -> None:
        state = {**snapshot(), **rng_snapshot(d)}  # a collective: every rank calls save_state
        writes(atomic_write, state_path, lambda tmp: torch.save(state, tmp))

    writer = None
    if d.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(workdir / "tb"), purge_step=purge_step(step, resumed))
        writes(log_config, writer, to_dict(cfg), step)

    def save_grid() -> None:
        path = workdir / f"grid_{step:07d}.png"
        task.recalibrate(G_ema, batches=4)  # a preview: 256 samples are enough
        task.save_grid(G_ema, grid_meta, path)
        log_grid(writer, path, step)

    def save_snapshot() -> None:  # G's raw weights, for a post-hoc EMA of any decay (benchmarks/posthoc_ema.py)
        save(G, workdir / SNAPSHOTS / f"G_{step:07d}.safetensors", task.metadata(step, {}))

    def collapse_check() -> str | None:
        """Rank 0: check, log, and return the verdict: None (fine), "warn", "stop" or "rollback"."""
        if monitor is None:  # no domain classifier: the check was switched off with a warning at start
            return None
        ratios = monitor.check(G_ema, grid_meta)
        for name, ratio in ratios.items():
            writer.add_scalar(f"diversity/{name}", ratio, step)
        collapsed = monitor.collapsed(ratios, step)
        with open(workdir / "collapse.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "ratios": ratios, "collapsed": collapsed}) + "\n")
        if not collapsed:
            return None
        tqdm.write(f"WARNING mode collapse at step {step}: diversity ratio below "
                   f"{cfg.collapse_threshold} for {collapsed}", file=sys.stderr)
        return cfg.collapse_action

    grid_meta = task.metadata(step, {})
    last_good: dict[str, Any] | None = None
    stop_reason = None
    stopped_by = 0  # the signal that stopped the run
    start = time.time() - train_seconds
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True, mininterval=2,
               **({} if d.main else {"disable": True}))
    meter = Throughput(step, cfg.batch_size)
    # global batches of steps step..steps-1, a function of seed and step (resume reads the same data, on any
    # world size); this rank reads its block of each, chosen by its global rank
    sampler = GlobalBatchSampler(len(task), cfg.batch_size, cfg.seed, rank=d.rank, world_size=d.world_size,
                                 hflip=task.hflip, draws=step_draws(step, cfg.steps, cfg.d_steps, adversarial))
    data_iter = task.batches(sampler)
    penalty = loss_d = r = f = torch.zeros(())
    shared_fake, shared = cfg.share_fake and adversarial, None  # (fake, z) of the first D step, for the G step
    if cfg.snapshot_every and step == 0:
        writes(save_snapshot)  # the EMA's starting point
    while step < cfg.steps:
        # one agreement per step: every rank stops at the same step boundary, or none does
        time_up, stopped_by, failed = d.agree([int(budget is not None and time.time() - start >= budget),
                                               stop.received, int(writes.error is not None)])
        writes.check(bool(failed))
        if stopped_by:
            break
        if time_up:
            stop_reason = "time budget"
            break
        scale = lr_scale(step, cfg.steps, cfg.lr_decay_steps)
        for opt, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale
        step_batches = [next(data_iter) for _ in range(cfg.d_steps if adversarial else 1)]
        # --- discriminator step(s) ---
        for k in range(cfg.d_steps if adversarial else 0):
            cond, real = step_batches[k]
            with amp:
                with torch.set_grad_enabled(shared_fake and k == 0):  # kept with G's graph for the G step
                    fake_z = task.fake(G_run, cond, task.noise(G, noise_gen, rows))
                shared = fake_z if shared_fake and k == 0 else shared
                fake = fake_z[0].detach()
                r = D_run(aug(real), cond).float()
                f = D_run(aug(fake), cond).float()
                loss_d = d_loss_fn(r, f)
            critic = lambda x: D_run(aug(x), cond).float()  # noqa: E731
            penalty = torch.zeros((), device=device)
            if cfg.r1_gamma > 0:
                penalty = penalty + r1_penalty(critic, real, cfg.r1_gamma)
            if cfg.gp_lambda > 0:
                penalty = penalty + gradient_penalty(critic, real, fake, cfg.gp_lambda)
            opt_d.zero_grad(set_to_none=True)
            (loss_d + penalty).backward()
            opt_d.step()
        # --- generator step (same conditions as the first D step: real label frequencies / real sources) ---
        # D itself, not D_run: the gradients it gets here are discarded (zeroed before the next D step), so
        # averaging them over the ranks would be wasted communication.
        cond, real = step_batches[0]
        with amp:
            fake, z = shared if shared_fake else task.fake(G_run, cond, task.noise(G, noise_gen, rows))
            loss_fm, d_feats = torch.zeros((), device=device), None
            if not adversarial:
                loss_adv = torch.zeros((), device=device)
            elif cfg.feature_matching > 0 or cfg.mode_seeking_features > 0:  # one pass through D: logits + features
                feats = D.features(aug(fake), cond)
                with torch.no_grad():
                    real_feats = D.features(aug(real), cond)
                loss_adv = g_loss_fn(feats[-1].float())
                if cfg.feature_matching > 0:
                    loss_fm = cfg.feature_matching * feature_matching(feats[:-1], real_feats[:-1])
                d_feats = (feats[-2], real_feats[-2])  # D's last features: fake (with G's graph), real
            else:
                loss_adv = g_loss_fn(D(aug(fake), cond).float())
            loss_extra = task.g_extra(fake, real, cond, z, d_feats) + loss_fm
            loss_g = cfg.adversarial_weight * loss_adv + loss_extra
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        g_grad = grad_norm(G)  # of the rank-averaged gradient: the same on every rank
        opt_g.step()
        ema_update(G_ema, G, ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup))
        step += 1
        images_seen += cfg.batch_size * ((cfg.d_steps if adversarial else 0) + 1)
        train_seconds = time.time() - start
        bar.update()

        if step % cfg.log_every == 0 or step == cfg.steps:
            ips, sps = meter.reading(step)
            # losses of the global batch: the mean of the ranks' (each over its rows)
            ld, lg, lx, lfm, lp, lr_, lf = d.mean([loss_d.item(), loss_adv.item(), loss_extra.item(),
                                                   loss_fm.item(), penalty.item(), r.mean().item(),
                                                   f.mean().item()])
            scalars = {"loss/d": ld, "loss/g": lg, "loss/g_extra": lx, "loss/feature_matching": lfm,
                       "loss/penalty": lp, "grad_norm/g": g_grad, "logits/real": lr_, "logits/fake": lf,
                       "speed/images_per_s": ips, "speed/steps_per_s": sps, "lr/g": opt_g.param_groups[0]["lr"]}
            writes(lambda: [writer.add_scalar(key, value, step) for key, value in scalars.items()])
            bar.set_postfix(d=f"{ld:.3f}", g=f"{lg:.3f}", extra=f"{lx:.3f}", gnorm=f"{g_grad:.2f}",
                            refresh=False, **{"img/s(steps×batch)": f"{ips:.0f}"})  # over the last interval
        if step % cfg.sample_every == 0 or step == cfg.steps:
            writes(save_grid)
        if cfg.snapshot_every and step % cfg.snapshot_every == 0:
            writes(save_snapshot)
        if cfg.collapse_check_every > 0 and step % cfg.collapse_check_every == 0:
            verdict = d.broadcast(writes(collapse_check))  # rank 0 decides; every rank acts on it
            if verdict == "rollback" and last_good is not None:
                restore(last_good, saved_by_ranks=False)
                stop_reason = f"mode collapse; rolled back to step {step}"
                break
            if verdict in ("stop", "rollback"):
                stop_reason = "mode collapse"
                break
            if verdict is None:
                last_good = copy.deepcopy(snapshot())
        if step % cfg.state_every == 0:
            save_state()
    bar.close()
    writes(lambda: writer.close())
    save_state()
    if cfg.snapshot_every and step % cfg.snapshot_every:
        writes(save_snapshot)  # the last step (the time budget or a signal can stop between snapshots)
    writes.check(bool(d.agree([int(writes.error is not None)])[0]))
    if stopped_by:
        name = signal.Signals(stopped_by).name
        where = f"resume state {state_path}" if d.main else "rank 0 wrote the resume state"
        raise Interrupted(stopped_by, f"stopped by {name} at step {step}; {where}; continue with --resume "
                                      f"(or resume: auto)")

    export = Path(cfg.export)

    def export_model() -> None:
        task.recalibrate(G_ema, batches=EXPORT_RECALIBRATION_BATCHES)
        meta = task.metadata(step, {
            "classifier": str(classifier) if classifier is not None else None,
            "images_seen": images_seen, "train_seconds": round(train_seconds, 1),
            "images_per_second": round(images_seen / max(train_seconds, 1e-9), 1),
            "stopped_early": stop_reason, "device": str(device),
            "distributed": {"world_size": d.world_size, "backend": d.backend, "global_batch": cfg.batch_size,
                            "per_rank_batch": cfg.batch_size // d.world_size, "batchnorm": cfg.batchnorm}})
        save(G_ema, export, meta)
        if cfg.export_discriminator:
            save_discriminator(D, export, meta)
        if export.suffix != ".safetensors":
            write_config(cfg, export / "config.yaml")
            task.save_grid(G_ema, meta, export / "grid.png")
        atomic_write(workdir / "export.json", lambda tmp: tmp.write_text(
            json.dumps({"export": str(export), "step": step, "stopped_early": stop_reason})))

    writes(export_model)
    writes.check(bool(d.agree([int(writes.error is not None)])[0]))  # no rank returns before the export is done
    return export
