"""Turn an epoch-based batch sampler into a fixed number of iterations, resumable exactly."""
from torch.utils.data import BatchSampler


class IterationBasedBatchSampler(BatchSampler):
    """Yield batches of ``batch_sampler`` for iterations ``start_iter + 1 .. num_iterations``.

    The wrapped sampler is re-run epoch after epoch; before each pass its sampler (when it has
    ``set_epoch``) is told the epoch number, counted from 0 at iteration 0. A run resumed at
    ``start_iter`` replays the index stream from the start and skips the first ``start_iter``
    batches (only indices are drawn, no image is loaded), so iteration k sees the same images as
    in an uninterrupted run.
    """

    def __init__(self, batch_sampler, num_iterations, start_iter=0):
        self.batch_sampler = batch_sampler
        self.num_iterations = num_iterations
        self.start_iter = start_iter

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
                    yield batch
                if iteration >= self.num_iterations:
                    return
            if batches_this_epoch == 0:
                raise RuntimeError("the batch sampler yielded no batch: the training data set is empty")
            epoch += 1

    def __len__(self):
        return self.num_iterations
