"""Every loader, on the real data where it ships (Fashion-MNIST) and on small files in the real formats."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import needs_fashion_mnist
from training.data import convert_channels, geometry, load_dataset, make_shapes, prepare, read_idx

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_idx(path, array, compress=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:  # closed here: 3.12's GzipFile buffers writes
        f.write(data)


def test_read_idx_round_trip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte.gz", arr, compress=True)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)
    (tmp_path / "b").write_bytes((tmp_path / "a-idx3-ubyte.gz").read_bytes()[:10])
    write_idx(tmp_path / "c", arr)
    (tmp_path / "c").write_bytes((tmp_path / "c").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "c")


@needs_fashion_mnist
def test_fashion_mnist_from_debian_package():
    test = load_dataset("fashion-mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.class_names[7] == "Sneaker" and torch.bincount(test.labels).tolist() == [1000] * 10


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 9]), compress=True)
    data = load_dataset("fashion-mnist", "test", root=str(tmp_path))
    assert np.array_equal(data.images[:, 0].numpy(), imgs) and data.labels.tolist() == [0, 1, 2, 3, 9]


def test_mnist_through_torchvision_from_raw_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    data = load_dataset("mnist", "train", root=str(tmp_path))
    assert data.images.shape == (6, 1, 28, 28) and data.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert data.class_names[0].startswith("0")


def test_cifar10_from_pickled_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [3, 5, 1]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))
    train = load_dataset("cifar10", "train", root=str(tmp_path))
    assert train.images.shape == (15, 3, 32, 32) and train.class_names[3] == "cat"
    test = load_dataset("cifar10", "test", root=str(tmp_path), channels=1)
    assert test.images.shape == (3, 1, 32, 32) and test.labels.tolist() == [3, 5, 1]


def test_imagefolder_classes_from_subfolders(tmp_path):
    for cls, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(3):  # the last of a class is held out as its test split
            Image.new("RGB", (40, 30), colour).save(tmp_path / cls / f"{i}.png")
    data = load_dataset("imagefolder", "train", root=str(tmp_path), resolution=16)
    assert load_dataset("imagefolder", "test", root=str(tmp_path), resolution=16).labels.tolist() == [0, 1]
    assert data.class_names == ["cats", "dogs"] and data.images.shape == (4, 3, 16, 16)
    assert data.labels.tolist() == [0, 0, 1, 1] and data.images[0, 0].float().mean() > 250
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("imagefolder")


def test_shapes_are_deterministic_and_balanced():
    a, b = make_shapes(200, 16, seed=3), make_shapes(200, 16, seed=3)
    assert torch.equal(a.images, b.images) and a.images.shape == (200, 3, 16, 16)
    assert torch.bincount(a.labels).min() > 30


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="allowed.*fashion-mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("shapes", "valid")


def test_prepare_pads_28_to_32_and_resizes_otherwise():
    imgs = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    x = prepare(imgs, 32)
    assert x.shape == (2, 1, 32, 32) and x[0, 0, 0, 0] == -1 and x[0, 0, 2:30, 2:30].eq(1).all()
    assert geometry([28, 28], 32) == ("pad", [28, 28])
    assert prepare(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), 32).shape == (1, 3, 32, 32)
    assert geometry([64, 64], 32) == ("resize", [32, 32])


def test_convert_channels():
    rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    assert convert_channels(rgb, 1).item() == 76  # 0.299 * 255
    assert convert_channels(convert_channels(rgb, 1), 3).shape == (1, 3, 1, 1)
