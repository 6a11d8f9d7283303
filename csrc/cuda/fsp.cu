// FSP on CUDA (docs/api_fsp_nst.md): the products of tile_products.cu arranged for the FSP
// matrix, the fused loss and the input gradients; see fsp.cuh.
#include "fsp.cuh"

namespace tltorch_ext::cuda {
namespace {

bool is_double(const FeatureMaps& maps) { return maps.dtype == DType::kDouble; }

// ±top · botᵀ / HW as a product: A = top's rows, B = bot's rows transposed.
Product gram_product(const FeatureMaps& bot, const FeatureMaps& top, double sign) {
  Product product;
  product.a = top.rows();
  product.b = bot.rows().transposed();
  product.inner = top.positions;
  product.coef = sign / static_cast<double>(top.positions);
  return product;
}

ProductsArgs gram_args(const FeatureMaps& bot, const FeatureMaps& top, int64_t batch) {
  ProductsArgs args;
  args.batch = batch;
  args.rows = top.channels;
  args.cols = bot.channels;
  args.double_acc = is_double(top);
  return args;
}

}  // namespace

cudaError_t fsp_matrix(const FeatureMaps& bot, const FeatureMaps& top, int64_t batch, void* out,
                       cudaStream_t stream) {
  ProductsArgs args = gram_args(bot, top, batch);
  args.products[0] = gram_product(bot, top, 1.0);
  args.out = out;
  args.out_dtype = top.dtype;
  args.out_batch_stride = top.channels * bot.channels;
  args.out_stride_i = bot.channels;
  args.out_stride_j = 1;
  return launch_products(args, stream);
}

size_t fsp_loss_workspace(int64_t batch, int64_t c_top, int64_t c_bot, bool double_acc) {
  Workspace sizes(nullptr);
  sizes.take(batch * product_tiles(c_top, c_bot) * acc_bytes(double_acc));
  return sizes.used();
}

cudaError_t fsp_loss(const FeatureMaps& bot_s, const FeatureMaps& top_s,
                     const FeatureMaps& bot_t, const FeatureMaps& top_t, int64_t batch,
                     void* loss, void* diff, void* workspace, cudaStream_t stream) {
  ProductsArgs args = gram_args(bot_s, top_s, batch);
  args.products[0] = gram_product(bot_s, top_s, 1.0);
  args.products[1] = gram_product(bot_t, top_t, -1.0);
  args.count = 2;
  const int64_t partials = batch * product_tiles(args.rows, args.cols);
  args.partial = Workspace(workspace).take(partials * acc_bytes(args.double_acc));
  if (diff != nullptr) {
    args.out = diff;
    args.out_dtype = args.double_acc ? DType::kDouble : DType::kFloat;
    args.out_batch_stride = args.rows * args.cols;
    args.out_stride_i = args.cols;
    args.out_stride_j = 1;
  }
  cudaError_t status = launch_products(args, stream);
  if (status != cudaSuccess) return status;
  const void* parts[1] = {args.partial};
  const double weights[1] = {1.0};
  const double entries = static_cast<double>(batch) * args.rows * args.cols;
  return launch_weighted_sum(parts, &partials, weights, 1, 1.0 / entries, args.double_acc, loss,
                             top_s.dtype, stream);
}

cudaError_t fsp_apply(const void* m, DType m_dtype, bool transpose_m, int64_t rows,
                      const FeatureMaps& x, int64_t batch, double alpha, const void* grad,
                      void* out, cudaStream_t stream) {
  const int64_t inner = x.channels;
  ProductsArgs args;
  args.batch = batch;
  args.rows = rows;
  args.cols = x.positions;
  args.double_acc = is_double(x);
  MatrixView mv;
  mv.data = m;
  mv.dtype = m_dtype;
  mv.batch_stride = rows * inner;
  mv.stride_i = transpose_m ? 1 : inner;
  mv.stride_j = transpose_m ? rows : 1;
  args.products[0].a = mv;
  args.products[0].b = x.rows();
  args.products[0].inner = inner;
  args.products[0].coef = alpha;
  args.out = out;
  args.out_dtype = x.dtype;
  args.out_batch_stride = rows * x.positions;
  args.out_stride_i = x.positions;
  args.out_stride_j = 1;
  args.grad = grad;
  return launch_products(args, stream);
}

}  // namespace tltorch_ext::cuda
