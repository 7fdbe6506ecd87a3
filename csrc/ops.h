// Device-specific entry points of atss_core._C. The public functions bound in
// vision.cpp validate their arguments and dispatch here on the tensors' device.
#pragma once

#include "common.h"
#include "deform_sampling.h"

namespace atss {

// Greedy NMS pass with "+1" areas over boxes already sorted by descending
// score (vision.cpp sorts and maps back): a box is suppressed by a kept box of
// the same label (any label when `sorted_labels` is undefined) whose IoU with
// it is > threshold. Returns the kept positions (int64, ascending) on the
// boxes' device.
//   sorted_boxes (N, 4) xyxy contiguous, sorted_labels (N,) int64 or undefined
at::Tensor nms_cpu(const at::Tensor& sorted_boxes, const at::Tensor& sorted_labels,
                   double threshold);

// Element-wise sigmoid focal loss (N, C) when grad_losses is undefined,
// otherwise d(sum(grad_losses * loss)) / d logits (N, C).
//   logits (N, C), targets (N,) int64 with 1..C positive, 0 background, -1 ignore
at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                  const at::Tensor& grad_losses, double gamma,
                                  double alpha);

// Deformable-convolution building blocks for ONE image (all contiguous):
//   input (C, H, W), offset (DG*2*K, out_h, out_w), mask (DG*K, out_h, out_w)
//   or undefined, columns / grad_columns (C*K, out_h*out_w).
at::Tensor deform_im2col_cpu(const at::Tensor& input, const at::Tensor& offset,
                             const at::Tensor& mask, const DeformGeometry& geometry);
// Accumulates into grad_input (C, H, W).
void deform_col2im_cpu(const at::Tensor& grad_columns, const at::Tensor& offset,
                       const at::Tensor& mask, const DeformGeometry& geometry,
                       at::Tensor& grad_input);
// Writes grad_offset (like offset) and grad_mask (like mask, when defined).
void deform_offset_mask_grad_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                                 const at::Tensor& offset, const at::Tensor& mask,
                                 const DeformGeometry& geometry, at::Tensor& grad_offset,
                                 at::Tensor& grad_mask);

#ifdef WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& sorted_boxes, const at::Tensor& sorted_labels,
                    double threshold);
at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                   const at::Tensor& grad_losses, double gamma,
                                   double alpha);
at::Tensor deform_im2col_cuda(const at::Tensor& input, const at::Tensor& offset,
                              const at::Tensor& mask, const DeformGeometry& geometry);
void deform_col2im_cuda(const at::Tensor& grad_columns, const at::Tensor& offset,
                        const at::Tensor& mask, const DeformGeometry& geometry,
                        at::Tensor& grad_input);
void deform_offset_mask_grad_cuda(const at::Tensor& grad_columns, const at::Tensor& input,
                                  const at::Tensor& offset, const at::Tensor& mask,
                                  const DeformGeometry& geometry, at::Tensor& grad_offset,
                                  at::Tensor& grad_mask);
#endif

}  // namespace atss

// `return fn_cuda(args)` for CUDA tensors, `return fn_cpu(args)` otherwise;
// a clear error when CUDA tensors reach a build without CUDA kernels.
#ifdef WITH_CUDA
#define ATSS_DISPATCH_DEVICE(tensor, op_name, fn, ...)  \
  if ((tensor).is_cuda()) {                             \
    return fn##_cuda(__VA_ARGS__);                      \
  }                                                     \
  return fn##_cpu(__VA_ARGS__)
#else
#define ATSS_DISPATCH_DEVICE(tensor, op_name, fn, ...)  \
  if ((tensor).is_cuda()) {                             \
    ATSS_NO_CUDA(op_name);                              \
  }                                                     \
  return fn##_cpu(__VA_ARGS__)
#endif
