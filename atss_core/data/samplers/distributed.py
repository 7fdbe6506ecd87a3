"""Seeded, epoch-aware sampler that gives each process its own share of a data set."""
import math

import torch
from torch.utils.data import Sampler

from atss_core.utils.comm import get_rank, get_world_size


class DistributedSampler(Sampler):
    """Yield the indices of rank ``rank``'s share of ``dataset``.

    The order is a function of ``(seed, epoch)`` only, so a restarted run reproduces it exactly.
    The shuffled (or sequential) index list is padded by wrapping around to a multiple of
    ``num_replicas``, then rank r takes every ``num_replicas``-th index from position r, so the
    shares are disjoint and cover the whole set, and the k-th batches of all ranks together
    are the k-th batch a single process with the whole batch would draw (as long as batches
    are not grouped by aspect ratio) — what makes N-process training equal to 1-process.

    Args:
        dataset: anything with ``len``.
        num_replicas, rank: defaults to the world size and rank of the running process group
            (1 and 0 without one), so a single process may use it as a plain seeded sampler.
        shuffle: random permutation per epoch, else ``0 .. len - 1``.
        seed: base of the permutation; the generator is seeded with ``seed + epoch``.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0):
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside [0, {self.num_replicas}) replicas")
        self.dataset_size = len(dataset)
        self.num_samples = math.ceil(self.dataset_size / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.dataset_size, generator=generator)
        else:
            indices = torch.arange(self.dataset_size)
        # Wrap around so every rank gets the same number of samples (repeat() covers the case
        # of more replicas than samples).
        indices = indices.repeat(math.ceil(self.total_size / max(self.dataset_size, 1)))[: self.total_size]
        return iter(indices[self.rank:self.total_size:self.num_replicas].tolist())

    def __len__(self):
        return self.num_samples

    def set_epoch(self, epoch):
        """Select the permutation of ``epoch`` (called by ``IterationBasedBatchSampler``)."""
        self.epoch = epoch
