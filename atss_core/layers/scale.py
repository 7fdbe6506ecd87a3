"""Learnable scalar multiplier (one per FPN level in the ATSS head)."""
import torch
from torch import nn


class Scale(nn.Module):
    """Multiplies its input by the learnable parameter ``scale`` of shape (1,)."""

    def __init__(self, init_value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, input):
        return input * self.scale
