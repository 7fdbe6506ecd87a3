"""Batches whose images all share an aspect-ratio group (e.g. portrait vs landscape)."""
import torch
from torch.utils.data import BatchSampler, Sampler


class GroupedBatchSampler(BatchSampler):
    """Split the indices of ``sampler`` into batches of ``batch_size`` from one group each.

    Within a group, images keep the sampler's order and are cut into consecutive batches; the
    batches are then ordered by the sampler position of their first image, so the stream stays
    as close as possible to the sampler's order. The last batch of a group may be short unless
    ``drop_uneven`` drops it.

    Args:
        sampler (Sampler): yields dataset indices.
        group_ids (sequence of int, length len(dataset)): group of every dataset index.
        batch_size (int): images per batch.
        drop_uneven (bool): drop the batches smaller than ``batch_size``.
    """

    def __init__(self, sampler, group_ids, batch_size, drop_uneven=False):
        if not isinstance(sampler, Sampler):
            raise ValueError(f"sampler should be a torch.utils.data.Sampler, got {sampler!r}")
        self.sampler = sampler
        self.group_ids = torch.as_tensor(group_ids, dtype=torch.int64)
        if self.group_ids.dim() != 1:
            raise ValueError(f"group_ids must be one-dimensional, got shape {tuple(self.group_ids.shape)}")
        self.batch_size = batch_size
        self.drop_uneven = drop_uneven

    def _prepare_batches(self):
        sampled = torch.as_tensor(list(self.sampler), dtype=torch.int64)  # (S,) sampler order
        if sampled.numel() == 0:
            return []
        # A stable sort by group keeps the sampler order inside each group.
        groups, positions = torch.sort(self.group_ids[sampled], stable=True)  # positions index `sampled`
        rank_in_group = torch.arange(len(groups)) - torch.searchsorted(groups, groups)
        starts_batch = rank_in_group % self.batch_size == 0
        batch_of = torch.cumsum(starts_batch, 0) - 1  # (S,) batch id of each group-sorted element
        first_position = positions[starts_batch]  # (B,) sampler position of each batch's head
        # Sorting the elements by (their batch's first position, own position) lays the batches
        # out in sampler order, each batch's members contiguous and in sampler order.
        element_order = torch.argsort(first_position[batch_of] * len(sampled) + positions)
        batch_sizes = torch.bincount(batch_of)[torch.argsort(first_position)]
        batched = torch.split(sampled[positions[element_order]], batch_sizes.tolist())
        batches = [chunk.tolist() for chunk in batched]
        if self.drop_uneven:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        return batches

    def __iter__(self):
        return iter(self._prepare_batches())

    def __len__(self):
        # Exact for the seeded samplers used here, whose order depends on the epoch alone.
        return len(self._prepare_batches())
