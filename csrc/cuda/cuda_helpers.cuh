// Launch helpers shared by the CUDA kernels of atss_core._C.
#pragma once

#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace atss {

constexpr int kThreadsPerBlock = 256;

// Enough blocks for one thread per element, capped; kernels use grid-stride loops.
inline int blocks_for(int64_t count) {
  return static_cast<int>(std::min<int64_t>((count + kThreadsPerBlock - 1) / kThreadsPerBlock, 65535));
}

// Grid-stride loop over [0, n) with 64-bit indices.
#define ATSS_CUDA_KERNEL_LOOP(i, n)                                           \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; \
       i < (n); i += static_cast<int64_t>(blockDim.x) * gridDim.x)

}  // namespace atss
