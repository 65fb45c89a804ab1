"""The step-indexed global-batch sampler and the DataLoader built on it."""
import pytest
import torch

from training.data import make_shapes
from training.datasets import TensorImages
from training.loader import GlobalBatchSampler, batches, make_loader, step_draws


def epoch_permutations(n, seed, epochs):
    """The sequence the sampler is specified to walk: per-epoch permutations seeded by (seed, epoch)."""
    return torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + e))
                      for e in range(epochs)])


def test_world_size_1_walks_the_seeded_epoch_permutations_in_whole_batches():
    s = GlobalBatchSampler(10, 4, seed=3)
    perms = epoch_permutations(10, 3, 3).view(3, 10)
    # 10 // 4 = 2 batches per epoch; each epoch's last 10 % 4 = 2 entries are skipped
    assert torch.equal(torch.cat([s.indices(d) for d in range(6)]), perms[:, :8].flatten())
    assert all(len(set(s.indices(d).tolist())) == 4 for d in range(50))  # never an index twice in a batch


def test_same_seed_same_batches_and_resume_at_a_step_continues_at_the_same_position():
    straight = list(GlobalBatchSampler(37, 8, seed=5, hflip=True, draws=step_draws(0, 12, 2)))
    again = list(GlobalBatchSampler(37, 8, seed=5, hflip=True, draws=step_draws(0, 12, 2)))
    resumed = list(GlobalBatchSampler(37, 8, seed=5, hflip=True, draws=step_draws(7, 12, 2)))
    assert straight == again and resumed == straight[7 * 2:]
    other = list(GlobalBatchSampler(37, 8, seed=6, hflip=True, draws=step_draws(0, 12, 2)))
    assert other != straight
    flips = [f for batch in straight for _, f in batch]
    assert 0.3 < sum(flips) / len(flips) < 0.7  # about half flipped, decided by (seed, draw, position)


def test_step_draws_without_discriminator_read_one_batch_per_step():
    assert list(step_draws(1, 3, 2)) == [2, 3, 4, 5]
    assert list(step_draws(1, 3, 2, adversarial=False)) == [2, 4]


@pytest.mark.parametrize("n", [64, 30])  # 30: not a multiple of the batch
def test_world_size_2_shards_each_global_batch_disjointly(n):
    full = GlobalBatchSampler(n, 16, seed=1, hflip=True)
    ranks = [GlobalBatchSampler(n, 16, seed=1, rank=r, world_size=2, hflip=True) for r in range(2)]
    for draw in range(20):
        a, b = (r.keys(draw) for r in ranks)
        assert len(a) == len(b) == 8
        assert a + b == full.keys(draw)  # union = the world-size-1 global batch, flips included
        assert not {i for i, _ in a} & {i for i, _ in b}  # no index read by both ranks in one step


def test_batch_size_world_size_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="batch_size 10 .*multiple of world_size 4"):
        GlobalBatchSampler(100, 10, seed=0, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        GlobalBatchSampler(100, 8, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        GlobalBatchSampler(0, 8, seed=0)
    with pytest.raises(ValueError, match="batch_size 16 is larger than the dataset .10 images"):
        GlobalBatchSampler(10, 16, seed=0)


def test_dataloader_batches_do_not_depend_on_the_number_of_workers():
    data = make_shapes(50, 8, seed=0)
    ds = TensorImages(data, hflip=True)

    def read(workers):
        sampler = GlobalBatchSampler(len(ds), 12, seed=2, hflip=True, draws=range(6))
        return list(batches(make_loader(ds, sampler, workers=workers)))

    serial, parallel = read(0), read(2)
    assert len(serial) == len(parallel) == 6
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert xa.dtype == torch.uint8 and xa.shape == (12, 3, 8, 8)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    keys = GlobalBatchSampler(len(ds), 12, seed=2, hflip=True).keys(0)
    for (i, flip), img in zip(keys, serial[0][0]):
        assert torch.equal(img, data.images[i].flip(-1) if flip else data.images[i])
