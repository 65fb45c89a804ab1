"""Streamed datasets on small files in the real formats; each malformed folder's one-line error."""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.dataset_files import CIFAR_CLASSES, write_cifar, write_imagefolder
from training.cli import main
from training.datasets import CifarBatches, ImageFolderFiles, decode_image, materialize, open_dataset
from training.loader import GlobalBatchSampler, batches, make_loader


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_cifar_batches_are_read_without_unpickling_code_and_memory_mapped(tmp_path, protocol):
    folder = write_cifar(tmp_path / "cifar-10-batches-py", per_batch=12, test=8, protocol=protocol)
    train = open_dataset("cifar10", "train", root=str(tmp_path))
    assert len(train) == 60 and train.class_names == CIFAR_CLASSES and train.hflip
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f)  # the reference: Python's own unpickler
    img, label = train[12]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert np.array_equal(img.numpy().reshape(-1), raw[b"data"][0]) and label == raw[b"labels"][0]
    flipped, _ = train[(12, True)]
    assert torch.equal(flipped, img.flip(-1))
    if protocol >= 3:  # raw byte strings: mapped from the file, not copied into memory
        assert all(isinstance(a, np.memmap) for a in train._arrays)
    test = CifarBatches(str(folder), "test", channels=1)
    assert len(test) == 8 and test[0][0].shape == (1, 32, 32)
    whole = materialize(train, workers=2)
    assert whole.images.shape == (60, 3, 32, 32) and torch.equal(whole.images[12], img)


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    folder = write_cifar(tmp_path, per_batch=4, test=4)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}))
    with pytest.raises(ValueError, match=r"data_batch_3: refusing to unpickle (posix|os)\.system"):
        CifarBatches(str(folder), "train")
    assert not (tmp_path / "pwned").exists()


def one_line_error(capsys, argv):
    assert main(argv) != 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "error" in ln.lower() or "Traceback" in ln]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err  # progress bars aside, one line
    return lines[0]


def test_malformed_cifar_folders_give_one_line_naming_the_file(tmp_path, capsys):
    folder = write_cifar(tmp_path / "c", per_batch=4, test=4)
    argv = ["train-classifier", "--dataset", "cifar10", "--root", str(folder), "--out", str(tmp_path / "o"),
            "--width", "4"]
    (folder / "data_batch_4").write_bytes(pickle.dumps({b"images": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    line = one_line_error(capsys, argv)
    assert "data_batch_4" in line and "keys ['images', 'labels']; expected 'data' and 'labels'" in line
    (folder / "data_batch_4").write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}))
    assert "'data' must be uint8 (N, 3072)" in one_line_error(capsys, argv)
    (folder / "data_batch_4").write_bytes(b"not a pickle at all")
    assert "data_batch_4: not a readable CIFAR-10 pickle" in one_line_error(capsys, argv)
    (folder / "data_batch_4").unlink()
    assert "missing CIFAR-10 file(s) ['data_batch_4']" in one_line_error(capsys, argv)


def test_imagefolder_converts_modes_fits_non_square_and_holds_out_a_test_split(tmp_path):
    root = write_imagefolder(tmp_path / "photos", per_class=10)
    train, test = (ImageFolderFiles(str(root), s, resolution=64) for s in ("train", "test"))
    assert train.class_names == ["cat", "dog"] and train.hflip
    assert len(train) == 18 and len(test) == 2 and test.labels.tolist() == [0, 1]  # every 10th image
    data = materialize(train, workers=2)
    assert data.images.shape == (18, 3, 64, 64) and data.images.dtype == torch.uint8
    # the class colour fills the centre whatever the file's mode (RGBA, palette, greyscale JPEG excepted)
    centre = data.images[:, :, 28:36, 28:36].float().mean((2, 3))
    assert (centre[data.labels == 0, 0] > 150).sum() >= 8 and (centre[data.labels == 1, 2] > 150).sum() >= 8
    rgba = decode_image(root / "cat" / "000.png", 64, 3, "crop")
    assert rgba.shape == (3, 64, 64)
    pad = decode_image(root / "cat" / "003.jpg", 64, 3, "pad")  # 80x48 -> 64x38 on black
    assert pad[:, :10].max() == 0 and pad.shape == (3, 64, 64)
    grey = ImageFolderFiles(str(root), "train", resolution=32, channels=1, fit="squash")
    assert grey[0][0].shape == (1, 32, 32)


def test_imagefolder_with_train_and_test_folders(tmp_path):
    write_imagefolder(tmp_path / "train", per_class=3, classes=("a", "b", "c"))
    write_imagefolder(tmp_path / "test", per_class=2, classes=("a", "b", "c"))
    assert len(ImageFolderFiles(str(tmp_path), "train", 32)) == 9
    assert len(ImageFolderFiles(str(tmp_path), "test", 32)) == 6


def test_malformed_imagefolders_give_one_line_naming_the_path(tmp_path, capsys):
    def argv(root):
        return ["train-classifier", "--dataset", "imagefolder", "--root", str(root), "--out", str(tmp_path / "o"),
                "--resolution", "16", "--width", "4", "--workers", "1", "--steps", "20"]

    assert "no such folder" in one_line_error(capsys, argv(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    assert "no class subfolders" in one_line_error(capsys, argv(tmp_path / "flat"))
    (tmp_path / "none" / "cat").mkdir(parents=True)
    (tmp_path / "none" / "cat" / "notes.txt").write_text("hi")
    assert "none: no images" in one_line_error(capsys, argv(tmp_path / "none"))
    write_imagefolder(tmp_path / "one", per_class=12, classes=("cat",))
    assert "found 1 class folder (['cat']); a class-conditional dataset needs at least 2" in one_line_error(
        capsys, argv(tmp_path / "one"))
    write_imagefolder(tmp_path / "few", per_class=3)
    assert "need at least 2 classes and 10 images" in one_line_error(capsys, argv(tmp_path / "few"))
    root = write_imagefolder(tmp_path / "bad", per_class=10)
    (root / "dog" / "005.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    line = one_line_error(capsys, argv(root))
    assert f"{root / 'dog' / '005.jpg'}: unreadable image" in line


def test_unreadable_file_in_a_worker_comes_back_as_one_line(tmp_path):
    root = write_imagefolder(tmp_path, per_class=10)
    (root / "cat" / "004.jpg").write_bytes(b"")
    ds = ImageFolderFiles(str(root), "train", 32)
    loader = make_loader(ds, GlobalBatchSampler(len(ds), 18, seed=0, draws=range(1)), workers=1)
    with pytest.raises(ValueError) as info:
        list(batches(loader))
    assert str(info.value).startswith(f"{root / 'cat' / '004.jpg'}: unreadable image") and "\n" not in str(info.value)
