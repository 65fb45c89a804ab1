"""benchmarks/pair_spread.py: the mean same-class pixel distance."""
import numpy as np
import pytest

from benchmarks.pair_spread import mean_pair_l1, spread_per_class


def test_the_mean_pair_distance_is_worked_out_by_hand_and_taken_per_class():
    images = np.zeros((5, 1, 2, 2), dtype=np.uint8)
    images[1] = 255                      # class 0: {black, white, black}: pairs 1, 0, 1 -> 2/3
    images[3, :, 0] = 255                # class 1: {half white, black}: one pair, 0.5
    labels = np.array([0, 0, 0, 1, 1])
    assert spread_per_class(images, labels, 2) == pytest.approx([2 / 3, 0.5])
    assert mean_pair_l1(np.full((4, 3, 3), 7, dtype=np.uint8)) == 0.0
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        mean_pair_l1(images[:1])
