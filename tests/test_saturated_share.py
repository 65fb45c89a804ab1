"""benchmarks/saturated_share.py: the per-class share of frame-filling bright samples."""
import numpy as np

from benchmarks.saturated_share import saturated_share


def test_counts_only_images_with_half_their_pixels_bright_per_class():
    images = np.zeros((6, 1, 4, 4), dtype=np.uint8)
    images[0] = 255                      # class 0: a white slab
    images[1, :, :2] = 201               # class 0: exactly half the pixels above 200 counts
    images[2, :, :1] = 255               # class 0: a quarter does not
    images[3, :, :3] = 200               # class 1: 200 is not above the threshold
    images[4] = 230                      # class 1: a slab
    labels = np.array([0, 0, 0, 1, 1, 1])
    shares = saturated_share(images, labels, 3)
    assert shares[:2] == [2 / 3, 1 / 3]
    assert np.isnan(shares[2])           # a class with no samples is not a zero
