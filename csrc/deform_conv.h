// Public deformable-convolution entry points (bound in vision.cpp).
#pragma once

#include <optional>
#include <vector>

#include "common.h"

namespace atss {

struct DeformParams {
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups, deformable_groups;
};

// output (N, C_out, out_h, out_w) of a deformable convolution.
//   input (N, C, H, W); weight (C_out, C/groups, kh, kw);
//   offset (N, DG*2*kh*kw, out_h, out_w), channel (dg*K + k)*2 + {0: dy, 1: dx};
//   mask (N, DG*kh*kw, out_h, out_w) for v2 (modulated), absent for v1;
//   bias (C_out,) optional.
at::Tensor deform_conv_forward(const at::Tensor& input, const at::Tensor& weight,
                               const at::Tensor& offset,
                               const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& bias,
                               const DeformParams& params);

// {grad_input, grad_offset, grad_mask (None without mask), grad_weight,
//  grad_bias (None unless with_bias)} for grad_output (N, C_out, out_h, out_w).
std::vector<at::Tensor> deform_conv_backward(const at::Tensor& grad_output,
                                             const at::Tensor& input,
                                             const at::Tensor& weight,
                                             const at::Tensor& offset,
                                             const std::optional<at::Tensor>& mask,
                                             bool with_bias, const DeformParams& params);

}  // namespace atss
