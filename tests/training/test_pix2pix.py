"""Image-to-image: U-Net/PatchGAN shapes, paired-data formats, derivations, training, translate CLI."""
import numpy as np
import pytest
import torch
from PIL import Image

from models import build, load
from models.derivations import derive, downsample, edges, grayscale, mask, source_channels
from models.sampling import translate
from tests.training.helpers import tiny_run
from training.cli import main
from training.config import from_dict
from training.loop import train
from training.paired import load_paired

PIX2PIX_RUN = {
    "data": {"name": "shapes", "resolution": 16, "paired": "edges"},
    "generator": {"architecture": "UNetGenerator", "depth": 3, "base_channels": 16},
    "discriminator": {"architecture": "PatchDiscriminator", "base_channels": 16, "n_layers": 2},
    "loss": "non-saturating", "l1_weight": 100.0, "batch_size": 16,
}


@pytest.mark.parametrize("cin,cout", [(1, 1), (1, 3), (3, 1), (3, 3)])
@pytest.mark.parametrize("size", [(16, 16), (24, 40)])
def test_unet_and_patchgan_shapes(cin, cout, size):
    g = build("UNetGenerator", {"in_channels": cin, "out_channels": cout, "depth": 3, "base_channels": 4})
    d = build("PatchDiscriminator", {"in_channels": cin, "out_channels": cout, "base_channels": 4, "n_layers": 2})
    x = torch.randn(2, cin, *size)
    y = g(x)
    assert y.shape == (2, cout, *size)
    assert d(y, x).shape[:2] == (2, 1)


def test_unet_refuses_sizes_off_its_stride_but_translate_pads_and_crops():
    g = build("UNetGenerator", {"in_channels": 3, "out_channels": 1, "depth": 3, "base_channels": 4}).eval()
    with pytest.raises(ValueError, match="multiple of 8"):
        g(torch.zeros(1, 3, 13, 21))
    meta = {"task": {"source_channels": 3, "target_channels": 1}}
    out = translate(g, np.zeros((2, 13, 21, 3), dtype=np.uint8), meta)
    assert out.shape == (2, 13, 21) and out.dtype == np.uint8
    grey_in = translate(g, np.zeros((1, 13, 21), dtype=np.uint8), meta)  # grey upload to an RGB model
    assert grey_in.shape == (1, 13, 21)


def test_derivations():
    x = -torch.ones(1, 1, 16, 16)
    x[..., 4:12, 4:12] = 1.0  # a white square on black
    e = edges(x)
    assert e.shape == (1, 1, 16, 16) and e[0, 0, 8, 8] == 1 and e[0, 0, 0, 0] == 1  # flat areas white
    assert (e[0, 0, 4, 4:12] == -1).all()  # the square's border is black
    assert torch.allclose(downsample(torch.full((1, 3, 16, 16), 0.3)), torch.full((1, 3, 16, 16), 0.3))
    m = mask(torch.ones(1, 3, 16, 16))
    assert (m[..., 4:12, 4:12] == 0).all() and (m[..., :4, :] == 1).all()
    assert grayscale(torch.ones(1, 3, 4, 4)).shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="RGB"):
        grayscale(torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="allowed.*edges"):
        derive("blur", x)
    assert [source_channels(n, 3) for n in ("edges", "downsample", "mask", "grayscale")] == [1, 3, 3, 1]
    assert torch.equal(edges(x), edges(x))  # deterministic


@pytest.mark.parametrize("name", ["edges", "downsample", "mask", "grayscale"])
def test_pairs_derived_from_a_dataset(name):
    data = load_paired(name, "shapes", "test", None, 16)
    source, target = data.batch(torch.arange(4), 16)
    assert target.shape == (4, 3, 16, 16) and source.shape == (4, data.source_channels, 16, 16)
    assert data.labels is not None and data.derivation == name


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_aligned_format(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        a, b = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), np.full((20, 20, 3), 200, np.uint8)
        _save(tmp_path / "train" / f"{i}.png", np.concatenate([a, b], axis=1))
    data = load_paired("aligned", "", "train", str(tmp_path), 16, channels=3, source_channels_=3)
    assert data.sources.shape == (3, 3, 16, 16) and (data.targets == 200).all()
    flipped = load_paired("aligned", "", "train", str(tmp_path), 16, channels=3, direction="BtoA")
    assert (flipped.sources == 200).all()
    _save(tmp_path / "odd" / "train" / "x.png", np.zeros((20, 21, 3), np.uint8))
    with pytest.raises(ValueError, match="even width"):
        load_paired("aligned", "", "train", str(tmp_path / "odd"), 16)


def test_two_folder_format(tmp_path):
    for i in range(2):
        _save(tmp_path / "A" / f"{i}.png", np.zeros((10, 12), np.uint8))
        _save(tmp_path / "B" / f"{i}.png", np.full((10, 12, 3), 255, np.uint8))
    data = load_paired("folders", "", "train", str(tmp_path), 16, channels=3, source_channels_=1)
    assert data.sources.shape == (2, 1, 16, 16) and data.targets.shape == (2, 3, 16, 16)
    _save(tmp_path / "B" / "extra.png", np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="unmatched.*extra"):
        load_paired("folders", "", "train", str(tmp_path), 16, channels=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pix2pix")
    return train(from_dict(tiny_run(tmp, steps=150, **PIX2PIX_RUN))), tmp


def test_training_brings_l1_well_below_the_input(trained):
    from training.translate import translate_dataset

    ckpt, _ = trained
    arrays = translate_dataset(str(ckpt), "shapes", "test", limit=200)
    out_l1 = np.abs(arrays["outputs"].astype(float) - arrays["targets"]).mean() / 255
    inputs = np.repeat(arrays["inputs"][..., None], 3, -1)
    in_l1 = np.abs(inputs.astype(float) - arrays["targets"]).mean() / 255
    assert out_l1 < 0.5 * in_l1, (out_l1, in_l1)
    assert arrays["labels"].shape == (200,) and arrays["inputs"].shape == (200, 16, 16)


def test_checkpoint_describes_the_task(trained):
    ckpt, _ = trained
    _, meta = load(ckpt)
    assert meta["kind"] == "image-to-image"
    assert meta["task"] == {"source_channels": 1, "target_channels": 3, "derivation": "edges", "paired": "edges",
                            "direction": "AtoB", "training_geometry": "pad"}


def test_translate_cli_on_png_files_of_a_new_size(trained, tmp_path, capsys):
    ckpt, _ = trained
    _save(tmp_path / "in" / "sketch.png", np.full((37, 53), 255, np.uint8))
    _save(tmp_path / "in" / "photo.jpg", np.zeros((20, 30, 3), np.uint8))
    assert main(["translate", str(ckpt), str(tmp_path / "in" / "sketch.png"), "--out", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "sketch.png").size == (53, 37)
    assert main(["translate", str(ckpt), str(tmp_path / "in" / "photo.jpg"), "--derive",
                 "--out", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "photo.png").size == (30, 20)
    assert main(["translate", str(ckpt), "--dataset", "shapes", "--split", "test", "--limit", "5",
                 "--out", str(tmp_path / "pairs.npz")]) == 0
    z = np.load(tmp_path / "pairs.npz")
    assert {"inputs", "outputs", "targets", "labels"} <= set(z.files) and z["outputs"].shape == (5, 16, 16, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["translate", str(ckpt), str(tmp_path / "bad.png"), "--out", str(tmp_path / "out")]) == 2
    assert "not an image" in capsys.readouterr().err


def test_l1_only_baseline_trains_without_a_discriminator(tmp_path):
    ckpt = train(from_dict(tiny_run(tmp_path, steps=2, adversarial_weight=0.0, **PIX2PIX_RUN)))
    _, meta = load(ckpt)
    assert meta["provenance"]["config"]["adversarial_weight"] == 0.0


def test_patchgan_features_end_with_its_logits():
    d = build("PatchDiscriminator", {"in_channels": 1, "out_channels": 3, "base_channels": 4, "n_layers": 2})
    x, source = torch.randn(2, 3, 16, 16), torch.randn(2, 1, 16, 16)
    feats = d.features(x, source)
    assert len(feats) == 2 + 1 + 1  # one LeakyReLU per conv but the last, then the logits
    assert torch.equal(feats[-1], d(x, source))
    assert [f.shape[1] for f in feats[:-1]] == [4, 8, 16]


def test_feature_matching_pulls_only_the_fake_side():
    from training.losses import feature_matching

    real = [torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 8, 4, 4, requires_grad=True)]
    assert feature_matching([r.detach() for r in real], real).item() == 0
    fake = [(r + 0.5).detach().requires_grad_() for r in real]
    loss = feature_matching(fake, real)
    assert loss.item() == pytest.approx(1.0)  # 0.5 per layer, summed over two layers
    loss.backward()
    assert all(f.grad is not None for f in fake) and all(r.grad is None for r in real)


def test_training_with_feature_matching_logs_it(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(from_dict(tiny_run(tmp_path, steps=4, log_every=2, feature_matching=10.0, **PIX2PIX_RUN)))
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    assert all(e.value > 0 for e in events.Scalars("loss/feature_matching"))


@pytest.mark.parametrize("overrides,match", [
    ({**PIX2PIX_RUN, "adversarial_weight": 0.0}, "adversarial_weight"),
    ({"generator": {"architecture": "MLPGenerator"}, "discriminator": {"architecture": "MLPDiscriminator"}},
     "MLPDiscriminator"),  # a D without features()
])
def test_feature_matching_refuses_runs_it_cannot_serve(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train(from_dict(tiny_run(tmp_path, steps=1, feature_matching=10.0, **overrides)))
