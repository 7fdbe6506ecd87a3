// Shared helpers for the atss_core._C extension: host/device annotation and
// argument checks used by every op.
#pragma once

#include <ATen/ATen.h>

// Functions marked ATSS_HOST_DEVICE are compiled for the CPU kernels and, when
// nvcc sees them, for the CUDA kernels too, so both paths share one formula.
#if defined(__CUDACC__)
#define ATSS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ATSS_HOST_DEVICE inline
#endif

#define ATSS_CHECK_FLOATING(t, name)                                          \
  TORCH_CHECK((t).is_floating_point(), name " must be a floating-point tensor, got ", \
              (t).scalar_type())

#define ATSS_CHECK_SAME_DEVICE(a, b, name_a, name_b)                          \
  TORCH_CHECK((a).device() == (b).device(), name_a " and " name_b             \
              " must be on the same device, got ", (a).device(), " and ",    \
              (b).device())

// Message for a CUDA tensor reaching an extension that was built without CUDA.
#define ATSS_NO_CUDA(op)                                                      \
  TORCH_CHECK(false, op ": got CUDA tensors but atss_core._C was built "     \
              "without CUDA; rebuild with FORCE_CUDA=1 (see README)")

namespace atss {

// data_ptr of an optional tensor argument (nullptr when undefined).
template <typename T>
T* optional_data_ptr(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.data_ptr<T>() : nullptr;
}

}  // namespace atss
