"""Fold frozen batch norms into the convolutions that feed them.

A frozen norm is a fixed per-channel affine map ``y = x * scale + shift``, so
``norm(conv(x)) == conv'(x)`` with ``W' = W * scale`` (per output channel) and
``b' = b * scale + shift``. Folding removes one full pass over every activation map.

``apply_frozen_bn_in_convs`` folds at every forward and keeps both modules and the state dict
(training and evaluation; ``GeneralizedRCNN`` does it when built). ``fuse_frozen_bn`` folds once,
for inference: it rewrites the model in place and changes its state dict (the norm keys disappear and
the convs gain a ``bias``), so apply it to an inference copy, never to a model you are
going to train or save as a checkpoint::

    model.eval()
    fuse_frozen_bn(model)
    model.to(memory_format=torch.channels_last)  # optional, usually faster on CPU too
"""
import torch
from torch import nn

from atss_core.layers import FrozenBatchNorm2d, OneDNNConv2d


def _conv_norm_pairs(model, is_norm):
    """(parent, conv, norm name) of every ``nn.Conv2d`` -> norm pair of ``model`` whose norm
    passes ``is_norm``: consecutive children of an ``nn.Sequential``, and sibling children
    ``conv<k>`` / ``bn<k>`` of any other module."""
    pairs = []
    for parent in model.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            candidates = zip(names[:-1], names[1:])
        else:
            candidates = (("conv" + name[2:], name) for name in children
                          if name.startswith("bn"))
        for conv_name, norm_name in candidates:
            conv, norm = children.get(conv_name), children[norm_name]
            if isinstance(conv, nn.Conv2d) and is_norm(norm):
                pairs.append((parent, conv, norm_name))
    return pairs


def apply_frozen_bn_in_convs(model):
    """Let every ``OneDNNConv2d`` -> ``FrozenBatchNorm2d`` pair of ``model`` run as one conv, in
    place, for training and evaluation alike: the conv folds the norm into its weights at each
    forward and the norm passes its input through. Both keep their parameters, buffers and
    state-dict names, so checkpoints and gradients are those of the unfolded pair.

    Returns the same ``model``.
    """
    for parent, conv, norm_name in _conv_norm_pairs(model, lambda m: isinstance(m, FrozenBatchNorm2d)):
        if isinstance(conv, OneDNNConv2d):
            norm = getattr(parent, norm_name)
            # A plain attribute, not a submodule: the norm stays registered (and saved) where it was.
            object.__setattr__(conv, "frozen_norm", norm)
            norm.applied_by_conv = True
    return model


def fuse_frozen_bn(model):
    """Fold every conv -> frozen-norm pair of ``model`` into the conv, in place.

    Pairs are found structurally: consecutive children of an ``nn.Sequential`` (ResNet
    downsample branches, MobileNetV2 blocks), and sibling children ``conv<k>`` / ``bn<k>``
    of any other module (ResNet stem and bottlenecks, whose ``forward`` applies ``bn<k>``
    right after ``conv<k>``). ``FrozenBatchNorm2d`` (no eps) and eval-mode ``BatchNorm2d``
    are folded; the norm is replaced by ``nn.Identity``. Deformable convs are left unfused.

    Returns:
        the same ``model``, for chaining.

    Raises:
        ValueError: a ``BatchNorm2d`` that would be folded is in training mode (its output
            depends on the batch, so it cannot be folded; call ``model.eval()`` first).
    """
    pairs = _conv_norm_pairs(model, _is_foldable_norm)
    # Fold only after the walk: replacing children while iterating modules() is unsafe.
    for parent, conv, norm_name in pairs:
        conv.__dict__.pop("frozen_norm", None)  # folded for good now (apply_frozen_bn_in_convs)
        _fold_into_conv(conv, getattr(parent, norm_name))
        setattr(parent, norm_name, nn.Identity())
    return model


def _is_foldable_norm(module):
    if isinstance(module, FrozenBatchNorm2d):
        return True
    if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
        if module.training:
            raise ValueError(f"fuse_frozen_bn: {module} is in training mode, so its statistics "
                             "are not fixed; call model.eval() before fusing")
        return True
    return False


@torch.no_grad()
def _fold_into_conv(conv, norm):
    """Rewrite ``conv`` (C_out, C_in/g, kh, kw) so that it also applies ``norm`` (C_out)."""
    # float64 so the fused weights round only once.
    var = norm.running_var.double()
    if isinstance(norm, nn.BatchNorm2d):
        var = var + norm.eps
    weight = norm.weight.double() if norm.weight is not None else torch.ones_like(var)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros_like(var)
    scale = weight * var.rsqrt()
    shift = bias - norm.running_mean.double() * scale
    conv_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)

    conv.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    fused_bias = (conv_bias * scale + shift).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(fused_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(fused_bias)
