"""Standard Inception FID/KID: the optional extra works from a local weights file, and says what is missing."""
from unittest import mock

import pytest
import torch

from training.evaluate import feature_space_name, fid_kid, inception_feature


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory):
    """An Inception-v3 state dict of the right layout with random weights (the real file is ~95 MB and
    cannot be fetched here): the code path is the one the real weights take."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None), \
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_missing_weights_file_is_a_clear_error_and_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the default place: ~/.cache/ganforge/
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=AssertionError("download attempted")):
        with pytest.raises(ValueError, match=r"no weights file at .*\.cache/ganforge/weights-inception.*docs/data\.md"):
            inception_feature()
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth: not a usable Inception-v3 weights file"):
        inception_feature(tmp_path / "junk.pth")


def test_inception_fid_kid_from_a_local_weights_file(stand_in_weights):
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=AssertionError("download attempted")):
        net = inception_feature(stand_in_weights)
    saved = torch.load(stand_in_weights, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())  # the file's weights
    real = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    scores = fid_kid(net, real, real.clone(), subset_size=2)  # greyscale is expanded to RGB for Inception
    assert abs(scores["fid"]) < 1e-3 and abs(scores["kid"]) < 1e-3  # a set against itself
    assert "inception-v3 pool3" in feature_space_name("inception", None, str(stand_in_weights))
