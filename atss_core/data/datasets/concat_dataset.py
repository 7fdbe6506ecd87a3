"""Concatenation of data sets that keeps per-image metadata reachable."""
import bisect

from torch.utils.data import ConcatDataset as _TorchConcatDataset


class ConcatDataset(_TorchConcatDataset):
    """``torch.utils.data.ConcatDataset`` plus ``get_img_info`` (needed by aspect grouping)."""

    def get_idxs(self, idx):
        """Global index → ``(dataset number, index inside that data set)``."""
        dataset_idx = bisect.bisect_right(self.cumulative_sizes, idx)
        sample_idx = idx if dataset_idx == 0 else idx - self.cumulative_sizes[dataset_idx - 1]
        return dataset_idx, sample_idx

    def __getitem__(self, idx):
        """Sample at global ``idx`` (or an ``(idx, seed)`` pair); returns the global index."""
        index, seed = idx if isinstance(idx, tuple) else (idx, None)
        dataset_idx, sample_idx = self.get_idxs(index)
        image, target, _ = self.datasets[dataset_idx][sample_idx if seed is None else (sample_idx, seed)]
        return image, target, index

    def get_img_info(self, idx):
        dataset_idx, sample_idx = self.get_idxs(idx)
        return self.datasets[dataset_idx].get_img_info(sample_idx)
