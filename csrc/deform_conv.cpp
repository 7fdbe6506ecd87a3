// Deformable convolution v1 (no mask) and v2 (modulated, with mask): forward
// and backward for CPU and CUDA. Per image, the sampled input is laid out as
// an im2col matrix (C*K, L) by a device kernel and multiplied with the weight
// by a (grouped) GEMM, the same scheme as the original DCN implementation.
#include "deform_conv.h"

#include "ops.h"

namespace atss {
namespace {

at::Tensor deform_im2col(const at::Tensor& input, const at::Tensor& offset,
                         const at::Tensor& mask, const DeformGeometry& g) {
  ATSS_DISPATCH_DEVICE(input, "deform_conv", deform_im2col, input, offset, mask, g);
}

void deform_col2im(const at::Tensor& grad_columns, const at::Tensor& offset,
                   const at::Tensor& mask, const DeformGeometry& g, at::Tensor& grad_input) {
  ATSS_DISPATCH_DEVICE(grad_columns, "deform_conv", deform_col2im, grad_columns, offset,
                       mask, g, grad_input);
}

void deform_offset_mask_grad(const at::Tensor& grad_columns, const at::Tensor& input,
                             const at::Tensor& offset, const at::Tensor& mask,
                             const DeformGeometry& g, at::Tensor& grad_offset,
                             at::Tensor& grad_mask) {
  ATSS_DISPATCH_DEVICE(input, "deform_conv", deform_offset_mask_grad, grad_columns, input,
                       offset, mask, g, grad_offset, grad_mask);
}

// Checks every shape the kernels rely on and returns the geometry.
DeformGeometry check_and_make_geometry(const at::Tensor& input, const at::Tensor& weight,
                                       const at::Tensor& offset, const at::Tensor& mask,
                                       const DeformParams& p) {
  TORCH_CHECK(input.dim() == 4, "deform_conv: input must be (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 4, "deform_conv: weight must be (C_out, C/groups, kh, kw), got ",
              weight.sizes());
  TORCH_CHECK(offset.dim() == 4, "deform_conv: offset must be 4-D, got ", offset.sizes());
  ATSS_CHECK_FLOATING(input, "deform_conv: input");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type() &&
                  offset.scalar_type() == input.scalar_type(),
              "deform_conv: input, weight and offset must have the same dtype");
  ATSS_CHECK_SAME_DEVICE(input, weight, "deform_conv: input", "weight");
  ATSS_CHECK_SAME_DEVICE(input, offset, "deform_conv: input", "offset");
  TORCH_CHECK(p.stride_h > 0 && p.stride_w > 0 && p.dilation_h > 0 && p.dilation_w > 0 &&
                  p.pad_h >= 0 && p.pad_w >= 0,
              "deform_conv: stride and dilation must be positive, padding non-negative");
  TORCH_CHECK(p.groups > 0 && p.deformable_groups > 0,
              "deform_conv: groups and deformable_groups must be positive");

  DeformGeometry g;
  g.channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = p.stride_h;
  g.stride_w = p.stride_w;
  g.pad_h = p.pad_h;
  g.pad_w = p.pad_w;
  g.dilation_h = p.dilation_h;
  g.dilation_w = p.dilation_w;
  g.deformable_groups = p.deformable_groups;
  g.out_h = (g.height + 2 * g.pad_h - (g.dilation_h * (g.kernel_h - 1) + 1)) / g.stride_h + 1;
  g.out_w = (g.width + 2 * g.pad_w - (g.dilation_w * (g.kernel_w - 1) + 1)) / g.stride_w + 1;
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "deform_conv: input ", input.sizes(),
              " is too small for the kernel, output would be ", g.out_h, "x", g.out_w);
  TORCH_CHECK(g.channels % p.groups == 0 && weight.size(0) % p.groups == 0 &&
                  weight.size(1) * p.groups == g.channels,
              "deform_conv: weight ", weight.sizes(), " does not match ", g.channels,
              " input channels in ", p.groups, " groups");
  TORCH_CHECK(g.channels % p.deformable_groups == 0, "deform_conv: ", g.channels,
              " input channels are not divisible by ", p.deformable_groups,
              " deformable groups");
  const int64_t taps = g.kernel_h * g.kernel_w;
  const std::vector<int64_t> offset_shape = {input.size(0), p.deformable_groups * 2 * taps,
                                             g.out_h, g.out_w};
  TORCH_CHECK(offset.sizes() == offset_shape, "deform_conv: offset must be ",
              at::IntArrayRef(offset_shape), ", got ", offset.sizes());
  if (mask.defined()) {
    const std::vector<int64_t> mask_shape = {input.size(0), p.deformable_groups * taps,
                                             g.out_h, g.out_w};
    TORCH_CHECK(mask.sizes() == mask_shape, "deform_conv: mask must be ",
                at::IntArrayRef(mask_shape), ", got ", mask.sizes());
    TORCH_CHECK(mask.scalar_type() == input.scalar_type(),
                "deform_conv: mask must have the input's dtype");
    ATSS_CHECK_SAME_DEVICE(input, mask, "deform_conv: input", "mask");
  }
  return g;
}

// Image n of an optional batched tensor.
at::Tensor image_of(const at::Tensor& batched, int64_t n) {
  return batched.defined() ? batched[n] : at::Tensor();
}

}  // namespace

at::Tensor deform_conv_forward(const at::Tensor& input_arg, const at::Tensor& weight_arg,
                               const at::Tensor& offset_arg,
                               const std::optional<at::Tensor>& mask_arg,
                               const std::optional<at::Tensor>& bias_arg,
                               const DeformParams& params) {
  const at::Tensor input = input_arg.contiguous();
  const at::Tensor weight = weight_arg.contiguous();
  const at::Tensor offset = offset_arg.contiguous();
  const at::Tensor mask = mask_arg.has_value() ? mask_arg->contiguous() : at::Tensor();
  const DeformGeometry g = check_and_make_geometry(input, weight, offset, mask, params);
  const int64_t batch = input.size(0), out_channels = weight.size(0);
  if (bias_arg.has_value()) {
    TORCH_CHECK(bias_arg->dim() == 1 && bias_arg->size(0) == out_channels,
                "deform_conv: bias must be (", out_channels, "), got ", bias_arg->sizes());
    TORCH_CHECK(bias_arg->scalar_type() == input.scalar_type(),
                "deform_conv: bias must have the input's dtype");
    ATSS_CHECK_SAME_DEVICE(input, *bias_arg, "deform_conv: input", "bias");
  }

  const int64_t pixels = g.out_h * g.out_w;
  at::Tensor output = at::empty({batch, out_channels, g.out_h, g.out_w}, input.options());
  // (groups, C_out/groups, C/groups*K) x (groups, C/groups*K, L) per image.
  const at::Tensor grouped_weight = weight.view({params.groups, out_channels / params.groups, -1});
  for (int64_t n = 0; n < batch; ++n) {
    const at::Tensor columns = deform_im2col(input[n], offset[n], image_of(mask, n), g);
    at::Tensor output_n = output[n].view({params.groups, out_channels / params.groups, pixels});
    at::bmm_out(output_n, grouped_weight, columns.view({params.groups, -1, pixels}));
  }
  if (bias_arg.has_value()) {
    output.add_(bias_arg->view({1, out_channels, 1, 1}));
  }
  return output;
}

std::vector<at::Tensor> deform_conv_backward(const at::Tensor& grad_output_arg,
                                             const at::Tensor& input_arg,
                                             const at::Tensor& weight_arg,
                                             const at::Tensor& offset_arg,
                                             const std::optional<at::Tensor>& mask_arg,
                                             bool with_bias, const DeformParams& params) {
  const at::Tensor input = input_arg.contiguous();
  const at::Tensor weight = weight_arg.contiguous();
  const at::Tensor offset = offset_arg.contiguous();
  const at::Tensor mask = mask_arg.has_value() ? mask_arg->contiguous() : at::Tensor();
  const at::Tensor grad_output = grad_output_arg.contiguous();
  const DeformGeometry g = check_and_make_geometry(input, weight, offset, mask, params);

  const int64_t batch = input.size(0), out_channels = weight.size(0);
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t groups = params.groups;
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({batch, out_channels, g.out_h, g.out_w}),
              "deform_conv: grad_output has shape ", grad_output.sizes());

  at::Tensor grad_input = at::zeros_like(input);
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_mask = mask.defined() ? at::zeros_like(mask) : at::Tensor();
  at::Tensor grad_weight = at::zeros_like(weight);
  const at::Tensor grouped_weight_t =
      weight.view({groups, out_channels / groups, -1}).transpose(1, 2);
  at::Tensor grouped_grad_weight = grad_weight.view({groups, out_channels / groups, -1});
  for (int64_t n = 0; n < batch; ++n) {
    const at::Tensor grad_output_n = grad_output[n].view({groups, out_channels / groups, pixels});
    const at::Tensor grad_columns =
        at::bmm(grouped_weight_t, grad_output_n).view({-1, pixels});
    const at::Tensor mask_n = image_of(mask, n);
    at::Tensor grad_input_n = grad_input[n];
    at::Tensor grad_offset_n = grad_offset[n];
    at::Tensor grad_mask_n = image_of(grad_mask, n);
    deform_col2im(grad_columns, offset[n], mask_n, g, grad_input_n);
    deform_offset_mask_grad(grad_columns, input[n], offset[n], mask_n, g, grad_offset_n,
                            grad_mask_n);
    // The forward columns are recomputed rather than stored for every image.
    const at::Tensor columns = deform_im2col(input[n], offset[n], mask_n, g);
    grouped_grad_weight.baddbmm_(grad_output_n,
                                 columns.view({groups, -1, pixels}).transpose(1, 2));
  }
  const at::Tensor grad_bias = with_bias ? grad_output.sum({0, 2, 3}) : at::Tensor();
  return {grad_input, grad_offset, grad_mask, grad_weight, grad_bias};
}

}  // namespace atss
