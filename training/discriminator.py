"""A run's discriminator as a self-describing checkpoint beside its exported generator.

Serving never needs it; `ganforge augment --d-keep-fraction` uses it to keep each class's most realistic
images (augment/select.py). It carries the generator's metadata with kind `discriminator`, including the same
provenance (config, steps), which is how augmentation checks that a D belongs to the G it filters.
Written at the end of training (`export_discriminator: true`) or afterwards from the run's resume state
(`ganforge export-discriminator WORKDIR`), which always holds D.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models import build, save
from models.checkpoint import CONDITIONAL, DISCRIMINATOR, discriminator_path, read_metadata, weights_path


def save_discriminator(D: nn.Module, export: str | Path, generator_meta: dict[str, Any]) -> Path:
    """Write `D` beside the generator exported at `export` (models.checkpoint.discriminator_path)."""
    return save(D, discriminator_path(export), {**generator_meta, "kind": DISCRIMINATOR})


def export_discriminator(workdir: str | Path) -> Path:
    """Save the D of a finished class-conditional run (its resume state, config and export record in `workdir`)
    beside the run's exported generator; returns its path."""
    from .config import load_config
    from .loop import STATE_NAME

    workdir = Path(workdir)
    for name in ("config.yaml", "export.json", STATE_NAME):
        if not (workdir / name).is_file():
            raise FileNotFoundError(f"{workdir / name} not found: give the workdir of a run that has finished")
    cfg = load_config(workdir / "config.yaml")
    export = Path(json.loads((workdir / "export.json").read_text())["export"])
    meta = read_metadata(weights_path(export))
    if meta.get("kind") != CONDITIONAL:
        raise ValueError(f"{export} is a {meta.get('kind')!r} checkpoint; discriminator export is for "
                         f"{CONDITIONAL!r} runs (augment's discriminator filter)")
    state = torch.load(workdir / STATE_NAME, map_location="cpu", weights_only=True)  # tensors only, no code
    if int(state["step"]) != int(meta.get("provenance", {}).get("steps", state["step"])):
        raise ValueError(f"{workdir / STATE_NAME} is at step {state['step']} but {export} was exported at step "
                         f"{meta['provenance']['steps']}; the run went on after its export")
    d_cfg = dict(cfg.discriminator)
    common = {"num_classes": len(meta["class_names"]), "img_resolution": int(meta["img_resolution"]),
              "img_channels": int(meta["img_channels"])}
    D = build(d_cfg.pop("architecture"), {**d_cfg, **common})
    D.load_state_dict(state["D"])
    return save_discriminator(D.eval(), export, meta)
