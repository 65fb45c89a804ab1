"""The training run's typed config: YAML file -> dataclass, `--set key=value` overrides, resolved copy on disk."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # fashion-mnist | mnist | cifar10 | imagefolder | shapes
    root: str | None = None  # folder of the data (None: the dataset's default place)
    resolution: int = 32  # model resolution; 28x28 data is padded to 32 and cropped back when sampling
    channels: int | None = None  # 1 or 3; None keeps the dataset's own (targets, for image-to-image)
    # Image-to-image only: 'aligned' | 'folders' | a derivation ('edges', 'downsample', 'mask', 'grayscale')
    paired: str | None = None
    source_channels: int | None = None  # for 'aligned'/'folders' sources; None: same as channels
    direction: str = "AtoB"
    fit: str = "crop"  # imagefolder, non-square files: crop (shorter side to R, centre crop) | squash | pad
    hflip: bool | None = None  # random horizontal flips; None: the dataset's default (on for cifar10/imagefolder)
    workers: int | None = None  # DataLoader worker processes; None: 0 for in-memory data, else up to 4


@dataclass
class TrainConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    # Architecture name + config fields; num_classes / img_resolution / img_channels come from the data.
    generator: dict[str, Any] = field(default_factory=lambda: {"architecture": "ConditionalGenerator"})
    discriminator: dict[str, Any] = field(default_factory=lambda: {"architecture": "ProjectionDiscriminator"})
    loss: str = "hinge"  # minimax | non-saturating | hinge | wasserstein | least-squares
    adversarial_weight: float = 1.0  # image-to-image: 0 trains the generator on L1 alone (no D)
    l1_weight: float = 100.0  # image-to-image: lambda of the L1 term (pix2pix)
    feature_matching: float = 0.0  # image-to-image: weight of D-feature matching on G (pix2pixHD: 10; 0 = off)
    r1_gamma: float = 0.0  # R1 penalty weight on real data (0 = off)
    gp_lambda: float = 0.0  # WGAN-GP weight (0 = off)
    mode_seeking: float = 0.0  # class-conditional: weight of the MSGAN mode-seeking term on G (0 = off)
    diffaugment: str = ""  # e.g. "translation,cutout,colour" for small data
    batch_size: int = 64
    steps: int = 3000  # generator steps
    max_minutes: float | None = None  # wall-clock budget; training stops (and exports) when it runs out
    d_steps: int = 1  # discriminator steps per generator step
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    lr_decay_steps: int = 0  # decay both learning rates linearly to 0 over the last N steps (pix2pix: steps/2)
    betas: tuple[float, float] = (0.0, 0.9)
    ema_decay: float = 0.999  # generator EMA; effective decay ramps up as min(decay, (1+t)/(10+t))
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    amp: bool = True  # bf16 autocast on CUDA (ignored elsewhere)
    workdir: str = "runs/run"  # logs, TensorBoard, sample grids, resume state
    export: str = "checkpoints/run"  # final checkpoint for serving (EMA generator)
    log_every: int = 25
    sample_every: int = 500
    state_every: int = 500
    grid_columns: int = 10
    collapse_check_every: int = 0  # steps between mode-collapse checks (0 = off); needs `classifier`
    collapse_threshold: float = 0.5  # alarm when a class's diversity ratio falls below this
    collapse_action: str = "warn"  # warn | stop | rollback
    # Before this step a class alarms only after it has once reached `collapse_arm` (a fall into collapse):
    # early on an untrained G has not learned to use z yet, and its low diversity is not a collapse.
    collapse_warmup: int = 1000
    collapse_arm: float = 0.8  # the hysteresis: a ratio that counts as "was varied" before the warm-up
    # Domain classifier checkpoint for the collapse check and `evaluate`; "auto": train one on the run's data
    # into {workdir}/classifier before the GAN (reused when present). None: the bundled one for the dataset,
    # if any; without one the collapse check is skipped with a warning.
    classifier: str | None = None


def _set(obj: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        obj = obj.setdefault(key, {})
        if not isinstance(obj, dict):
            raise ValueError(f"cannot set {dotted!r}: {key!r} is not a section")
    obj[keys[-1]] = value


def from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a plain dict; unknown keys raise ValueError naming them and the allowed ones."""
    allowed = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    raw = dict(raw)
    data = raw.pop("data", {}) or {}
    data_allowed = {f.name for f in dataclasses.fields(DataConfig)}
    if set(data) - data_allowed:
        raise ValueError(f"unknown data key(s) {sorted(set(data) - data_allowed)}; allowed: {sorted(data_allowed)}")
    if "betas" in raw:
        raw["betas"] = tuple(raw["betas"])
    return TrainConfig(data=DataConfig(**data), **raw)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML run file and apply `key=value` overrides (dotted keys, YAML values)."""
    raw: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set(raw, key.strip(), yaml.safe_load(value))
    return from_dict(raw)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain, YAML-safe dict of the config."""
    d = dataclasses.asdict(cfg)
    d["betas"] = list(cfg.betas)
    return d


def write_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    from models.checkpoint import atomic_write

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))
