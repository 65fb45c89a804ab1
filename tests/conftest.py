"""Shared test helpers: CPU only, tiny configs."""
from __future__ import annotations

from pathlib import Path

import os

import pytest

from training.data import FASHION_MNIST_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[1]

needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (make test installs it when apt is available)",
)

# Progress bars would flood the captured output of the training tests.
os.environ.setdefault("TQDM_DISABLE", "1")
