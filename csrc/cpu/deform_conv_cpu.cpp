// CPU kernels of deformable convolution (im2col, col2im and the offset/mask
// gradient) for one image; the GEMMs live in deform_conv.cpp.
#include <ATen/Parallel.h>

#include "../ops.h"

namespace atss {

at::Tensor deform_im2col_cpu(const at::Tensor& input, const at::Tensor& offset,
                             const at::Tensor& mask, const DeformGeometry& g) {
  const int64_t rows = g.channels * g.kernel_h * g.kernel_w;
  const int64_t pixels = g.out_h * g.out_w;
  at::Tensor columns = at::empty({rows, pixels}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_im2col_cpu", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    const scalar_t* off = offset.data_ptr<scalar_t>();
    const scalar_t* msk = optional_data_ptr<scalar_t>(mask);
    scalar_t* col = columns.data_ptr<scalar_t>();
    at::parallel_for(0, rows * pixels, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        col[index] = deform_column_value(g, in, off, msk, index);
      }
    });
  });
  return columns;
}

void deform_col2im_cpu(const at::Tensor& grad_columns, const at::Tensor& offset,
                       const at::Tensor& mask, const DeformGeometry& g,
                       at::Tensor& grad_input) {
  const int64_t per_channel = g.kernel_h * g.kernel_w * g.out_h * g.out_w;
  AT_DISPATCH_FLOATING_TYPES(grad_columns.scalar_type(), "deform_col2im_cpu", [&] {
    const scalar_t* grad_col = grad_columns.data_ptr<scalar_t>();
    const scalar_t* off = offset.data_ptr<scalar_t>();
    const scalar_t* msk = optional_data_ptr<scalar_t>(mask);
    scalar_t* grad_in = grad_input.data_ptr<scalar_t>();
    const auto add = [](scalar_t* target, scalar_t value) { *target += value; };
    // Parallel over channels: the column rows of channel c only write to
    // input plane c, so threads never touch the same element.
    at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin * per_channel; index < end * per_channel; ++index) {
        deform_scatter_column_grad(g, grad_col[index], off, msk, index, grad_in, add);
      }
    });
  });
}

void deform_offset_mask_grad_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                                 const at::Tensor& offset, const at::Tensor& mask,
                                 const DeformGeometry& g, at::Tensor& grad_offset,
                                 at::Tensor& grad_mask) {
  const int64_t count = g.deformable_groups * g.kernel_h * g.kernel_w * g.out_h * g.out_w;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_offset_mask_grad_cpu", [&] {
    const scalar_t* grad_col = grad_columns.data_ptr<scalar_t>();
    const scalar_t* in = input.data_ptr<scalar_t>();
    const scalar_t* off = offset.data_ptr<scalar_t>();
    const scalar_t* msk = optional_data_ptr<scalar_t>(mask);
    scalar_t* grad_off = grad_offset.data_ptr<scalar_t>();
    scalar_t* grad_msk = optional_data_ptr<scalar_t>(grad_mask);
    at::parallel_for(0, count, 256, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        deform_offset_mask_grad_at(g, grad_col, in, off, msk, index, grad_off, grad_msk);
      }
    });
  });
}

}  // namespace atss
