"""`ganforge augment` and its engine, the `augment` package: exact counts, determinism, the manifest, resume after a
real kill -9, refusing a folder that holds something else. Tiny random-weight checkpoint, CPU."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import augment
import models
from models.checkpoint import CONDITIONAL, build_metadata, file_hash
from models.sampling import generate, to_uint8
from tests.conftest import PROJECT_ROOT
from training.cli import main

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

# Runs `ganforge augment ARGS...` with a between_batches hook that prints PAUSED after N batches and sleeps,
# so the test can kill -9 it at a known point: in the middle of a chunk, with part of its files written.
PAUSING_CLI = r"""
import sys, time
import augment.writer as writer
from training.cli import main

after, argv = int(sys.argv[1]), sys.argv[2:]
real_run = writer.run

def run(job, out, render, progress=None, between_batches=None, **kwargs):
    calls = [0]
    def pause():
        calls[0] += 1
        if calls[0] == after:
            print("PAUSED", flush=True)
            time.sleep(600)
    return real_run(job, out, render, progress, pause, **kwargs)

writer.run = run
sys.exit(main(argv))
"""


@contextlib.contextmanager
def paused_augment(ckpt: Path, out: Path, args: list, log_path: Path, after: int = 5):
    """`ganforge augment` in a subprocess, paused (PAUSED printed) after `after` batches for the block's body,
    then killed with SIGKILL at the block's end."""
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_CLI, str(after), "augment", str(ckpt), "--out", str(out),
                             *map(str, args)], cwd=PROJECT_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=log)
    try:
        line = proc.stdout.readline()  # EOF ('') if it died first
        assert line.strip() == b"PAUSED", (line, log_path.read_text()[-2000:])
        yield proc
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()


def save_tiny_cgan(path: Path, seed: int = 0) -> Path:
    from models.conditional import ConditionalGenerator, ConditionalGeneratorConfig

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        g = ConditionalGenerator(ConditionalGeneratorConfig(num_classes=10, img_resolution=32, img_channels=1,
                                                            z_dim=32, base_channels=8, max_channel_mult=4,
                                                            embed_dim=16))
    models.save(g.eval(), path, build_metadata(CONDITIONAL, FASHION, 32, 1, [28, 28]))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_cgan(tmp_path_factory.mktemp("augment") / "tiny-cgan")


def augment_cli(ckpt: Path, out: Path, *args) -> int:
    return main(["augment", str(ckpt), "--out", str(out), *map(str, args)])


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) -> its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def test_imagefolder_counts_files_and_manifest(ckpt, tmp_path, capsys):
    out = tmp_path / "synth"
    per_class = json.dumps({"sneaker": 5, "T-shirt/top": 3, "9": 2})
    assert augment_cli(ckpt, out, "--per-class", per_class, "--seed", 11, "--chunk-size", 4, "--batch-size", 3) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["total"], report["generated"], report["resumed_from"]) == (10, 10, 0)
    assert sorted(p.name for p in out.iterdir()) == ["0_T-shirt_top", "7_Sneaker", "9_Ankle_boot",
                                                     "ganforge-augment.json", "manifest.csv"]
    assert {d: len(list((out / d).glob("*.png"))) for d in ("0_T-shirt_top", "7_Sneaker", "9_Ankle_boot")} == \
        {"0_T-shirt_top": 3, "7_Sneaker": 5, "9_Ankle_boot": 2}
    rows = augment.read_manifest(out)
    assert list(rows[0]) == list(augment.MANIFEST_COLUMNS)
    assert [r["index"] for r in rows] == [str(k) for k in range(10)]
    assert [r["class_name"] for r in rows] == ["T-shirt/top"] * 3 + ["Sneaker"] * 5 + ["Ankle boot"] * 2
    assert [int(r["seed"]) for r in rows] == list(range(11, 21))  # image k uses seed + k
    assert {r["model"] for r in rows} == {"tiny-cgan"} and {r["checkpoint_sha256"] for r in rows} == {file_hash(ckpt)}
    assert sorted(r["file"] for r in rows) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    G, meta = models.load(ckpt)
    for r in rows:  # each file is what the shared sampling path gives for its class and seed, alone
        alone = to_uint8(generate(G, [int(r["class_index"])], [int(r["seed"])]), meta)[0]
        diff = np.abs(png((out / r["file"]).read_bytes()).astype(int) - alone.astype(int))
        assert r["file"].startswith(f"{r['class_index']}_") and diff.max() <= 1 and (diff > 0).mean() <= 0.01


def test_npz_is_the_ganforge_sample_contract(ckpt, tmp_path):
    from training.sample import sample_arrays

    out = tmp_path / "npz"
    # both on the CPU: the contract is bit-exactness on one device (a GPU's kernels round differently)
    assert augment_cli(ckpt, out, "--per-class", 3, "--seed", 7, "--format", "npz", "--device", "cpu") == 0
    got = np.load(out / "images.npz")
    images, labels, seeds, meta = sample_arrays(str(ckpt), 3, 7, device="cpu")
    assert sorted(got.files) == ["class_names", "images", "labels", "seeds"]
    assert np.array_equal(got["images"], images) and got["images"].dtype == np.uint8  # same single batch: exact
    assert np.array_equal(got["labels"], labels) and got["labels"].dtype == np.int64
    assert np.array_equal(got["seeds"], seeds) and got["class_names"].tolist() == FASHION
    rows = augment.read_manifest(out)
    assert [(r["file"], int(r["index"]), int(r["class_index"])) for r in rows] == \
        [("images.npz", k, int(labels[k])) for k in range(30)]
    assert sorted(p.name for p in out.iterdir()) == ["ganforge-augment.json", "images.npz", "manifest.csv"]


def test_npz_assembled_from_many_chunks(ckpt, tmp_path):
    """A job cut into uneven chunks and batches: counts exact, rows in index order, every image its own."""
    out = tmp_path / "chunks"
    assert augment_cli(ckpt, out, "--total", 23, "--seed", 3, "--format", "npz", "--chunk-size", 5,
                       "--batch-size", 2) == 0
    got = np.load(out / "images.npz")
    assert np.bincount(got["labels"], minlength=10).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert got["seeds"].tolist() == list(range(3, 26)) and got["images"].shape == (23, 28, 28)
    G, meta = models.load(ckpt)
    expected = to_uint8(generate(G, got["labels"].tolist(), got["seeds"].tolist()), meta)
    diff = np.abs(got["images"].astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01


def test_counts_total_and_classes():
    assert augment.resolve_counts(FASHION, total=23) == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert augment.resolve_counts(FASHION, total=5, classes=["bag", "sneaker"]) == [0] * 7 + [3, 2, 0]
    assert augment.resolve_counts(FASHION, per_class=4, classes=[9]) == [0] * 9 + [4]
    assert augment.resolve_counts(FASHION, per_class={"bag": 2, "tshirt": 1}) == [1] + [0] * 7 + [2, 0]
    for kwargs, message in [({"per_class": {"unicorn": 1}}, "valid classes"),
                            ({"per_class": {"bag": 1, "Bag": 2}}, "twice"),
                            ({"per_class": 3, "total": 30}, "exactly one"),
                            ({}, "exactly one"),
                            ({"per_class": {"bag": 0}}, "no image"),
                            ({"per_class": {"bag": -1}}, ">= 0"),
                            ({"total": 0}, ">= 1")]:
        with pytest.raises(ValueError, match=message):
            augment.resolve_counts(FASHION, **kwargs)


@pytest.mark.parametrize("change,field,message", [
    ({"seed": -1}, "seed", "seed must be in 0..9223372036854775797 for 11 images"),
    ({"seed": 2**63 - 10}, "seed", "(seed + index <= 9223372036854775807)"),
    ({"truncation": 0.0}, "truncation", "truncation must be > 0"),
    ({"format": "tar"}, "format", "format must be one of ['imagefolder', 'npz']"),
    ({"counts": (1, 2)}, "counts", "do not fit classes"),
    ({"chunk_size": 0}, "chunk_size", "must be >= 1"),
])
def test_the_job_spec_names_the_bad_field(change, field, message):
    """The spec is the one validator of its ranges; the service answers 400 on `JobSpecError.field`."""
    fields = {"checkpoint_sha256": "0" * 64, "class_names": FASHION, "counts": (2,) + (1,) * 9, "seed": 0,
              **change}
    with pytest.raises(augment.JobSpecError) as e:
        augment.AugmentJob(**fields)
    assert e.value.field == field and message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_per_class_cli_values():
    from training.cli import parse_per_class

    assert parse_per_class(" 500 ") == 500
    assert parse_per_class('{"sneaker": 5, "bag": 2}') == {"sneaker": 5, "bag": 2}
    for text in ("five", "[1, 2]", "-3"):
        with pytest.raises(ValueError, match="--per-class must be a number or a JSON object"):
            parse_per_class(text)


def test_same_job_same_bytes_and_seed_matters(ckpt, tmp_path):
    args = ("--per-class", 2, "--seed", 5, "--chunk-size", 3, "--batch-size", 2)
    assert augment_cli(ckpt, tmp_path / "a", *args) == 0
    assert augment_cli(ckpt, tmp_path / "b", *args) == 0
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b and len(a) == 22
    assert augment_cli(ckpt, tmp_path / "c", "--per-class", 2, "--seed", 6, "--chunk-size", 3, "--batch-size", 2) == 0
    c = tree(tmp_path / "c")
    assert a.keys() == c.keys() and a["0_T-shirt_top/000000.png"] != c["0_T-shirt_top/000000.png"]


def test_refuses_a_different_job_and_foreign_folders(ckpt, tmp_path, capsys):
    out = tmp_path / "job"
    assert augment_cli(ckpt, out, "--per-class", 1, "--seed", 1) == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert augment_cli(ckpt, out, "--per-class", 1, "--seed", 2) == 2
    err = capsys.readouterr().err
    assert "different augmentation job" in err and '"seed"' in err
    other = save_tiny_cgan(tmp_path / "other-weights", seed=1)  # same classes, other weights
    assert augment_cli(other, out, "--per-class", 1, "--seed", 1) == 2
    assert "checkpoint_sha256" in capsys.readouterr().err
    assert augment_cli(ckpt, out, "--per-class", 1, "--seed", 1, "--format", "npz") == 2
    # the same job again: nothing to do, nothing rewritten
    assert augment_cli(ckpt, out, "--per-class", 1, "--seed", 1) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generated"] == 0
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    assert augment_cli(ckpt, foreign, "--per-class", 1) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]


def test_refuses_a_folder_another_process_is_writing(ckpt, tmp_path, capsys):
    out = tmp_path / "busy"
    with augment.locked(out):
        assert augment_cli(ckpt, out, "--per-class", 1) == 2
    assert "another process is writing" in capsys.readouterr().err
    assert augment_cli(ckpt, out, "--per-class", 1) == 0  # the lock went with its holder


@pytest.mark.parametrize("fmt", ["imagefolder", "npz"])
def test_resume_after_kill_9_in_the_middle_of_a_chunk(ckpt, tmp_path, fmt, capsys):
    args = ["--total", 20, "--seed", 9, "--format", fmt, "--chunk-size", 4, "--batch-size", 2]
    reference = tmp_path / "reference"
    assert augment_cli(ckpt, reference, *args) == 0
    out = tmp_path / "killed"
    work = out / ".chunks"
    with paused_augment(ckpt, out, args, tmp_path / "stderr.log"):
        # 5 batches of 2 are done: chunks 0-1 complete, chunk 2 half written and not recorded
        assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == \
            [f"chunk-00000{i}.{'npz' if fmt == 'npz' else 'done'}" for i in (0, 1)]
        if fmt == "imagefolder":
            assert len(list(out.rglob("*.png"))) == 10  # 8 recorded + 2 of the unfinished chunk
        assert not (out / "manifest.csv").exists()
    # a write the kill cut short leaves a temporary file: the rerun must clean it up, not ship it
    (out / "0_T-shirt_top").mkdir(exist_ok=True)
    (out / "0_T-shirt_top" / ".000010.png.x1y2.tmp").write_bytes(b"\x89PNG trunc")
    (work / ".chunk-000002.npz.x1y2.tmp").write_bytes(b"PK trunc")
    capsys.readouterr()
    assert augment_cli(ckpt, out, *args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["resumed_from"], report["generated"]) == (8, 12)
    if fmt == "npz":
        (out / "0_T-shirt_top").rmdir()  # the planted folder, not part of an npz job
    assert tree(out) == tree(reference)  # nothing lost, duplicated or corrupted; byte-identical


def test_resume_after_kill_9_at_an_arbitrary_moment(ckpt, tmp_path):
    """No pause hook: kill -9 as soon as the first chunk is recorded, wherever the writer is then."""
    args = ["--total", 120, "--seed", 4, "--chunk-size", 6, "--batch-size", 1]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "augment", str(ckpt), "--out", str(out),
                             *map(str, args)], cwd=PROJECT_ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".chunks" / "chunk-000000.done").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the writer ended before its first chunk"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "manifest.csv").exists()  # really interrupted
    assert augment_cli(ckpt, out, *args) == 0
    assert augment_cli(ckpt, tmp_path / "reference", *args) == 0
    assert tree(out) == tree(tmp_path / "reference")
    with open(out / "manifest.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 120 == len(list(out.rglob("*.png")))


BUNDLED_CGAN = PROJECT_ROOT / "checkpoints" / "fashion_mnist_cgan"


@pytest.mark.skipif(not (BUNDLED_CGAN / "model.safetensors").is_file(), reason="fashion_mnist_cgan not bundled yet")
def test_bundled_cgan_augment_equals_ganforge_sample(tmp_path):
    from training.sample import sample_arrays

    out = tmp_path / "bundled"
    assert augment_cli(BUNDLED_CGAN, out, "--per-class", 2, "--seed", 3, "--format", "npz", "--device", "cpu") == 0
    images, labels, seeds, _ = sample_arrays(str(BUNDLED_CGAN), 2, 3, device="cpu")
    got = np.load(out / "images.npz")
    assert np.array_equal(got["images"], images) and np.array_equal(got["labels"], labels)
    assert {r["model"] for r in augment.read_manifest(out)} == {"fashion_mnist_cgan"}
