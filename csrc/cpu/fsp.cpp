// FSP on CPU (docs/api_fsp_nst.md); same functions and results as tltorch_ext/reference/fsp.py.
//
// Work is split into tasks of (sample b, block of up to 64 rows of top). A task takes the
// sample's rows of top and the columns of bot as accumulation-type panels (the input itself when
// it is float/double laid out so, else a packed copy in per-thread scratch) and runs the register
// blocks of tile_products.h: for the loss, each block accumulates G_s and −G_t into the same
// registers (the difference is formed on the fly) and is squared there, so neither Gram is
// stored (D = G_s − G_t is written only when asked). Backward products α·op(M)·X use the same
// kernel. Accumulation is float32 (double for double inputs); the task sums are added in double.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <numeric>
#include <vector>

#include "feature_rows.h"
#include "tile_products.h"

namespace tltorch_ext {
namespace {

constexpr int64_t kRowsPerTask = 64;

void check_maps(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must be (B, C, HW), got shape ", t.sizes());
}

// Whether the Grams of top · botᵀ go through row dot products (every network's rows long).
bool use_row_dots(const at::Tensor* tops, int count) {
  for (int p = 0; p < count; ++p) {
    if (!tiles::prefer_row_dots(tops[p].size(2))) return false;
  }
  return true;
}

// Y = Σ_p ±(1/HW_p) · top_p · bot_pᵀ over top rows [r0, r0 + rows) of sample b: Σ Y², and Y
// written at out (leading dimension C_bot) unless null. Long rows go through row dot products,
// short ones through products() with bot's columns packed.
template <typename scalar_t, typename acc_t>
double gram_block_rows(const at::Tensor* bots, const at::Tensor* tops, const acc_t* signs,
                       int count, int64_t b, int64_t r0, int64_t rows, acc_t* scratch,
                       acc_t* out) {
  const int64_t c_bot = bots[0].size(1);
  const bool dots = use_row_dots(tops, count);
  tiles::RowProduct<acc_t> row_terms[2];
  tiles::MatrixTerm<acc_t> terms[2];
  for (int p = 0; p < count; ++p) {
    const SampleRows<scalar_t> top(tops[p], b, r0), bot(bots[p], b);
    const acc_t coef = signs[p] / acc_t(top.len);
    int64_t ld_top, ld_bot;
    const acc_t* top_rows = panel<acc_t>(top, rows, false, scratch, ld_top);
    const acc_t* bot_panel = panel<acc_t>(bot, c_bot, !dots, scratch, ld_bot);
    row_terms[p] = {top_rows, ld_top, bot_panel, ld_bot, top.len, coef};
    terms[p] = {top_rows, ld_top, 1, bot_panel, ld_bot, top.len, coef};
  }
  constexpr auto reduce = tiles::Reduce::kSquares;
  return dots ? tiles::row_dots(row_terms, count, rows, c_bot, reduce, out, c_bot)
              : tiles::products(terms, count, rows, c_bot, reduce, false, out, c_bot);
}

// Runs gram_block_rows over every (sample, row block); returns Σ Y² and fills out (B, C_top,
// C_bot) when defined.
template <typename scalar_t>
double gram_tasks(const at::Tensor* bots, const at::Tensor* tops, int count, at::Tensor out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = tops[0].size(0), c_top = tops[0].size(1), c_bot = bots[0].size(1);
  const int64_t blocks = ceil_div(c_top, kRowsPerTask), tasks = batch * blocks;
  const bool dots = use_row_dots(tops, count);
  int64_t scratch_size = 0;
  for (int p = 0; p < count; ++p) {
    scratch_size += panel_size<acc_t, scalar_t>(tops[p], std::min(kRowsPerTask, c_top), false) +
                    panel_size<acc_t, scalar_t>(bots[p], c_bot, !dots);
  }
  ThreadScratch<acc_t> scratch(scratch_size, tops[0]);
  const acc_t signs[2] = {1, -1};
  acc_t* out_ptr = out.defined() ? out.data_ptr<acc_t>() : nullptr;
  std::vector<double> partial(tasks);
  const int64_t work = std::min(kRowsPerTask, c_top) * c_bot * tops[0].size(2) * count;
  at::parallel_for(0, tasks, grain_for(work), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, r0 = (task % blocks) * kRowsPerTask;
      const int64_t rows = std::min(kRowsPerTask, c_top - r0);
      acc_t* rows_out = out_ptr == nullptr ? nullptr : out_ptr + (b * c_top + r0) * c_bot;
      partial[task] = gram_block_rows<scalar_t, acc_t>(bots, tops, signs, count, b, r0, rows,
                                                       scratch.local(), rows_out);
    }
  });
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

// out (B, R, L) = scale · op(M) · X per sample, M given in the accumulation type, contiguous
// (B, R, J), or (B, J, R) when transposed.
template <typename scalar_t>
void apply_tasks(const at::Tensor& m, const at::Tensor& x, bool transpose_m, double scale,
                 at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool direct = std::is_same_v<acc_t, scalar_t>;  // results go straight into out
  const int64_t batch = x.size(0), inner = x.size(1), len = x.size(2), rows = out.size(1);
  const int64_t blocks = ceil_div(rows, kRowsPerTask);
  const int64_t out_rows = direct ? 0 : std::min(kRowsPerTask, rows) * len;
  ThreadScratch<acc_t> scratch(panel_size<acc_t, scalar_t>(x, inner, false) + out_rows, x);
  const acc_t* m_base = m.data_ptr<acc_t>();
  scalar_t* out_base = out.data_ptr<scalar_t>();
  const int64_t work = std::min(kRowsPerTask, rows) * inner * len;
  at::parallel_for(0, batch * blocks, grain_for(work), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, r0 = (task % blocks) * kRowsPerTask;
      const int64_t n = std::min(kRowsPerTask, rows - r0);
      acc_t* work = scratch.local();
      int64_t ldx;
      const acc_t* x_panel = panel<acc_t>(SampleRows<scalar_t>(x, b), inner, false, work, ldx);
      // op(M)[i, j] = M[b, i, j], or M[b, j, i] when transposed.
      const acc_t* m_rows = m_base + b * rows * inner + (transpose_m ? r0 : r0 * inner);
      const tiles::MatrixTerm<acc_t> term{m_rows, transpose_m ? 1 : inner, transpose_m ? rows : 1,
                                          x_panel, ldx, inner, static_cast<acc_t>(scale)};
      scalar_t* out_rows = out_base + (b * rows + r0) * len;
      if constexpr (direct) {
        tiles::products(&term, 1, n, len, tiles::Reduce::kNone, false, out_rows, len);
      } else {
        tiles::products(&term, 1, n, len, tiles::Reduce::kNone, false, work, len);
        for (int64_t i = 0; i < n * len; ++i) out_rows[i] = static_cast<scalar_t>(work[i]);
      }
    }
  });
}

}  // namespace

at::Tensor fsp_matrix_cpu(const at::Tensor& bot, const at::Tensor& top) {
  check_maps(bot, "bot");
  check_maps(top, "top");
  at::Tensor out = at::empty({top.size(0), top.size(1), bot.size(1)},
                             top.options().dtype(at::toOpMathType(top.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, top.scalar_type(), "fsp_matrix_cpu",
                                  [&] {
    gram_tasks<scalar_t>(&bot, &top, 1, out);
  });
  return out.to(top.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> fsp_forward_cpu(const at::Tensor& bot_s, const at::Tensor& top_s,
                                                   const at::Tensor& bot_t, const at::Tensor& top_t,
                                                   bool keep_diff) {
  check_maps(bot_s, "bot_s");
  check_maps(top_s, "top_s");
  check_maps(bot_t, "bot_t");
  check_maps(top_t, "top_t");
  const auto acc = top_s.options().dtype(at::toOpMathType(top_s.scalar_type()));
  const int64_t batch = top_s.size(0), c_top = top_s.size(1), c_bot = bot_s.size(1);
  at::Tensor diff = keep_diff ? at::empty({batch, c_top, c_bot}, acc) : at::empty({0}, acc);
  const at::Tensor bots[2] = {bot_s, bot_t}, tops[2] = {top_s, top_t};
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, top_s.scalar_type(), "fsp_forward_cpu",
                                  [&] {
    total = gram_tasks<scalar_t>(bots, tops, 2, keep_diff ? diff : at::Tensor());
  });
  const double mean = total / static_cast<double>(batch * c_top * c_bot);
  return {at::scalar_tensor(mean, top_s.options()), diff};
}

at::Tensor fsp_backward_cpu(const at::Tensor& m, const at::Tensor& x, bool transpose_m,
                            double alpha, const std::optional<at::Tensor>& grad) {
  check_maps(x, "x");
  TORCH_CHECK(m.dim() == 3 && m.size(0) == x.size(0), "m must be (B, R, J), got ", m.sizes());
  TORCH_CHECK((transpose_m ? m.size(1) : m.size(2)) == x.size(1), "m's inner size ", m.sizes(),
              " does not match x ", x.sizes());
  const double scale = alpha * (grad.has_value() ? grad->item<double>() : 1.0);
  at::Tensor out = at::empty({x.size(0), transpose_m ? m.size(2) : m.size(1), x.size(2)},
                             x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fsp_backward_cpu",
                                  [&] {
    apply_tasks<scalar_t>(m.to(at::toOpMathType(x.scalar_type())).contiguous(), x, transpose_m, scale, out);
  });
  return out;
}

// The schemas are defined here, with the CPU kernels; csrc/cuda/fsp_binding.cpp adds CUDA ones.
TORCH_LIBRARY_FRAGMENT(tltorch_ext_C, m) {
  m.def("fsp_matrix(Tensor bot, Tensor top) -> Tensor");
  m.def("fsp_forward(Tensor bot_s, Tensor top_s, Tensor bot_t, Tensor top_t, bool keep_diff)"
        " -> (Tensor, Tensor)");
  m.def("fsp_backward(Tensor m, Tensor x, bool transpose_m, float alpha, Tensor? grad) -> Tensor");
}

TORCH_LIBRARY_IMPL(tltorch_ext_C, CPU, m) {
  m.impl("fsp_matrix", &fsp_matrix_cpu);
  m.impl("fsp_forward", &fsp_forward_cpu);
  m.impl("fsp_backward", &fsp_backward_cpu);
}

}  // namespace tltorch_ext
