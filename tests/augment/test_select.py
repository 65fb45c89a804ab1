"""Sample selection in augmentation jobs (augment/select.py): deterministic accepted seeds and bytes, kill -9 and
resume, refused classifiers and discriminators, filtered images that really pass under the named classifier,
the discriminator filter on a tiny trained run."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import augment
import models
from augment.select import classifier_scorer, discriminator_scorer
from models.checkpoint import discriminator_path
from models.sampling import generate, to_uint8
from tests.augment.test_augment import FASHION, augment_cli, paused_augment, png, save_tiny_cgan, tree
from tests.conftest import PROJECT_ROOT

BUNDLED_CGAN = PROJECT_ROOT / "checkpoints" / "fashion_mnist_cgan"
BUNDLED_CLASSIFIER = PROJECT_ROOT / "checkpoints" / "fashion_mnist_classifier"


def save_tiny_classifier(path: Path, class_names=FASHION, seed: int = 0) -> Path:
    from models.classifier import DomainClassifier, DomainClassifierConfig

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = DomainClassifier(DomainClassifierConfig(num_classes=len(class_names), img_resolution=28, width=4,
                                                      feature_dim=8))
    models.save(clf.eval(), path, {"kind": "classifier", "class_names": list(class_names), "native_size": [28, 28],
                                   "img_resolution": 28, "img_channels": 1})
    return path


def save_tiny_discriminator(path: Path, class_names=FASHION, provenance=None) -> Path:
    from models.conditional import ProjectionDiscriminator, ProjectionDiscriminatorConfig

    with torch.random.fork_rng():
        torch.manual_seed(1)
        d = ProjectionDiscriminator(ProjectionDiscriminatorConfig(num_classes=len(class_names), img_resolution=32,
                                                                  base_channels=4, max_channel_mult=2))
    meta = {"kind": "discriminator", "class_names": list(class_names), "native_size": [28, 28],
            "img_resolution": 32, "img_channels": 1, **({"provenance": provenance} if provenance else {})}
    models.save(d.eval(), path, meta)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny random cGAN with its D beside it, and a tiny random classifier."""
    root = tmp_path_factory.mktemp("select")
    ckpt = save_tiny_cgan(root / "tiny-cgan")
    save_tiny_discriminator(discriminator_path(ckpt))
    return {"ckpt": ckpt, "classifier": save_tiny_classifier(root / "tiny-classifier")}


def manifest(out: Path, name: str = "manifest.csv") -> list[dict[str, str]]:
    with open(out / name, newline="") as f:
        return list(csv.DictReader(f))


def written(out: Path, rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([png((out / r["file"]).read_bytes()) for r in rows])
    return images, np.array([int(r["class_index"]) for r in rows])


@pytest.mark.skipif(not (BUNDLED_CGAN / "model.safetensors").is_file(), reason="fashion_mnist_cgan not bundled")
def test_classifier_filter_is_deterministic_and_its_images_pass(tmp_path):
    """The bundled cGAN filtered by the bundled classifier at p = 0.9: the same job gives the same accepted
    seeds and bytes, and the written PNGs, classified again, pass the threshold; the rejected seeds do not."""
    args = ("--per-class", '{"Shirt": 4, "Trouser": 3}', "--seed", 40, "--chunk-size", 3, "--batch-size", 8,
            "--classifier", BUNDLED_CLASSIFIER, "--min-confidence", 0.9, "--device", "cpu")
    assert augment_cli(BUNDLED_CGAN, tmp_path / "a", *args) == 0
    assert augment_cli(BUNDLED_CGAN, tmp_path / "b", *args) == 0
    a = tree(tmp_path / "a")
    assert a == tree(tmp_path / "b")
    out = tmp_path / "a"
    rows = manifest(out)
    assert list(rows[0]) == [*augment.MANIFEST_COLUMNS, *augment.SELECTION_COLUMNS]
    job = augment.read_spec(out)
    for r in rows:  # seed = candidate_base(class) + candidate
        assert int(r["seed"]) == job.candidate_base(int(r["class_index"])) + int(r["candidate"])
    clf, meta = models.load(BUNDLED_CLASSIFIER)
    score = classifier_scorer(clf, meta)
    images, labels = written(out, rows)
    p = score(images, labels)
    recorded = np.array([float(r["confidence"]) for r in rows])
    assert (p >= 0.9 - 1e-5).all(), p  # a different batch may move the float by ~1e-7
    assert np.abs(p - recorded).max() < 1e-5
    rejected = manifest(out, augment.REJECTED_NAME)
    summary = json.loads((out / augment.SELECTION_NAME).read_text())
    assert len(rejected) == summary["total"]["rejected"] > 0  # Shirt is the hard class
    assert all(float(r["confidence"]) < 0.9 and r["failed"] == "confidence" for r in rejected)
    G, gmeta = models.load(BUNDLED_CGAN)
    r = rejected[0]  # a rejected seed, drawn alone, really fails
    alone = to_uint8(generate(G, [int(r["class_index"])], [int(r["seed"])]), gmeta)
    assert score(alone, np.array([int(r["class_index"])]))[0] < 0.9 + 1e-5
    drawn = {c["class_name"]: c["drawn"] for c in summary["classes"]}
    kept = {n: sum(1 for x in rows if x["class_name"] == n) for n in drawn}
    assert kept == {"Shirt": 4, "Trouser": 3}
    assert {n: kept[n] + sum(1 for x in rejected if x["class_name"] == n) for n in drawn} == drawn


def test_refuses_a_classifier_whose_classes_differ(tiny, tmp_path, capsys):
    other = save_tiny_classifier(tmp_path / "digits", class_names=[str(i) for i in range(10)])
    out = tmp_path / "job"
    assert augment_cli(tiny["ckpt"], out, "--per-class", 1, "--classifier", other, "--min-confidence", 0.5) == 2
    err = capsys.readouterr().err
    assert "['0', '1', '2'" in err and "'T-shirt/top', 'Trouser'" in err and "do not match" in err
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(augment.JobSpecError) as e:
        augment.check_classifier(models.read_metadata(tiny["ckpt"]), models.read_metadata(other), "digits")
    assert e.value.field == "classifier"
    # a generator is not a classifier; a classifier needs a threshold and the reverse
    assert augment_cli(tiny["ckpt"], out, "--per-class", 1, "--classifier", tiny["ckpt"], "--min-confidence", 0.5) == 2
    assert "not a 'classifier' one" in capsys.readouterr().err
    assert augment_cli(tiny["ckpt"], out, "--per-class", 1, "--min-confidence", 0.5) == 2
    assert "needs a domain classifier" in capsys.readouterr().err
    assert augment_cli(tiny["ckpt"], out, "--per-class", 1, "--classifier", tiny["classifier"]) == 2
    assert "without min_confidence" in capsys.readouterr().err


def test_refuses_a_discriminator_of_another_run(tmp_path):
    gen_meta = {"class_names": FASHION, "provenance": {"steps": 100, "config": {"name": "a"}}}
    d = save_tiny_discriminator(tmp_path / "d.safetensors", provenance={"steps": 90, "config": {"name": "a"}})
    with pytest.raises(augment.JobSpecError, match="another run or step") as e:
        augment.check_discriminator(gen_meta, models.read_metadata(d), "d")
    assert e.value.field == "discriminator"
    with pytest.raises(augment.JobSpecError, match="do not match"):
        augment.check_discriminator({"class_names": FASHION[::-1]}, models.read_metadata(d), "d")


@pytest.mark.parametrize("change,field,message", [
    ({"min_confidence": 0.0}, "min_confidence", "in (0, 1]"),
    ({"min_confidence": 1.5}, "min_confidence", "in (0, 1]"),
    ({"classifier_sha256": None}, "classifier", "checkpoint is needed"),
    ({"d_keep_fraction": 0.5}, "discriminator", "checkpoint is needed"),
    ({"min_confidence": None}, "selection", "needs min_confidence"),
    ({"max_draw_factor": 0}, "max_draw_factor", "1..1000"),
    ({"d_calibration": 4}, "d_calibration", "16..65536"),
])
def test_the_selection_spec_names_the_bad_field(change, field, message):
    fields = {"min_confidence": 0.9, "classifier_sha256": "0" * 64, **change}
    with pytest.raises(augment.JobSpecError) as e:
        augment.Selection(**fields)
    assert e.value.field == field and message in str(e.value)


def test_selection_spec_round_trip_and_seed_range():
    sel = augment.Selection(min_confidence=0.9, classifier_sha256="0" * 64, max_draw_factor=3, classifier="c")
    job = augment.AugmentJob(checkpoint_sha256="1" * 64, class_names=FASHION, counts=(2,) * 10, seed=5, selection=sel)
    assert augment.AugmentJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    assert [job.candidate_base(c) for c in (0, 1, 9)] == [5, 11, 59] and job.max_draws(3) == 6
    assert "classifier" not in job.identity()["selection"]  # the path is a display name; the sha256 counts
    plain = augment.AugmentJob(checkpoint_sha256="1" * 64, class_names=FASHION, counts=(2,) * 10, seed=5)
    assert "selection" not in plain.to_dict()  # jobs without selection keep their spec file
    with pytest.raises(augment.JobSpecError, match="for 60 candidates") as e:
        augment.AugmentJob(checkpoint_sha256="1" * 64, class_names=FASHION, counts=(2,) * 10, seed=2**63 - 50,
                           selection=sel)
    assert e.value.field == "seed"


def test_unreachable_count_is_a_clear_job_error(tiny, tmp_path, capsys):
    """A random 10-class classifier never gives 0.99: the class fails once its bounded draws cannot suffice."""
    out = tmp_path / "job"
    assert augment_cli(tiny["ckpt"], out, "--per-class", '{"bag": 3}', "--classifier", tiny["classifier"],
                       "--min-confidence", 0.99, "--max-draw-factor", 4, "--batch-size", 4) == 2
    err = capsys.readouterr().err
    assert "class 'Bag': 0 of its 12 candidates passed" in err and "raise max_draw_factor" in err
    assert not (out / "manifest.csv").exists()


def test_both_filters_deterministic_and_consistent(tiny, tmp_path):
    """D's top half and a loose classifier filter on the tiny model: same job, same bytes; every kept image
    passes both under re-scoring of its PNG; every rejected draw fails the filter it names."""
    args = ("--per-class", '{"bag": 6, "coat": 6}', "--seed", 3, "--chunk-size", 5, "--batch-size", 4,
            "--d-keep-fraction", 0.5, "--d-calibration", 32, "--classifier", tiny["classifier"],
            "--min-confidence", 0.05)
    assert augment_cli(tiny["ckpt"], tmp_path / "a", *args) == 0
    assert augment_cli(tiny["ckpt"], tmp_path / "b", *args) == 0
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    out = tmp_path / "a"
    rows, rejected = manifest(out), manifest(out, augment.REJECTED_NAME)
    summary = json.loads((out / augment.SELECTION_NAME).read_text())
    limits = {c["class_index"]: c["threshold_d_logit"] for c in summary["classes"]}
    images, labels = written(out, rows)
    D, dmeta = models.load(discriminator_path(tiny["ckpt"]))
    d = discriminator_scorer(D, dmeta)(images, labels)
    assert all(d[i] >= limits[int(labels[i])] - 1e-5 for i in range(len(rows)))
    assert len(rejected) > 0 and all(
        ("d_logit" in r["failed"]) == (float(r["d_logit"]) < limits[int(r["class_index"])]) for r in rejected)
    assert 0.2 < summary["total"]["acceptance_rate"] < 0.8


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("fmt", ["imagefolder", "npz"])
def test_selection_resumes_after_kill_9_byte_identical(tiny, tmp_path, fmt, capsys, one_thread):
    # one thread here as in the killed subprocess (OMP_NUM_THREADS=1): a float32 score's last bits depend on
    # how a reduction is split across threads, and the records of the killed run's chunks are kept as written
    args = ["--per-class", '{"sandal": 8, "dress": 8}', "--seed", 9, "--format", fmt, "--chunk-size", 4,
            "--batch-size", 2, "--d-keep-fraction", 0.5, "--d-calibration", 16]
    reference = tmp_path / "reference"
    assert augment_cli(tiny["ckpt"], reference, *args) == 0
    out = tmp_path / "killed"
    with paused_augment(tiny["ckpt"], out, args, tmp_path / "stderr.log"):
        work = out / ".chunks"  # 5 batches of 2: chunks 0-1 whole (with their draw records), chunk 2 half done
        assert sorted(p.name for p in work.iterdir() if p.name.startswith("chunk-")) == \
            sorted(f"chunk-00000{i}.{ext}" for i in (0, 1) for ext in ("json", "npz" if fmt == "npz" else "done"))
    capsys.readouterr()
    assert augment_cli(tiny["ckpt"], out, *args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["resumed_from"], report["generated"]) == (8, 8)
    assert tree(out) == tree(reference)  # same accepted seeds, same rejected list, same bytes


@pytest.mark.slow  # a real (20-step) training run: 110 s measured on the shared 2-core machine
def test_discriminator_filter_on_a_tiny_trained_run(tmp_path, capsys):
    """A tiny shapes run exports its D beside G (export_discriminator); `ganforge export-discriminator` writes
    the same file from the resume state; the D filter keeps each class's top fraction by D's logit."""
    from tests.training.helpers import train_tiny
    from training.cli import main

    export = train_tiny(tmp_path, steps=20, log_every=10, export_discriminator=True)
    d_file = discriminator_path(export)
    D, dmeta = models.load(d_file)
    gmeta = models.read_metadata(export)
    assert dmeta["kind"] == "discriminator" and dmeta["provenance"] == gmeta["provenance"]
    first = d_file.read_bytes()
    d_file.unlink()
    assert main(["export-discriminator", str(tmp_path / "run")]) == 0
    assert d_file.read_bytes() == first  # the resume state holds the very D of the export
    out = tmp_path / "synth"
    capsys.readouterr()
    assert augment_cli(export, out, "--per-class", 8, "--class", 0, "--class", 1, "--seed", 0,
                       "--d-keep-fraction", 0.25, "--d-calibration", 64, "--batch-size", 32, "--chunk-size", 8) == 0
    summary = json.loads((out / augment.SELECTION_NAME).read_text())
    rows = manifest(out)
    images, labels = written(out, rows)
    d = discriminator_scorer(D, dmeta)(images, labels)
    limits = {c["class_index"]: c["threshold_d_logit"] for c in summary["classes"]}
    assert all(d[i] >= limits[int(labels[i])] - 1e-5 for i in range(len(rows)))
    assert 0.1 < summary["total"]["acceptance_rate"] < 0.5  # about the kept fraction (0.25)
    # kept images score higher under D than the candidates it rejected
    rejected = manifest(out, augment.REJECTED_NAME)
    assert np.mean(d) > np.mean([float(r["d_logit"]) for r in rejected])
