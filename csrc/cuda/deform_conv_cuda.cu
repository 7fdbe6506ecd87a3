// CUDA kernels of deformable convolution (im2col, col2im and the offset/mask
// gradient) for one image; the GEMMs live in deform_conv.cpp.
#include "../ops.h"
#include "cuda_helpers.cuh"

namespace atss {
namespace {

// Atomic accumulation: several column entries scatter into the same pixel.
struct AtomicAdd {
  template <typename T>
  ATSS_HOST_DEVICE void operator()(T* target, T value) const {
#if defined(__CUDA_ARCH__)
    gpuAtomicAdd(target, value);
#else
    *target += value;
#endif
  }
};

template <typename T>
__global__ void deform_im2col_kernel(int64_t count, DeformGeometry g, const T* input,
                                     const T* offset, const T* mask, T* columns) {
  ATSS_CUDA_KERNEL_LOOP(index, count) {
    columns[index] = deform_column_value(g, input, offset, mask, index);
  }
}

template <typename T>
__global__ void deform_col2im_kernel(int64_t count, DeformGeometry g, const T* grad_columns,
                                     const T* offset, const T* mask, T* grad_input) {
  ATSS_CUDA_KERNEL_LOOP(index, count) {
    deform_scatter_column_grad(g, grad_columns[index], offset, mask, index, grad_input, AtomicAdd());
  }
}

template <typename T>
__global__ void deform_offset_mask_grad_kernel(int64_t count, DeformGeometry g,
                                               const T* grad_columns, const T* input,
                                               const T* offset, const T* mask, T* grad_offset,
                                               T* grad_mask) {
  ATSS_CUDA_KERNEL_LOOP(index, count) {
    deform_offset_mask_grad_at(g, grad_columns, input, offset, mask, index, grad_offset, grad_mask);
  }
}

}  // namespace

at::Tensor deform_im2col_cuda(const at::Tensor& input, const at::Tensor& offset,
                              const at::Tensor& mask, const DeformGeometry& g) {
  c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor columns =
      at::empty({g.channels * g.kernel_h * g.kernel_w, g.out_h * g.out_w}, input.options());
  const int64_t count = columns.numel();
  if (count == 0) {
    return columns;
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_im2col_cuda", [&] {
    deform_im2col_kernel<scalar_t>
        <<<blocks_for(count), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            count, g, input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
            optional_data_ptr<scalar_t>(mask), columns.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return columns;
}

void deform_col2im_cuda(const at::Tensor& grad_columns, const at::Tensor& offset,
                        const at::Tensor& mask, const DeformGeometry& g, at::Tensor& grad_input) {
  c10::cuda::CUDAGuard device_guard(grad_columns.device());
  const int64_t count = grad_columns.numel();
  if (count == 0) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(grad_columns.scalar_type(), "deform_col2im_cuda", [&] {
    deform_col2im_kernel<scalar_t>
        <<<blocks_for(count), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            count, g, grad_columns.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
            optional_data_ptr<scalar_t>(mask), grad_input.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void deform_offset_mask_grad_cuda(const at::Tensor& grad_columns, const at::Tensor& input,
                                  const at::Tensor& offset, const at::Tensor& mask,
                                  const DeformGeometry& g, at::Tensor& grad_offset,
                                  at::Tensor& grad_mask) {
  c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t count = g.deformable_groups * g.kernel_h * g.kernel_w * g.out_h * g.out_w;
  if (count == 0) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_offset_mask_grad_cuda", [&] {
    deform_offset_mask_grad_kernel<scalar_t>
        <<<blocks_for(count), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            count, g, grad_columns.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(),
            offset.data_ptr<scalar_t>(), optional_data_ptr<scalar_t>(mask),
            grad_offset.data_ptr<scalar_t>(), optional_data_ptr<scalar_t>(grad_mask));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace atss
