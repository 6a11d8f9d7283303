"""NST operators (docs/api_fsp_nst.md).

f_s (B, C_s, HW) and f_t (B, C_t, HW): each channel's row is L2-normalized over HW (ε = 1e-12),
giving S and T per sample; the loss (1/B) Σ_b ‖S_bᵀS_b/C_s − T_bᵀT_b/C_t‖²_F is computed either
from HW × HW Grams (``spatial``) or from the C × C Grams of the three kernel terms
‖T Tᵀ‖²/C_t² + ‖S Sᵀ‖²/C_s² − 2‖S Tᵀ‖²/(C_s C_t), whichever is cheaper; the teacher self-term
carries no gradient.

- ``tltorch_ext::nst_forward``: (loss, row norms of f_s (B, C_s), of f_t (B, C_t)). The
  normalization is fused into the Gram tiles; nothing of size (B, C, C, HW) exists, and the extra
  memory is the per-tile partial sums.
- ``tltorch_ext::nst_backward``: (∂/∂f_s, ∂/∂f_t), each empty where not needed. It recomputes
  the normalized rows and one or two Grams per sample (O(B·min(C, HW)²)) rather than keeping
  anything from the forward besides the norms.

Autograd is registered once here, whatever backend runs the forward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._tensors import stat_dtype
from ._dispatch import implementation, resolve_for_backward
from ._feature_maps import as_maps, check_same_batch_dtype_device, check_same_spatial

OP = "nst"
GRAM_SIDES = ("auto", "spatial", "channel")


# GPUs whose float64 runs at half the float32 rate (P100, V100, A100, H100, B200); on the others it
# runs at 1/32 to 1/64 of it, and the channel side keeps float32 Grams there.
_FULL_RATE_FLOAT64 = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}


def _fast_float64(device: torch.device) -> bool:
    return device.type == "cpu" or (
        device.type == "cuda" and torch.cuda.get_device_capability(device) in _FULL_RATE_FLOAT64)


@torch.library.custom_op("tltorch_ext::nst_forward", mutates_args=())
def _forward(f_s: Tensor, f_t: Tensor, spatial: bool) -> tuple[Tensor, Tensor, Tensor]:
    forward = implementation(OP, "forward", f_s.device)
    if spatial or f_s.dtype == torch.float64 or not _fast_float64(f_s.device):
        return forward(f_s, f_t, spatial)
    # The channel side is ‖T Tᵀ‖²/C_t² + ‖S Sᵀ‖²/C_s² − 2‖S Tᵀ‖²/(C_s C_t): three O(1) terms that
    # cancel as the student approaches the teacher (in float32, 1e-4 relative error at 1% noise).
    # Where float64 is fast its Grams are carried in float64, on every backend; the float64 copies
    # of the maps are small next to the Grams.
    acc = stat_dtype(f_s.dtype)
    loss, norm_s, norm_t = forward(f_s.double(), f_t.double(), spatial)
    return loss.to(f_s.dtype), norm_s.to(acc), norm_t.to(acc)


@_forward.register_fake
def _(f_s, f_t, spatial):
    acc = stat_dtype(f_s.dtype)
    return (f_s.new_empty(()), f_s.new_empty(f_s.shape[:2], dtype=acc),
            f_t.new_empty(f_t.shape[:2], dtype=acc))


@torch.library.custom_op("tltorch_ext::nst_backward", mutates_args=())
def _backward(grad: Tensor, f_s: Tensor, f_t: Tensor, norm_s: Tensor, norm_t: Tensor,
              spatial: bool, need_s: bool, need_t: bool,
              backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    fn = implementation(OP, "backward", f_s.device, backend)
    return fn(grad, f_s, f_t, norm_s, norm_t, spatial, need_s, need_t)


@_backward.register_fake
def _(grad, f_s, f_t, norm_s, norm_t, spatial, need_s, need_t, backend=None):
    return (f_s.new_empty(f_s.shape if need_s else (0,)),
            f_t.new_empty(f_t.shape if need_t else (0,)))


def _setup_context(ctx, inputs, output):
    f_s, f_t, spatial = inputs
    _loss, norm_s, norm_t = output
    ctx.save_for_backward(f_s, f_t, norm_s, norm_t)
    ctx.spatial = spatial
    ctx.backend = resolve_for_backward(OP, f_s.device)
    ctx.set_materialize_grads(False)  # the norms' gradients are unused: no zeros for them


def _autograd_backward(ctx, grad_loss, _grad_norm_s, _grad_norm_t):
    f_s, f_t, norm_s, norm_t = ctx.saved_tensors
    need_s, need_t = ctx.needs_input_grad[:2]
    if grad_loss is None:
        return None, None, None
    grad_s, grad_t = _backward(grad_loss, f_s, f_t, norm_s, norm_t, ctx.spatial, need_s, need_t,
                               ctx.backend)
    return grad_s if need_s else None, grad_t if need_t else None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def spatial_side_is_cheaper(c_s: int, c_t: int, hw: int) -> bool:
    """Whether to use the HW × HW Grams rather than the C × C ones: when HW ≤ (C_s + C_t)/2.

    Their extra memory is B·HW² against B·C²; their multiply-adds HW²·(C_s + C_t) against about
    HW·(C_s + C_t)², so by count alone the spatial side would win up to HW = C_s + C_t, but the
    channel side's products run faster (reductions over contiguous rows), and the CPU crossover
    measured at C_s = C_t = C sits at HW ≈ C: 2048 channels at 7×7 and 64 at 8×8 take HW × HW,
    16 channels at 32×32 take C × C.
    """
    return 2 * hw <= c_s + c_t


def nst_loss(f_s: Tensor, f_t: Tensor, gram: str = "auto") -> Tensor:
    """Neuron-selectivity-transfer loss with the polynomial kernel k(a, b) = (a·b)².

    f_s (B, C_s, H, W) and f_t (B, C_t, H, W) (or flattened (B, C, HW)) share batch and spatial
    size; the channel counts may differ. Each channel's map is L2-normalized over HW
    (x / max(‖x‖, 1e-12)); with s_i, t_j the normalized rows of one sample the loss is
        mean_b [ mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) − 2 mean_ij k(s_i, t_j) ]
      = (1/B) Σ_b ‖S_bᵀS_b/C_s − T_bᵀT_b/C_t‖²_F,
    the first term carrying no gradient. ``gram`` picks the Grams: ``"spatial"`` (HW × HW),
    ``"channel"`` (C × C, the three terms) or ``"auto"`` (the cheaper,
    :func:`spatial_side_is_cheaper`). Returns a scalar in the inputs' dtype.

    Precision: the spatial side forms the Gram difference entry by entry, so its relative error
    stays at float32 level however small the loss. The channel side adds three kernel terms of
    order mean k(t, t) whose difference is the loss: its error is float32 rounding of those
    terms (~1e-7 of them), which is a large relative error of the loss only when the student is
    very close to the teacher (a few percent at ‖s − t‖/‖t‖ ~ 1e-3; the gradients stay accurate).
    Pass ``gram="spatial"`` or float64 maps where such tiny loss values must be exact.
    """
    if gram not in GRAM_SIDES:
        raise ValueError(f"gram must be one of {GRAM_SIDES}, got {gram!r}")
    maps_s, maps_t = as_maps("f_s", f_s), as_maps("f_t", f_t)
    check_same_spatial("f_s", f_s, "f_t", f_t)
    check_same_batch_dtype_device(f_s=maps_s, f_t=maps_t)
    if gram == "auto":
        spatial = spatial_side_is_cheaper(maps_s.shape[1], maps_t.shape[1], maps_s.shape[2])
    else:
        spatial = gram == "spatial"
    return _forward(maps_s, maps_t, spatial)[0]
