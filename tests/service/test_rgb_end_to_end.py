"""CIFAR-10 end to end: a tiny folder in the real pickled-batch layout -> `ganforge train` with the CIFAR-10
recipe (sized down for the CPU) -> `ganforge sample --class cat` and `ganforge augment` -> exported to the
test store -> `/generate_image {"class_name": "cat"}` over real HTTP: the same RGB pixels for the same seed."""
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PROJECT_ROOT
from service.testing import Server
from tests.service.conftest import ROOT
from tests.training.dataset_files import write_cifar
from training.cli import main

CPU_SIZE = ["steps=12", "batch_size=16", "d_steps=1", "generator.base_channels=16", "generator.z_dim=32",
            "generator.embed_dim=16", "discriminator.base_channels=16", "sample_every=1000", "state_every=1000",
            "log_every=5", "classifier=null", "collapse_check_every=6"]


@pytest.fixture(scope="module")
def cifar_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cifar_e2e")
    write_cifar(tmp / "data" / "cifar-10-batches-py", per_batch=40, test=20)
    sets = [f"data.root={tmp / 'data'}", f"workdir={tmp / 'run'}", f"export={tmp / 'export'}", *CPU_SIZE]
    argv = ["train", str(PROJECT_ROOT / "configs" / "cifar10_cgan.yaml"), "--device", "cpu"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    return tmp


def test_cifar10_recipe_trains_samples_and_serves_cat_over_http(cifar_export, capsys):
    tmp = cifar_export
    assert main(["sample", str(tmp / "export"), "--class", "cat", "--per-class", "3", "--seed", "7",
                 "--out", str(tmp / "cats.npz"), "--device", "cpu"]) == 0
    with np.load(tmp / "cats.npz") as f:
        cats, names = f["images"], f["class_names"]
    assert cats.dtype == np.uint8 and cats.shape == (3, 32, 32, 3) and names[3] == "cat"
    assert cats.std() > 0  # an image, not a constant
    # the augmentation job path: image k of a job uses seed + k, like `sample`
    assert main(["augment", str(tmp / "export"), "--class", "cat", "--per-class", "3", "--seed", "7",
                 "--format", "npz", "--out", str(tmp / "job"), "--device", "cpu"]) == 0
    with np.load(tmp / "job" / "images.npz") as f:
        assert np.array_equal(f["images"], cats)

    assert main(["export", str(tmp / "export"), "--name", "cifar-e2e"]) == 0
    server = Server({"GANFORGE_MODELS": "cifar-e2e", "OMP_NUM_THREADS": "2",
                     "GANFORGE_JOBS_DIR": str(ROOT / "jobs-rgb")}, ROOT / "server-rgb.log")
    try:
        for seed, k in ((7, 0), (9, 2)):
            r = server.http.post("/generate_image", json={"class_name": "cat", "seed": seed, "n": 1})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
            with Image.open(io.BytesIO(r.content)) as im:
                assert im.mode == "RGB" and im.size == (32, 32)
                assert np.array_equal(np.asarray(im), cats[k])  # CLI == HTTP for the same seed
        info = server.http.post("/models").json()["models"][0]
        assert info["img_channels"] == 3 and "cat" in info["class_names"]
    finally:
        server.close()
