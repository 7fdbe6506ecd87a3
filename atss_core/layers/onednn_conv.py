"""Run every CPU float32 convolution on oneDNN instead of PyTorch's reference kernel.

PyTorch picks the CPU convolution kernel by a size heuristic (``ConvParams::use_mkldnn``): a
float32 conv goes to the unblocked im2col + GEMM fallback, ``aten::_slow_conv2d_forward`` /
``_backward`` (one GEMM per image), when

* the kernel is 1x1 with stride 1, the batch has fewer than 16 images and only one thread
  runs: every bottleneck's 1x1 convs, the FPN laterals and MobileNetV2's expand / project
  convs, in training and inference; or
* the batch is one image, the kernel at most 3x3, groups 1 and the input has at most 20480
  elements: the head's convs on the P6 / P7 maps of small images (any thread count).

``OneDNNConv2d`` keeps every CPU float32 convolution off that path: it calls
``torch.mkldnn_convolution``, the kernel the same layer gets with two threads or a bigger batch.
Its backward goes back through the heuristic, though, so where that would pick
``_slow_conv2d_backward`` for a pointwise conv (1x1, stride 1, no padding, groups 1; one thread,
fewer than 16 images, gradients needed) the conv runs as one matrix product over all pixels
instead, ``F.linear`` on the NHWC view of a channels_last batch (no layout copy) or a batched
``matmul`` on an NCHW one, whose backward is two GEMMs. Other dtypes, autocast, non-CPU tensors
and scripted / traced / compiled graphs keep ``nn.Conv2d``'s dispatch.
``use_onednn_convolutions(model)`` switches every plain ``nn.Conv2d`` of a model to it, keeping
parameters and state-dict names.

A ``OneDNNConv2d`` can also apply the ``FrozenBatchNorm2d`` after it (``frozen_norm``, linked by
``atss_core.modeling.fuse.apply_frozen_bn_in_convs``, on any device): the norm's per-channel
affine map is folded into the weight and bias at every forward, so training and plain evaluation
skip the norm's pass over the activations, forward and backward.

``conv_norm_relu(conv, norm, x, residual)`` computes ``relu(norm(conv(x)) [+ residual])``. Where
no gradient is needed on CPU (float32, or bfloat16 autocast on a CPU oneDNN has bfloat16 kernels
for) and the norm is already applied by the conv, the ReLU and the residual add run inside the
oneDNN convolution as post-ops (``mkldnn::_convolution_pointwise``; the add needs an ungrouped
conv on channels_last tensors).
The output is then written once instead of being read and written again by ``add_`` and
``relu_``, which matters for the large, memory-bound maps of the first ResNet stages.
"""
import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OneDNNConv2d", "conv_norm_relu", "use_onednn_convolutions"]


class OneDNNConv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding) that keeps CPU float32 tensors off PyTorch's slow kernel and
    applies its ``frozen_norm`` (a FrozenBatchNorm2d that stays registered where it was, or None)."""

    frozen_norm = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, *self._folded_parameters())

    def _folded_parameters(self):
        weight, bias = self.weight, self.bias
        if not torch.jit.is_scripting():
            if self.frozen_norm is not None:
                weight, bias = self.frozen_norm.fold_into(weight, bias)
        return weight, bias

    def fused_relu(self, input: torch.Tensor,
                   residual: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """``relu(self(input) + residual)`` (``residual`` None: no add) as one oneDNN kernel, or
        None where that kernel cannot run (see the module docstring)."""
        dtype = self._post_op_dtype(input, residual)
        if dtype is None:  # checked first: the caller's plain path folds the norm in itself
            return None
        weight, bias = self._folded_parameters()
        input, weight = input.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(input, weight, bias, *geometry, "relu", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            input, residual.to(dtype), weight, bias, *geometry, "add", 1.0, "relu", [], "")

    def _post_op_dtype(self, input, residual):
        """The dtype the fused conv + ReLU kernel runs in here (float32, or bfloat16 under CPU
        bfloat16 autocast where oneDNN has bfloat16 kernels), or None where the plain path must
        run. The conv's own parameters decide as its folded ones would: folding a frozen norm in
        keeps their dtype and whether they need gradients."""
        weight, bias = self.weight, self.bias
        if torch.jit.is_scripting() or not self._onednn_applies(input):
            return None
        nhwc = torch.channels_last
        if residual is not None and not (self.groups == 1 and input.is_contiguous(memory_format=nhwc)
                                         and residual.is_contiguous(memory_format=nhwc)):
            return None  # oneDNN fuses the add for ungrouped NHWC convs only (else a plain conv + add)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (input, weight, bias, residual)):
            return None  # the fused kernel has no backward
        if torch.is_autocast_enabled("cpu"):
            bfloat16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and onednn_has_bfloat16()
            return torch.bfloat16 if bfloat16 else None
        plain_float32 = all(t is None or t.dtype == torch.float32 for t in (input, weight, bias, residual))
        return torch.float32 if plain_float32 else None

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
        # TorchScript compiles only the portable branch; tracing and torch.compile / export take
        # it too, so exported graphs hold plain convolutions.
        if not torch.jit.is_scripting():
            if self._takes_onednn(input, weight):
                if self._pointwise and _slow_backward_ahead(input, weight, bias):
                    return _pointwise_conv(input, weight, bias)
                return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride,
                                                self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _takes_onednn(self, input, weight):
        return (self._onednn_applies(input) and input.dtype == torch.float32
                and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))

    def _onednn_applies(self, input):
        """Whether this call may bypass ``F.conv2d`` for a oneDNN kernel at all: an eager CPU
        call (not traced or compiled), numeric padding, and oneDNN on."""
        return (not torch.jit.is_tracing() and not torch.compiler.is_compiling()
                and input.device.type == "cpu" and not isinstance(self.padding, str)
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)

    @property
    def _pointwise(self):
        return (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                and self.groups == 1)


@functools.lru_cache(maxsize=None)
def onednn_has_bfloat16():
    """Whether oneDNN runs bfloat16 convolutions on this CPU: it needs AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT and raises elsewhere, where ``F.conv2d`` emulates bfloat16 instead. False
    for torch builds without oneDNN."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _slow_backward_ahead(input, weight, bias):
    """Whether PyTorch would run a pointwise conv's backward on ``_slow_conv2d_backward``."""
    needs_grad = torch.is_grad_enabled() and (
        input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    return needs_grad and torch.get_num_threads() == 1 and len(input) < 16


def _pointwise_conv(input, weight, bias):
    """1x1 conv as a matrix product: input (N, C, H, W), weight (O, C, 1, 1), bias (O,) or None
    -> (N, O, H, W) in the input's memory format."""
    if weight.stride(-1) != 1:  # a channels_last weight, strides (C, 1, C, C)
        # Through NHWC so that the weight's gradient comes back with these strides, not (C, 1, 1, 1):
        # DDP compares the strides, size-1 dims included, and warns and copies on a mismatch.
        weight = weight.permute(0, 2, 3, 1).reshape(len(weight), -1)
    else:
        weight = weight.flatten(1)
    if input.is_contiguous(memory_format=torch.channels_last):
        # (N, H, W, C) is contiguous here, and so is the result viewed back as NCHW.
        return F.linear(input.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
    output = torch.matmul(weight, input.flatten(2))  # (N, O, H*W)
    if bias is not None:
        output = output + bias[:, None]
    return output.view(len(input), -1, *input.shape[2:])


def conv_norm_relu(conv: nn.Module, norm: nn.Module, input: torch.Tensor,
                   residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``relu(norm(conv(input)) + residual)`` (no add when ``residual`` is None), in place where
    it can be. The conv's fused kernel runs where it can when ``norm`` does nothing by itself:
    an ``nn.Identity`` left by ``fuse_frozen_bn`` or a frozen norm the conv applies."""
    if isinstance(conv, OneDNNConv2d) and (isinstance(norm, nn.Identity) or conv.frozen_norm is norm):
        fused = conv.fused_relu(input, residual)
        if fused is not None:
            return fused
    output = norm(conv(input))
    return F.relu_(output if residual is None else output.add_(residual))


def use_onednn_convolutions(module):
    """Turn every plain, zero-padded ``nn.Conv2d`` inside ``module`` into a ``OneDNNConv2d``,
    in place. Subclasses of ``nn.Conv2d`` keep their own class. Returns the same ``module``.
    """
    for layer in module.modules():
        if type(layer) is nn.Conv2d and layer.padding_mode == "zeros":
            layer.__class__ = OneDNNConv2d
    return module
