"""Users' own photos: class folders of non-square JPEGs, an RGBA and a palette PNG -> a classifier and a
64 px RGB GAN with the imagefolder recipe (sized down for the CPU), then `evaluate` with class names."""
import json

import numpy as np

from models import load
from tests.conftest import PROJECT_ROOT
from tests.training.dataset_files import write_imagefolder
from training.cli import main
from training.sample import sample_arrays

RECIPE = str(PROJECT_ROOT / "configs" / "imagefolder_cgan.yaml")
CPU_SIZE = ["steps=4", "batch_size=8", "d_steps=1", "generator.base_channels=8", "generator.max_channel_mult=2",
            "generator.z_dim=16", "generator.embed_dim=8", "discriminator.base_channels=8",
            "discriminator.max_channel_mult=2", "sample_every=1000", "state_every=1000", "log_every=2",
            "data.workers=1"]


def sets(*items):
    return [a for s in items for a in ("--set", s)]


def test_imagefolder_64px_trains_a_classifier_and_a_gan_and_evaluates_per_class(tmp_path, capsys):
    photos = write_imagefolder(tmp_path / "photos", per_class=10, classes=("cat", "dog"))
    clf = tmp_path / "clf"
    assert main(["train-classifier", "--dataset", "imagefolder", "--root", str(photos), "--out", str(clf),
                 "--resolution", "64", "--width", "4", "--steps", "30", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["num_train"] == 18 and report["num_test"] == 2 and report["batch_size"] == 4
    assert main(["train", RECIPE, "--device", "cpu", *sets(f"data.root={photos}", f"workdir={tmp_path / 'run'}",
                 f"export={tmp_path / 'export'}", f"classifier={clf}", "collapse_check_every=2", *CPU_SIZE)]) == 0
    assert (tmp_path / "run" / "collapse.jsonl").read_text().count("ratios") == 2  # the monitor ran
    images, labels, _, meta = sample_arrays(str(tmp_path / "export"), 2, 0, classes=["dog"], device="cpu")
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8 and meta["class_names"] == ["cat", "dog"]
    assert meta["provenance"]["classifier"] == str(clf)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "export"), "--per-class", "4", "--device", "cpu"]) == 0  # run's own
    out = capsys.readouterr().out
    ev = json.loads(out[out.index("{"):])
    assert ev["classifier"] == str(clf) and str(clf) in ev["feature_space"]
    assert set(ev["conditional_accuracy_per_class"]) == {"cat", "dog"} and ev["num_real_per_class"] == {"cat": 1, "dog": 1}
    assert ev["num_generated"] == 8 and np.isfinite(ev["fid"])


def test_classifier_auto_trains_one_and_no_classifier_only_warns(tmp_path, capsys):
    photos = write_imagefolder(tmp_path / "photos", per_class=10, classes=("fox", "owl", "elk"))
    run = [f"data.root={photos}", "data.resolution=16", f"workdir={tmp_path / 'run'}",
           f"export={tmp_path / 'export'}", "collapse_check_every=2", *CPU_SIZE]
    assert main(["train", RECIPE, "--device", "cpu", *sets(*run, "classifier=null")]) == 0
    assert "warning: mode-collapse check off: no domain classifier for dataset 'imagefolder'" in capsys.readouterr().err
    assert main(["train", RECIPE, "--device", "cpu", *sets(*run, "classifier=auto")]) == 0
    _, meta = load(tmp_path / "run" / "classifier")
    assert meta["kind"] == "classifier" and meta["class_names"] == ["elk", "fox", "owl"]
    assert meta["native_size"] == [16, 16]
