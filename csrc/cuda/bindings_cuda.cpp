// The only CUDA file that includes torch: checks tensors, takes the current stream, and calls the
// torch-free launchers declared in the .cuh headers beside it.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "ops.h"

namespace tltorch_ext {

}  // namespace tltorch_ext
