"""StochNorm in Triton (docs/api_stochnorm.md): the same phases (``stats``, ``elemt``,
``backward_reduce``, ``backward_elemt``) and fused ``forward``/``backward`` as
:mod:`tltorch_ext.reference.stoch_norm`.

x (N, C, *) is viewed as (N, C, S), S the product of the trailing sizes, and cut into tiles of
BLOCK_R positions × BLOCK_C channels:

- contiguous memory (offset (n·C + c)·S + s): a tile is BLOCK_R consecutive s of one sample n;
- channels_last memory (offset r·C + c with r = n·S + s; also any input with S = 1): a tile is
  BLOCK_R consecutive rows r.

The grid is (splits, channel blocks): each program walks ``tiles_per_split`` consecutive tiles of
its channel block, so that a handful of channels still fills the GPU. Statistics: per-lane Welford
partials (count, mean, M2) reduced per program, then a tiny combine kernel merging the splits
(Chan's formula); the fused forward's combine also chooses batch or running statistics per channel
and the write pass's coefficients, so that it stays three launches. Write pass:
y = (x − μ)·scale + β. Backward reduction: per-program partial Σdy and Σdy·(x − μ), merged per
channel into Σdy and Σdy·x̂; backward write: per-channel coefficients of
dx = k_dy·dy + k_xmu·(x − μ) + k_const from those sums and the count, then one write pass (the
fused backward computes the coefficients in the reduction's combine: three launches, as forward).
Statistics accumulate in float32; float64 inputs are computed in float64 in-kernel (no downcast).
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from .._tensors import memory_format_of, stat_dtype

# Elements per tile and warps per program (GPU); the interpreter favours the same big tiles.
_TILE_ELEMENTS = 4096
_NUM_WARPS = 8
_COMBINE_BLOCK = 128
# Programs per SM for the reduction passes; the write passes use every tile as a program.
_REDUCE_PROGRAMS_PER_SM = 8
# Without a GPU (the interpreter, on CPU tensors) a few splits exercise the same combine path.
_INTERPRETER_PROGRAMS = 4


# ---------------------------------------------------------------------------------------------
# Tiling


@triton.jit
def _tile(t, num_tiles, tiles_per_n, extent, sample_stride, C, c_offs,
          CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr):
    """Pointer offsets and validity of tile t: BLOCK_R positions × the channels c_offs."""
    n = t // tiles_per_n
    r0 = (t - n * tiles_per_n) * BLOCK_R
    rows = tl.arange(0, BLOCK_R)
    if CHANNELS_LAST:
        base = r0.to(tl.int64) * C
        local = rows[:, None] * C + c_offs[None, :]
    else:
        base = n.to(tl.int64) * sample_stride + r0
        local = c_offs[None, :] * extent + rows[:, None]
    # Tiles past the end (last split) have no valid row. (A scalar bool ANDed into the tile mask
    # would break the interpreter, which turns it into int32.)
    row_end = tl.where(t < num_tiles, extent, 0)
    valid = ((r0 + rows)[:, None] < row_end) & (c_offs[None, :] < C)
    return base + local, valid


@dataclasses.dataclass(frozen=True)
class _Tiling:
    """How x of shape (N, C, *) is walked: see the module docstring."""

    channels: int
    channels_last: bool
    extent: int  # positions per sample (S), or rows (N·S) in channels-last memory
    sample_stride: int  # C·S, used in contiguous memory only
    tiles_per_n: int
    num_tiles: int
    block_r: int
    block_c: int

    @staticmethod
    def of(x: torch.Tensor) -> "_Tiling":
        n, c = x.shape[0], x.shape[1]
        s = x.numel() // (n * c)
        channels_last = s == 1 or not x.is_contiguous()
        if channels_last:
            block_c = min(triton.next_power_of_2(c), 256)
            block_r = max(1, _TILE_ELEMENTS // block_c)
            extent, samples = n * s, 1
        else:
            block_r = min(triton.next_power_of_2(s), 1024)
            block_c = max(1, min(triton.next_power_of_2(c), _TILE_ELEMENTS // block_r))
            extent, samples = s, n
        tiles_per_n = triton.cdiv(extent, block_r)
        return _Tiling(c, channels_last, extent, c * s, tiles_per_n, samples * tiles_per_n,
                       block_r, block_c)

    @property
    def channel_blocks(self) -> int:
        return triton.cdiv(self.channels, self.block_c)

    def split(self, programs: int) -> tuple[int, int]:
        """(splits, tiles per split) giving about ``programs`` programs in all."""
        splits = max(1, min(self.num_tiles, triton.cdiv(programs, self.channel_blocks)))
        per_split = triton.cdiv(self.num_tiles, splits)
        return triton.cdiv(self.num_tiles, per_split), per_split

    def args(self, per_split: int) -> dict:
        return dict(extent=self.extent, sample_stride=self.sample_stride,
                    tiles_per_n=self.tiles_per_n, num_tiles=self.num_tiles,
                    tiles_per_split=per_split, C=self.channels,
                    CHANNELS_LAST=self.channels_last, BLOCK_R=self.block_r, BLOCK_C=self.block_c)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _reduce_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return _INTERPRETER_PROGRAMS
    return _REDUCE_PROGRAMS_PER_SM * _sm_count(device.index or torch.cuda.current_device())


def _acc(dtype: torch.dtype):
    """The accumulation dtype, as torch and as Triton see it."""
    acc = stat_dtype(dtype)
    return acc, tl.float64 if acc == torch.float64 else tl.float32


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Moments (count, mean, M2) of the union of two disjoint sets (Chan et al.)."""
    count = count_a + count_b
    weight_b = count_b / tl.maximum(count, 1.0)
    delta = mean_b - mean_a
    return count, mean_a + delta * weight_b, m2_a + m2_b + delta * delta * count_a * weight_b


@triton.jit
def _reciprocal_sqrt(v, ACC: tl.constexpr):
    """1/√v correctly rounded, like the reference (float32 sqrt and division are approximate on
    the GPU unless asked for; float64 ones are always IEEE)."""
    if ACC == tl.float64:
        out = 1.0 / tl.sqrt(v)
    else:
        out = tl.div_rn(tl.full(v.shape, 1.0, ACC), tl.sqrt_rn(v))
    return out


@triton.jit
def _stats_partials_kernel(x_ptr, partial_ptr, num_splits, extent, sample_stride, tiles_per_n,
                           num_tiles, tiles_per_split, C, CHANNELS_LAST: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """partial[k, split, c] = (count, mean, M2) of channel c over this program's tiles."""
    split = tl.program_id(0)
    c_offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    # Welford per lane: every lane sees its own sequence of values, one per tile.
    count = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    mean = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for i in range(tiles_per_split):
        offs, valid = _tile(split * tiles_per_split + i, num_tiles, tiles_per_n, extent,
                            sample_stride, C, c_offs, CHANNELS_LAST, BLOCK_R)
        v = tl.load(x_ptr + offs, mask=valid, other=0.0).to(ACC)
        count += valid.to(ACC)
        delta = tl.where(valid, v - mean, 0.0)
        mean += delta / tl.maximum(count, 1.0)
        m2 += delta * (v - mean)
    # Lanes to channels: M2 = Σ M2_lane + Σ n_lane·(mean_lane − mean)².
    total = tl.sum(count, 0)
    channel_mean = tl.sum(count * mean, 0) / tl.maximum(total, 1.0)
    spread = mean - channel_mean[None, :]
    channel_m2 = tl.sum(m2 + count * spread * spread, 0)
    out = partial_ptr + split * C + c_offs
    stride = num_splits * C
    cmask = c_offs < C
    tl.store(out, total, mask=cmask)
    tl.store(out + stride, channel_mean, mask=cmask)
    tl.store(out + 2 * stride, channel_m2, mask=cmask)


@triton.jit
def _stats_combine_kernel(partial_ptr, num_splits, C, weight_ptr, bias_ptr, running_mean_ptr,
                          running_var_ptr, mask_ptr, eps_hi, eps_lo, batch_mean_ptr,
                          batch_var_ptr, save_mean_ptr, save_invstd_ptr, scale_ptr, shift_ptr,
                          SELECT: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Merge the splits' moments into the batch mean and biased variance; with SELECT, also pick
    batch or running statistics per channel and the write pass's scale = γ·invstd, shift = β."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    stride = num_splits * C
    count = tl.zeros([BLOCK_C], ACC)
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for k in range(num_splits):
        p = partial_ptr + k * C + c
        count, mean, m2 = _chan_merge(count, mean, m2, tl.load(p, mask=cmask, other=0.0),
                                      tl.load(p + stride, mask=cmask, other=0.0),
                                      tl.load(p + 2 * stride, mask=cmask, other=0.0))
    var = m2 / tl.maximum(count, 1.0)
    tl.store(batch_mean_ptr + c, mean, mask=cmask)
    tl.store(batch_var_ptr + c, var, mask=cmask)
    if SELECT:
        batch = tl.load(mask_ptr + c, mask=cmask, other=0) != 0
        used_mean = tl.where(batch, mean, tl.load(running_mean_ptr + c, mask=cmask, other=0.0))
        used_var = tl.where(batch, var, tl.load(running_var_ptr + c, mask=cmask, other=1.0))
        # eps arrives as float32 hi + lo parts so that float64 keeps it exactly.
        invstd = _reciprocal_sqrt(used_var + eps_hi + eps_lo, ACC)
        scale = invstd
        if HAS_WEIGHT:
            scale = invstd * tl.load(weight_ptr + c, mask=cmask, other=1.0)
        shift = tl.zeros([BLOCK_C], ACC)
        if HAS_BIAS:
            shift = tl.load(bias_ptr + c, mask=cmask, other=0.0)
        tl.store(save_mean_ptr + c, used_mean, mask=cmask)
        tl.store(save_invstd_ptr + c, invstd, mask=cmask)
        tl.store(scale_ptr + c, scale, mask=cmask)
        tl.store(shift_ptr + c, shift, mask=cmask)


@triton.jit
def _affine_write_kernel(x_ptr, dy_ptr, out_ptr, mean_ptr, k_xmu_ptr, k_const_ptr, k_dy_ptr,
                         extent, sample_stride, tiles_per_n, num_tiles, tiles_per_split, C,
                         HAS_DY: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                         BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """out = k_xmu[c]·(x − μ[c]) + k_const[c] (+ k_dy[c]·dy when HAS_DY)."""
    split = tl.program_id(0)
    c_offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c_offs < C
    mean = tl.load(mean_ptr + c_offs, mask=cmask, other=0.0)[None, :]
    k_xmu = tl.load(k_xmu_ptr + c_offs, mask=cmask, other=0.0)[None, :]
    k_const = tl.load(k_const_ptr + c_offs, mask=cmask, other=0.0)[None, :]
    if HAS_DY:
        k_dy = tl.load(k_dy_ptr + c_offs, mask=cmask, other=0.0)[None, :]
    for i in range(tiles_per_split):
        offs, valid = _tile(split * tiles_per_split + i, num_tiles, tiles_per_n, extent,
                            sample_stride, C, c_offs, CHANNELS_LAST, BLOCK_R)
        v = tl.load(x_ptr + offs, mask=valid, other=0.0).to(ACC)
        out = (v - mean) * k_xmu + k_const
        if HAS_DY:
            out += tl.load(dy_ptr + offs, mask=valid, other=0.0).to(ACC) * k_dy
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_partials_kernel(dy_ptr, x_ptr, mean_ptr, partial_ptr, num_splits, extent,
                          sample_stride, tiles_per_n, num_tiles, tiles_per_split, C,
                          CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """partial[0/1, split, c] = Σdy, Σdy·(x − μ[c]) over this program's tiles."""
    split = tl.program_id(0)
    c_offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c_offs < C
    mean = tl.load(mean_ptr + c_offs, mask=cmask, other=0.0)[None, :]
    sum_dy = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    sum_dy_xmu = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for i in range(tiles_per_split):
        offs, valid = _tile(split * tiles_per_split + i, num_tiles, tiles_per_n, extent,
                            sample_stride, C, c_offs, CHANNELS_LAST, BLOCK_R)
        dy = tl.load(dy_ptr + offs, mask=valid, other=0.0).to(ACC)
        v = tl.load(x_ptr + offs, mask=valid, other=0.0).to(ACC)
        sum_dy += dy
        sum_dy_xmu += dy * (v - mean)  # dy = 0 where invalid
    out = partial_ptr + split * C + c_offs
    tl.store(out, tl.sum(sum_dy, 0), mask=cmask)
    tl.store(out + num_splits * C, tl.sum(sum_dy_xmu, 0), mask=cmask)


@triton.jit
def _store_grad_coefficients(c, cmask, count, weight_ptr, mask_ptr, invstd, sum_dy, sum_dy_xhat,
                             k_dy_ptr, k_xmu_ptr, k_const_ptr, HAS_WEIGHT: tl.constexpr):
    """dx = γ·invstd·(dy − s·Σdy/n − x̂·s·Σdy·x̂/n) as k_dy·dy + k_xmu·(x − μ) + k_const (s the
    mask, n the count of values the sums ran over)."""
    gamma_invstd = invstd
    if HAS_WEIGHT:
        gamma_invstd = invstd * tl.load(weight_ptr + c, mask=cmask, other=0.0)
    batch = tl.load(mask_ptr + c, mask=cmask, other=0) != 0
    per_value = tl.where(batch, gamma_invstd / count, 0.0)
    tl.store(k_dy_ptr + c, gamma_invstd, mask=cmask)
    tl.store(k_xmu_ptr + c, -per_value * invstd * sum_dy_xhat, mask=cmask)
    tl.store(k_const_ptr + c, -per_value * sum_dy, mask=cmask)


@triton.jit
def _grad_sums_kernel(partial_ptr, num_splits, C, invstd_ptr, sum_dy_ptr, sum_dy_xhat_ptr,
                      count, weight_ptr, mask_ptr, k_dy_ptr, k_xmu_ptr, k_const_ptr,
                      COEFFICIENTS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                      BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Σdy and Σdy·x̂ = invstd·Σdy·(x − μ) per channel, from the splits' partials; with
    COEFFICIENTS (the fused backward, whose sums are over x's own count values) also the write
    pass's coefficients."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    sum_dy = tl.zeros([BLOCK_C], ACC)
    sum_dy_xmu = tl.zeros([BLOCK_C], ACC)
    for k in range(num_splits):
        p = partial_ptr + k * C + c
        sum_dy += tl.load(p, mask=cmask, other=0.0)
        sum_dy_xmu += tl.load(p + num_splits * C, mask=cmask, other=0.0)
    invstd = tl.load(invstd_ptr + c, mask=cmask, other=0.0)
    sum_dy_xhat = sum_dy_xmu * invstd
    tl.store(sum_dy_ptr + c, sum_dy, mask=cmask)
    tl.store(sum_dy_xhat_ptr + c, sum_dy_xhat, mask=cmask)
    if COEFFICIENTS:
        _store_grad_coefficients(c, cmask, count, weight_ptr, mask_ptr, invstd, sum_dy,
                                 sum_dy_xhat, k_dy_ptr, k_xmu_ptr, k_const_ptr, HAS_WEIGHT)


@triton.jit
def _grad_coefficients_kernel(sum_dy_ptr, sum_dy_xhat_ptr, C, count, weight_ptr, mask_ptr,
                              invstd_ptr, k_dy_ptr, k_xmu_ptr, k_const_ptr,
                              HAS_WEIGHT: tl.constexpr, BLOCK_C: tl.constexpr):
    """The write pass's coefficients from given sums and count (backward_elemt)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    _store_grad_coefficients(c, cmask, count, weight_ptr, mask_ptr,
                             tl.load(invstd_ptr + c, mask=cmask, other=0.0),
                             tl.load(sum_dy_ptr + c, mask=cmask, other=0.0),
                             tl.load(sum_dy_xhat_ptr + c, mask=cmask, other=0.0),
                             k_dy_ptr, k_xmu_ptr, k_const_ptr, HAS_WEIGHT)


# ---------------------------------------------------------------------------------------------
# Launchers (same signatures as tltorch_ext.reference.stoch_norm)


def _write(tiling: _Tiling, x, dy, out, mean, k_xmu, k_const, k_dy, acc_tl) -> None:
    splits, per_split = tiling.split(
        tiling.num_tiles * tiling.channel_blocks if x.is_cuda else _INTERPRETER_PROGRAMS)
    _affine_write_kernel[(splits, tiling.channel_blocks)](
        x, x if dy is None else dy, out, mean, k_xmu, k_const, k_xmu if k_dy is None else k_dy,
        HAS_DY=dy is not None, ACC=acc_tl, num_warps=_NUM_WARPS, **tiling.args(per_split))


def _moments(x, tiling: _Tiling, acc, acc_tl):
    """The statistics pass: (count, mean, M2) partials of shape (3, splits, C)."""
    splits, per_split = tiling.split(_reduce_programs(x.device))
    partials = torch.empty((3, splits, tiling.channels), dtype=acc, device=x.device)
    _stats_partials_kernel[(splits, tiling.channel_blocks)](
        x, partials, splits, ACC=acc_tl, num_warps=_NUM_WARPS, **tiling.args(per_split))
    return partials


def _channel_vector(t, acc):
    return t.to(acc).contiguous()


def stats(x):
    """(mean, var), as the reference's ``stats``."""
    x = x.contiguous(memory_format=memory_format_of(x))
    acc, acc_tl = _acc(x.dtype)
    tiling = _Tiling.of(x)
    partials = _moments(x, tiling, acc, acc_tl)
    # Separate tensors: outputs of a custom op must not alias one another.
    mean, var = (torch.empty(tiling.channels, dtype=acc, device=x.device) for _ in range(2))
    _stats_combine_kernel[(triton.cdiv(tiling.channels, _COMBINE_BLOCK),)](
        partials, partials.shape[1], tiling.channels, mean, mean, mean, mean, mean, 0.0, 0.0,
        mean, var, mean, mean, mean, mean,
        SELECT=False, HAS_WEIGHT=False, HAS_BIAS=False, BLOCK_C=_COMBINE_BLOCK, ACC=acc_tl)
    return mean, var


def elemt(x, weight, bias, save_mean, save_invstd):
    """y, as the reference's ``elemt``."""
    x = x.contiguous(memory_format=memory_format_of(x))
    acc, acc_tl = _acc(x.dtype)
    save_invstd = _channel_vector(save_invstd, acc)
    scale = save_invstd if weight is None else save_invstd * weight.to(acc)
    shift = torch.zeros_like(scale) if bias is None else _channel_vector(bias, acc)
    y = torch.empty_like(x)
    _write(_Tiling.of(x), x, None, y, _channel_vector(save_mean, acc), scale.contiguous(), shift,
           None, acc_tl)
    return y


def _grad_sums(grad_y, x, weight, mask, save_mean, save_invstd, coefficients: bool):
    """The backward reduction: (Σdy, Σdy·x̂) and, when ``coefficients``, the write pass's
    (k_dy, k_xmu, k_const) for x's own count, from the same combine launch."""
    acc, acc_tl = _acc(x.dtype)
    tiling = _Tiling.of(x)
    C = tiling.channels
    save_mean, save_invstd = _channel_vector(save_mean, acc), _channel_vector(save_invstd, acc)
    splits, per_split = tiling.split(_reduce_programs(x.device))
    partials = torch.empty((2, splits, C), dtype=acc, device=x.device)
    _grad_partials_kernel[(splits, tiling.channel_blocks)](
        grad_y, x, save_mean, partials, splits, ACC=acc_tl, num_warps=_NUM_WARPS,
        **tiling.args(per_split))
    # Separate tensors: outputs of a custom op must not alias one another.
    sum_dy, sum_dy_xhat = (torch.empty(C, dtype=acc, device=x.device) for _ in range(2))
    k = torch.empty((3, C), dtype=acc, device=x.device).unbind(0) if coefficients else None
    # Without COEFFICIENTS the kernel reads no mask and writes no coefficients: any pointer will do.
    _grad_sums_kernel[(triton.cdiv(C, _COMBINE_BLOCK),)](
        partials, splits, C, save_invstd, sum_dy, sum_dy_xhat, x.numel() // C,
        save_invstd if weight is None else _channel_vector(weight, acc),
        mask.contiguous().view(torch.uint8) if coefficients else sum_dy,
        *(k if coefficients else (sum_dy,) * 3),
        COEFFICIENTS=coefficients, HAS_WEIGHT=weight is not None, BLOCK_C=_COMBINE_BLOCK,
        ACC=acc_tl)
    return sum_dy, sum_dy_xhat, k


def backward_reduce(grad_y, x, save_mean, save_invstd):
    """(Σdy, Σdy·x̂), as the reference's ``backward_reduce``."""
    fmt = memory_format_of(x)
    x, grad_y = x.contiguous(memory_format=fmt), grad_y.contiguous(memory_format=fmt)
    sum_dy, sum_dy_xhat, _ = _grad_sums(grad_y, x, None, None, save_mean, save_invstd, False)
    return sum_dy, sum_dy_xhat


def backward_elemt(grad_y, x, weight, mask, save_mean, save_invstd, sum_dy, sum_dy_xhat, count):
    """dx, as the reference's ``backward_elemt``."""
    fmt = memory_format_of(x)
    x, grad_y = x.contiguous(memory_format=fmt), grad_y.contiguous(memory_format=fmt)
    acc, acc_tl = _acc(x.dtype)
    C = x.shape[1]
    save_invstd = _channel_vector(save_invstd, acc)
    k_dy, k_xmu, k_const = torch.empty((3, C), dtype=acc, device=x.device).unbind(0)
    _grad_coefficients_kernel[(triton.cdiv(C, _COMBINE_BLOCK),)](
        _channel_vector(sum_dy, acc), _channel_vector(sum_dy_xhat, acc), C, count,
        save_invstd if weight is None else _channel_vector(weight, acc),
        mask.contiguous().view(torch.uint8), save_invstd, k_dy, k_xmu, k_const,
        HAS_WEIGHT=weight is not None, BLOCK_C=_COMBINE_BLOCK)
    grad_x = torch.empty_like(x)
    _write(_Tiling.of(x), x, grad_y, grad_x, _channel_vector(save_mean, acc), k_xmu, k_const,
           k_dy, acc_tl)
    return grad_x


def forward(x, weight, bias, running_mean, running_var, mask, eps):
    """(y, save_mean, save_invstd, batch_mean, batch_var), as the reference's ``forward``: the
    statistics pass, one combine that also selects per channel, the ``elemt`` write pass."""
    x = x.contiguous(memory_format=memory_format_of(x))
    acc, acc_tl = _acc(x.dtype)
    tiling = _Tiling.of(x)
    C = tiling.channels
    partials = _moments(x, tiling, acc, acc_tl)
    batch_mean, batch_var, save_mean, save_invstd = (
        torch.empty(C, dtype=acc, device=x.device) for _ in range(4))
    scale, shift = torch.empty((2, C), dtype=acc, device=x.device).unbind(0)
    eps_hi = float(torch.tensor(eps, dtype=torch.float32))
    _stats_combine_kernel[(triton.cdiv(C, _COMBINE_BLOCK),)](
        partials, partials.shape[1], C,
        scale if weight is None else _channel_vector(weight, acc),
        scale if bias is None else _channel_vector(bias, acc),
        _channel_vector(running_mean, acc), _channel_vector(running_var, acc),
        mask.contiguous().view(torch.uint8), eps_hi, float(eps) - eps_hi,
        batch_mean, batch_var, save_mean, save_invstd, scale, shift,
        SELECT=True, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_C=_COMBINE_BLOCK, ACC=acc_tl,
    )
    y = torch.empty_like(x)
    _write(tiling, x, None, y, save_mean, scale, shift, None, acc_tl)
    return y, save_mean, save_invstd, batch_mean, batch_var


def backward(grad_y, x, weight, mask, save_mean, save_invstd):
    """(grad_x, grad_weight, grad_bias), as the reference's ``backward``: ``backward_reduce``,
    whose combine also computes ``backward_elemt``'s coefficients for x's own count, then the
    ``backward_elemt`` write pass (three launches)."""
    fmt = memory_format_of(x)
    x, grad_y = x.contiguous(memory_format=fmt), grad_y.contiguous(memory_format=fmt)
    acc, acc_tl = _acc(x.dtype)
    sum_dy, sum_dy_xhat, (k_dy, k_xmu, k_const) = _grad_sums(grad_y, x, weight, mask, save_mean,
                                                             save_invstd, True)
    grad_x = torch.empty_like(x)
    _write(_Tiling.of(x), x, grad_y, grad_x, _channel_vector(save_mean, acc), k_xmu, k_const,
           k_dy, acc_tl)
    param_dtype = acc if weight is None else weight.dtype
    return grad_x, sum_dy_xhat.to(param_dtype), sum_dy.to(param_dtype)
