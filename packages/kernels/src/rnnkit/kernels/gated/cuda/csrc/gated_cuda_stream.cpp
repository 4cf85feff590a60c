// The current CUDA stream of a device, from torch (kept apart from gated_cuda_ops.cpp so that the
// glue itself needs no c10/cuda header).
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

namespace rnnkit_cuda {

cudaStream_t current_stream(int device) {
  return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
}

}  // namespace rnnkit_cuda
