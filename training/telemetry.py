"""What a run reports while it trains: throughput over the last interval, and TensorBoard's view of a run."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml


class Throughput:
    """Images per second over the last interval: generator steps x global batch / seconds since the
    previous reading. One image = one row of a global batch (the D passes over it are not counted again),
    so a run reads the same on any world size; a cumulative average would hide slow-downs and start-up."""

    def __init__(self, step: int, batch_size: int, now: float | None = None):
        self.batch_size = batch_size
        self._step, self._time = step, time.perf_counter() if now is None else now

    def reading(self, step: int, now: float | None = None) -> tuple[float, float]:
        """(images/s, steps/s) since the previous reading (or the start), then restart the interval."""
        now = time.perf_counter() if now is None else now
        steps, seconds = step - self._step, max(now - self._time, 1e-9)
        self._step, self._time = step, now
        return steps * self.batch_size / seconds, steps / seconds


def purge_step(step: int, resumed: bool) -> int:
    """TensorBoard's purge_step for a run starting at `step`: events after the resume state's step were
    logged by the interrupted run and are logged again, so they go; the point AT that step belongs to the
    state and stays (purge_step=step would drop it). A fresh run purges everything an earlier one left."""
    return step + 1 if resumed else 0


def log_config(writer: Any, config: dict[str, Any], step: int) -> None:
    """The resolved config as a TensorBoard text (YAML as a code block), so a run is readable there alone;
    at the (re)start step, so a resumed run shows the config it resumed with."""
    text = yaml.safe_dump(config, sort_keys=False)
    writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), step)


def log_grid(writer: Any, path: Path, step: int) -> None:
    """The sample grid PNG at `path` as TensorBoard's `samples` image at `step`."""
    from PIL import Image

    with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
    writer.add_image("samples", image, step, dataformats="HWC")
