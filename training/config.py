"""The training run's typed config: YAML file -> frozen dataclass, `--set key=value` overrides, resolved copy on disk.

Both dataclasses check themselves on construction, so a bad run is refused with one error naming the field and
its allowed values before anything is loaded or written. An override builds a new config (`replace`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models import ARCHITECTURES

from .data import DATASETS
from .datasets import FITS
from .diffaugment import AUGMENTATIONS
from .distributed import BATCHNORM_MODES
from .losses import LOSSES
from .paired import FORMATS as PAIRED_FORMATS

DIRECTIONS = ("AtoB", "BtoA")
COLLAPSE_ACTIONS = ("warn", "stop", "rollback")
RESUME_MODES = (False, True, "auto")  # TrainConfig.resume
# TrainConfig.amp, where the training step runs under bf16 autocast: off | cuda (the default) | always (the CPU too;
# pays only on CPUs with bf16 instructions: 0.11x float32 on an AVX2-only one, benchmarks/RESULTS.md). true/false
# read as cuda/off. auto: bf16 where it is native (CUDA, or a CPU with bf16 instructions), float32 elsewhere.
AMP_MODES = ("off", "cuda", "always", "auto")
CHANNELS = (1, 3)


def _one_of(name: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _at_least(obj: Any, low: float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise ValueError(f"{name} must be a number >= {low:g}, got {value!r}")


@dataclass(frozen=True)
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

    def __post_init__(self) -> None:
        if self.paired is not None:
            _one_of("data.paired", self.paired, PAIRED_FORMATS)
        if self.paired not in ("aligned", "folders"):  # those read data.root alone; every other run names a dataset
            _one_of("data.name", self.name, DATASETS)
        if self.paired in ("aligned", "folders") or self.name == "imagefolder":
            if not self.root:
                raise ValueError(f"data.root is required for {self.paired or self.name!r} data (a folder)")
        _one_of("data.direction", self.direction, DIRECTIONS)
        for name in ("channels", "source_channels"):
            if getattr(self, name) is not None:
                _one_of(f"data.{name}", getattr(self, name), CHANNELS)
        _at_least(self, 1, "resolution")
        _one_of("data.fit", self.fit, FITS)
        if self.hflip is not None and not isinstance(self.hflip, bool):
            raise ValueError(f"data.hflip must be true, false or null (the dataset's default), got {self.hflip!r}")
        if self.workers is not None:
            _at_least(self, 0, "workers")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    # Architecture name + config fields; num_classes / img_resolution / img_channels come from the data.
    generator: dict[str, Any] = field(default_factory=lambda: {"architecture": "ConditionalGenerator"})
    discriminator: dict[str, Any] = field(default_factory=lambda: {"architecture": "ProjectionDiscriminator"})
    loss: str = "hinge"  # minimax | non-saturating | hinge | wasserstein | least-squares
    adversarial_weight: float = 1.0  # image-to-image: 0 trains the generator on L1 alone (no D)
    l1_weight: float = 100.0  # image-to-image: lambda of the L1 term (pix2pix)
    feature_matching: float = 0.0  # weight of D-feature matching on G (pix2pixHD: 10 for image-to-image; 0 = off)
    r1_gamma: float = 0.0  # R1 penalty weight on real data (0 = off)
    gp_lambda: float = 0.0  # WGAN-GP weight (0 = off)
    mode_seeking: float = 0.0  # class-conditional: weight of the MSGAN mode-seeking term on G (0 = off)
    # > 0: cap each same-class pair's term at this x the batch's real same-class spread (DSGAN's min(r, tau);
    # training.regularizers.mode_seeking_loss), so the term stops pushing pairs already as far apart as real ones
    mode_seeking_cap: float = 0.0
    # class-conditional: weight of the same term measured in the discriminator's pooled features instead of pixels
    # (capped by mode_seeking_cap at the real batch's spread in those features; 0 = off)
    mode_seeking_features: float = 0.0
    diffaugment: str = ""  # e.g. "translation,cutout,colour" for small data
    batch_size: int = 64
    steps: int = 3000  # generator steps
    max_minutes: float | None = None  # wall-clock budget; training stops (and exports) when it runs out
    d_steps: int = 1  # discriminator steps per generator step
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    lr_decay_steps: int = 0  # decay both learning rates linearly to 0 over the last N steps (pix2pix: steps/2)
    betas: tuple[float, float] = (0.0, 0.9)
    ema_decay: float = 0.999  # generator EMA; the decay at step t is min(ema_decay, (1+t)/(ema_warmup+t))
    # Until that cap (step (ema_decay * ema_warmup - 1) / (1 - ema_decay): ~9,000 for 10 and 0.999, ~18,000 for
    # 10 and 0.9995) the EMA is a power-law average whose weights' centre of mass lies 1/ema_warmup of the run
    # back: 10 averages about the last tenth of a short run whatever ema_decay says, 3 about its last third.
    ema_warmup: float = 10.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    # The G step reuses the first D step's fake batch (one G forward a step instead of two, as PyTorch's DCGAN
    # example does) rather than drawing fresh z: another RNG stream, so a run with it is a different run
    share_fake: bool = False
    amp: str = "cuda"  # bf16 autocast of the training step: off | cuda (CUDA only) | always (CPU too) | auto; AMP_MODES
    workdir: str = "runs/run"  # logs, TensorBoard, sample grids, resume state
    export: str = "checkpoints/run"  # final checkpoint for serving (EMA generator)
    # Also write the final D beside the export (discriminator.safetensors; for augment's --d-keep-fraction).
    export_discriminator: bool = False
    log_every: int = 25
    sample_every: int = 500
    state_every: int = 500
    # Keep G's raw weights every N steps (and at steps 0 and the last) in workdir/snapshots/G_<step>.safetensors,
    # for an EMA of any decay after the run (benchmarks/posthoc_ema.py); 0 = off. ~6 MB each for the bundled G.
    snapshot_every: int = 0
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
    # Several processes (torchrun; docs/distributed.md). batch_size above is the global batch.
    batchnorm: str = "sync"  # sync: BatchNorm statistics of the global batch | per-rank: of each rank's rows
    resume: bool | str = False  # true: continue from workdir's state (must exist) | auto: if there is one
    dist_timeout_minutes: float = 10.0  # how long a collective waits for a missing rank before failing

    def __post_init__(self) -> None:
        _one_of("loss", self.loss, LOSSES)
        for name in filter(None, (p.strip() for p in self.diffaugment.split(","))):
            _one_of("diffaugment", name, sorted(AUGMENTATIONS))
        _one_of("collapse_action", self.collapse_action, COLLAPSE_ACTIONS)
        _one_of("batchnorm", self.batchnorm, BATCHNORM_MODES)
        _one_of("resume", self.resume, RESUME_MODES)
        if isinstance(self.amp, bool):  # configs written before amp took a mode: true meant CUDA only
            object.__setattr__(self, "amp", "cuda" if self.amp else "off")
        _one_of("amp", self.amp, AMP_MODES)
        if isinstance(self.dist_timeout_minutes, bool) or not (isinstance(self.dist_timeout_minutes, (int, float))
                                                                and self.dist_timeout_minutes > 0):
            raise ValueError(f"dist_timeout_minutes must be a number > 0, got {self.dist_timeout_minutes!r}")
        for section in ("generator", "discriminator"):
            arch = getattr(self, section).get("architecture")
            _one_of(f"{section}.architecture", arch, sorted(ARCHITECTURES))
        _at_least(self, 1, "batch_size", "steps", "d_steps", "log_every", "sample_every", "state_every",
                  "grid_columns", "ema_warmup")
        _at_least(self, 0, "adversarial_weight", "l1_weight", "feature_matching", "r1_gamma", "gp_lambda",
                  "mode_seeking", "mode_seeking_cap", "mode_seeking_features", "lr_d", "lr_g", "lr_decay_steps",
                  "collapse_check_every", "snapshot_every", "ema_decay")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not self.ema_warmup > 1:
            raise ValueError(f"ema_warmup must be > 1 (the decay (1+t)/(ema_warmup+t) must stay below 1), "
                             f"got {self.ema_warmup!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers (beta1, beta2), got {list(self.betas)}")
        paired = self.data.paired is not None
        for name in ("export_discriminator", "share_fake"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if paired and self.diffaugment:
            raise ValueError("diffaugment is not supported for image-to-image training (it would break pairs); "
                             f"got diffaugment={self.diffaugment!r} with data.paired={self.data.paired!r}")
        if paired and self.collapse_check_every > 0:
            raise ValueError("collapse_check_every needs a class-conditional run (data.paired unset); "
                             f"got data.paired={self.data.paired!r}")
        if self.mode_seeking_cap > 0 and not (self.mode_seeking > 0 or self.mode_seeking_features > 0):
            raise ValueError(f"mode_seeking_cap caps the mode-seeking term, which is off: set mode_seeking or "
                             f"mode_seeking_features > 0, or mode_seeking_cap to 0; got mode_seeking "
                             f"{self.mode_seeking}, mode_seeking_features {self.mode_seeking_features}, "
                             f"mode_seeking_cap {self.mode_seeking_cap}")
        if paired and self.mode_seeking_features > 0:
            raise ValueError("mode_seeking_features needs a class-conditional run (data.paired unset); "
                             f"got data.paired={self.data.paired!r}")
        for name in ("feature_matching", "mode_seeking_features"):
            if getattr(self, name) > 0:
                d_arch = self.discriminator["architecture"]
                if not (hasattr(ARCHITECTURES[d_arch], "features") and self.adversarial_weight > 0):
                    with_features = sorted(n for n, c in ARCHITECTURES.items() if hasattr(c, "features"))
                    raise ValueError(f"{name} needs a discriminator with features() ({with_features}) and "
                                     f"adversarial_weight > 0; got {d_arch}, adversarial_weight "
                                     f"{self.adversarial_weight}")


def replace(cfg: Any, changes: dict[str, Any], section: str = "config") -> Any:
    """A new frozen config: `cfg` with `changes` (a nested dict) applied by `dataclasses.replace`, so it is
    validated again. A nested config or a dict field (generator/discriminator) takes a dict of its own changes;
    unknown keys raise ValueError naming them and the allowed ones."""
    allowed = {f.name: f for f in dataclasses.fields(cfg)}
    unknown = set(changes) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {section} key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    fields: dict[str, Any] = {}
    for key, value in changes.items():
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            value = {} if value is None else value  # an empty YAML section
            if not isinstance(value, dict):
                raise ValueError(f"{key} must be a section of keys, got {value!r}")
            value = replace(current, value, key)
        elif isinstance(current, dict) and isinstance(value, dict):
            value = {**current, **value}
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        fields[key] = value
    return dataclasses.replace(cfg, **fields)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["steps=20", "data.resolution=16"]` -> `{"steps": 20, "data": {"resolution": 16}}` (values are YAML)."""
    changes: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set(changes, key.strip(), yaml.safe_load(value))
    return changes


def _set(obj: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        obj = obj.setdefault(key, {})
        if not isinstance(obj, dict):
            raise ValueError(f"cannot set {dotted!r}: {key!r} is not a section")
    obj[keys[-1]] = value


def from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a validated TrainConfig from a plain dict (a YAML run file); unknown keys raise ValueError."""
    return replace(TrainConfig(), raw)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML run file and apply `key=value` overrides (dotted keys, YAML values)."""
    raw: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    cfg = from_dict(raw)
    return replace(cfg, parse_overrides(overrides)) if overrides else cfg


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
