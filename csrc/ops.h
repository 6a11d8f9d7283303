// Entry points of the compiled extension, one per kernel, taking and returning at::Tensor.
// Each is exposed to Python as <op>_<fn>_<backend> (see tltorch_ext/ops/_dispatch.py) with the
// same signature as the reference function tltorch_ext.reference.<op>.<fn>.
#pragma once
#include <torch/extension.h>

#include <optional>
#include <tuple>

namespace tltorch_ext {

}  // namespace tltorch_ext
