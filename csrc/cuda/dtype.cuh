// The element types the torch-free CUDA launchers take, for every op.
#pragma once

namespace tltorch_ext::cuda {

enum class DType : int { kHalf = 0, kBFloat16 = 1, kFloat = 2, kDouble = 3 };

}  // namespace tltorch_ext::cuda
