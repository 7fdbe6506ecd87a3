"""Running statistics of training metrics, formatted for the log."""
from collections import defaultdict, deque
from statistics import median_low

import torch


class SmoothedValue:
    """A series of values: median and mean over a recent window, and the global mean."""

    def __init__(self, window_size=20):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0

    def update(self, value):
        self.deque.append(value)
        self.count += 1
        self.total += value

    @property
    def median(self):
        # The lower median, as torch.median returns for an even count.
        return median_low(self.deque)

    @property
    def avg(self):
        return sum(self.deque) / len(self.deque)

    @property
    def global_avg(self):
        return self.total / self.count


class MetricLogger:
    """Named SmoothedValues, printed as ``name: median (global average)``."""

    def __init__(self, delimiter="\t"):
        self.meters = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs):
        """Add one value per name; 0-d tensors are converted to Python numbers."""
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if not isinstance(value, (float, int)):
                raise TypeError(f"metric {name} must be a number or 0-d tensor, "
                                f"got {type(value).__name__}")
            self.meters[name].update(value)

    def __getattr__(self, attr):
        # Only called for attributes not found normally: expose meters as attributes.
        meters = self.__dict__.get("meters", {})
        if attr in meters:
            return meters[attr]
        raise AttributeError(f"{type(self).__name__} has no attribute or meter {attr!r}")

    def __str__(self):
        return self.delimiter.join(f"{name}: {meter.median:.4f} ({meter.global_avg:.4f})"
                                   for name, meter in self.meters.items())
