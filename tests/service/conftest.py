"""Service test set-up: a temporary BentoML home holding two tiny checkpoints, an in-process app, a real server.

The service reads GANFORGE_* and BentoML reads BENTOML_HOME when first imported/used, so the environment
is set here, before any test module imports `service`.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from service.testing import Server  # the real-server harness, shared with benchmarks/
from tests.conftest import PROJECT_ROOT

ROOT = Path(tempfile.mkdtemp(prefix="ganforge-service-tests-"))
for _name in [k for k in os.environ if k.startswith("GANFORGE_")]:
    del os.environ[_name]  # the tests assume the documented defaults
os.environ.update(
    BENTOML_HOME=str(ROOT / "bentoml"),
    BENTOML_DO_NOT_TRACK="True",
    PROMETHEUS_MULTIPROC_DIR=str(ROOT / "prometheus"),  # /metrics under TestClient needs it
    GANFORGE_MODELS="tiny-cgan,tiny-i2i",
    # BentoML sheds load (503) when its latency estimate exceeds this; on a starved CI core the default
    # 2 s can trip, and these tests are about merging, not shedding.
    GANFORGE_MAX_LATENCY_MS="60000",
    # The reference backend, so that these tests can hold HTTP to the CLI's images bit for bit; the other
    # backends (and `auto`) are held to their tolerance over HTTP in test_backends.py.
    GANFORGE_BACKEND="torch",
)
(ROOT / "prometheus").mkdir()

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
BUNDLED = {name: PROJECT_ROOT / "checkpoints" / name for name in ("fashion_mnist_cgan", "fashion_mnist_edges2image")}


def bundled_present(name: str) -> bool:
    return (BUNDLED[name] / "model.safetensors").is_file()


def png(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """Encode a uint8 array (optionally converted to a PIL mode) as an image file."""
    from PIL import Image

    im = Image.fromarray(array)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def save_tiny_checkpoints(folder: Path) -> dict[str, Path]:
    """A class-conditional generator with Fashion-MNIST's classes and geometry and a pix2pix U-Net, both tiny
    and randomly initialised (seeded), saved in the real checkpoint format. No training: these tests are
    about the service, and must not depend on the training loop."""
    import models
    from models.conditional import ConditionalGenerator, ConditionalGeneratorConfig
    from models.pix2pix import UNetGenerator, UNetGeneratorConfig

    common = {"normalization": {"mean": 0.5, "std": 0.5}, "img_resolution": 32, "img_channels": 1}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        g = ConditionalGenerator(ConditionalGeneratorConfig(num_classes=10, img_resolution=32, img_channels=1,
                                                            z_dim=32, base_channels=8, max_channel_mult=4,
                                                            embed_dim=16))
        u = UNetGenerator(UNetGeneratorConfig(in_channels=1, out_channels=1, img_resolution=32, depth=3,
                                              base_channels=8))
    paths = {"tiny-cgan": folder / "tiny-cgan", "tiny-i2i": folder / "tiny-i2i"}
    models.save(g.eval(), paths["tiny-cgan"], {
        **common, "kind": "conditional", "class_names": FASHION, "native_size": [28, 28],
        "provenance": {"dataset": "none (random weights)", "steps": 0, "seed": 0},
        "metrics": {"fid_domain": 123.4}})
    models.save(u.eval(), paths["tiny-i2i"], {
        **common, "kind": "image-to-image", "class_names": FASHION, "native_size": [28, 28],
        "task": {"source_channels": 1, "target_channels": 1, "derivation": "edges", "paired": "edges",
                 "direction": "AtoB"},
        "provenance": {"dataset": "none (random weights)", "steps": 0}, "metrics": {"l1": 0.5}})
    return paths


@pytest.fixture(scope="session")
def checkpoints() -> dict[str, Path]:
    return save_tiny_checkpoints(ROOT / "checkpoints")


@pytest.fixture(scope="session")
def store(checkpoints) -> dict[str, str]:
    """Both tiny checkpoints in the test BentoML store: name -> tag."""
    from service.store import export

    return {name: export(path, name)[0] for name, path in checkpoints.items()}


@pytest.fixture(scope="session")
def client(store):
    """The real ASGI app in-process (lifespan, middleware, validation, self-client batching)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice that it prefers httpx2 to httpx
        from starlette.testclient import TestClient

    from service.service import Generator

    with TestClient(Generator.to_asgi(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def server_env(store) -> dict[str, str]:
    """GANFORGE_MODELS for real servers: the tiny models plus the bundled checkpoints that exist."""
    from service.store import export

    names = list(store)
    for name, path in BUNDLED.items():
        if bundled_present(name):
            export(path, name)
            names.append(name)
    return {"GANFORGE_MODELS": ",".join(names), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
            "GANFORGE_JOBS_DIR": str(ROOT / "jobs-server"),  # not the in-process app's jobs folder
            "GANFORGE_BODY_TIMEOUT": "2"}  # the half-sent-body test waits this long


@pytest.fixture(scope="session")
def server(server_env):
    s = Server(server_env, ROOT / "server.log")
    yield s
    s.close()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(ROOT, ignore_errors=True)
