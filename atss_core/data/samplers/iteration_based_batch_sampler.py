"""Turn an epoch-based batch sampler into a fixed number of iterations, resumable exactly."""
import numpy as np
from torch.utils.data import BatchSampler


def sample_seed(seed, iteration, slot):
    """Augmentation seed of the image at ``slot`` of the batch of 1-based ``iteration``.

    Depends on nothing else (not on the worker that loads it, nor on what came before), so a
    resumed run draws the same flips and scales as an uninterrupted one.
    """
    return int(np.random.SeedSequence([seed, iteration, slot]).generate_state(1)[0])


class IterationBasedBatchSampler(BatchSampler):
    """Yield batches of ``batch_sampler`` for iterations ``start_iter + 1 .. num_iterations``.

    The wrapped sampler is re-run epoch after epoch; before each pass its sampler (when it has
    ``set_epoch``) is told the epoch number, counted from 0 at iteration 0. A run resumed at
    ``start_iter`` replays the index stream from the start and skips the first ``start_iter``
    batches (only indices are drawn, no image is loaded), so iteration k sees the same images as
    in an uninterrupted run.

    With ``augment_seed`` each batch entry becomes ``(index, seed)``, the seed from
    :func:`sample_seed` for the entry's slot in the global batch of all processes: position ×
    ``world_size`` + ``rank``, because ``DistributedSampler`` deals the shuffled order out to
    the ranks in turn. N processes therefore augment each image exactly as one process with
    the whole batch does. Data sets run their random transforms under that seed.
    """

    def __init__(self, batch_sampler, num_iterations, start_iter=0, augment_seed=None, rank=0,
                 world_size=1):
        self.batch_sampler = batch_sampler
        self.num_iterations = num_iterations
        self.start_iter = start_iter
        self.augment_seed = augment_seed
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        iteration = 0
        epoch = 0
        while iteration < self.num_iterations:
            sampler = getattr(self.batch_sampler, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            batches_this_epoch = 0
            for batch in self.batch_sampler:
                batches_this_epoch += 1
                iteration += 1
                if iteration > self.start_iter:
                    yield self._with_seeds(batch, iteration)
                if iteration >= self.num_iterations:
                    return
            if batches_this_epoch == 0:
                raise RuntimeError("the batch sampler yielded no batch: the training data set is empty")
            epoch += 1

    def _with_seeds(self, batch, iteration):
        if self.augment_seed is None:
            return batch
        return [(index, sample_seed(self.augment_seed, iteration, position * self.world_size + self.rank))
                for position, index in enumerate(batch)]

    def __len__(self):
        return self.num_iterations
