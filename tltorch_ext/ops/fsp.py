"""FSP operators (docs/api_fsp_nst.md).

For a pair of maps of one network, bot (B, C_bot, HW) and top (B, C_top, HW), the FSP matrix is
G = top · botᵀ / HW (B, C_top, C_bot).

- ``tltorch_ext::fsp_matrix``: G.
- ``tltorch_ext::fsp_forward``: the fused loss mean((G_s − G_t)²) over the B·C_top·C_bot entries.
  Backends accumulate G_s and G_t tile by tile and reduce the squared difference without storing
  either; when asked (``keep_diff``, set when an input needs a gradient) they also write
  D = G_s − G_t (B·C_top·C_bot values, the only thing backward keeps).
- ``tltorch_ext::fsp_backward``: α·g·op(M)·X, the form of every input gradient: with
  k = 2g/(B·C_top·C_bot), ∂/∂top_s = k/HW_s · D·bot_s, ∂/∂bot_s = k/HW_s · Dᵀ·top_s, and the
  teacher's the same with −k/HW_t (two matrix products per network). ``fsp_matrix``'s backward is
  ∂/∂top = Ḡ·bot/HW, ∂/∂bot = Ḡᵀ·top/HW.

Autograd is registered once here, whatever backend runs the forward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._tensors import stat_dtype
from ._dispatch import implementation, resolve_for_backward
from ._feature_maps import as_maps, check_same_batch_dtype_device, check_same_spatial

OP = "fsp"


@torch.library.custom_op("tltorch_ext::fsp_matrix", mutates_args=())
def _matrix(bot: Tensor, top: Tensor) -> Tensor:
    return implementation(OP, "matrix", top.device)(bot, top)


@_matrix.register_fake
def _(bot, top):
    return top.new_empty(top.shape[0], top.shape[1], bot.shape[1])


@torch.library.custom_op("tltorch_ext::fsp_forward", mutates_args=())
def _forward(bot_s: Tensor, top_s: Tensor, bot_t: Tensor, top_t: Tensor, keep_diff: bool,
             backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    fn = implementation(OP, "forward", top_s.device, backend)
    return fn(bot_s, top_s, bot_t, top_t, keep_diff)


@_forward.register_fake
def _(bot_s, top_s, bot_t, top_t, keep_diff, backend=None):
    shape = (top_s.shape[0], top_s.shape[1], bot_s.shape[1]) if keep_diff else (0,)
    return top_s.new_empty(()), top_s.new_empty(shape, dtype=stat_dtype(top_s.dtype))


@torch.library.custom_op("tltorch_ext::fsp_backward", mutates_args=())
def _backward(m: Tensor, x: Tensor, transpose_m: bool, alpha: float, grad: Optional[Tensor],
              backend: Optional[str] = None) -> Tensor:
    return implementation(OP, "backward", x.device, backend)(m, x, transpose_m, alpha, grad)


@_backward.register_fake
def _(m, x, transpose_m, alpha, grad, backend=None):
    return x.new_empty(x.shape[0], m.shape[2] if transpose_m else m.shape[1], x.shape[2])


def _matrix_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)
    ctx.backend = resolve_for_backward(OP, inputs[1].device)


def _matrix_autograd_backward(ctx, grad_g):
    bot, top = ctx.saved_tensors
    scale = 1.0 / top.shape[-1]
    need_bot, need_top = ctx.needs_input_grad
    return (_backward(grad_g, top, True, scale, None, ctx.backend) if need_bot else None,
            _backward(grad_g, bot, False, scale, None, ctx.backend) if need_top else None)


_matrix.register_autograd(_matrix_autograd_backward, setup_context=_matrix_setup_context)


def _loss_setup_context(ctx, inputs, output):
    bot_s, top_s, bot_t, top_t, _keep_diff, _backend = inputs
    ctx.save_for_backward(bot_s, top_s, bot_t, top_t, output[1])
    ctx.backend = resolve_for_backward(OP, top_s.device)
    ctx.set_materialize_grads(False)  # no zeros of D's size for the unused gradient of D


def _loss_autograd_backward(ctx, grad_loss, _grad_diff):
    bot_s, top_s, bot_t, top_t, diff = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None, None, None
    if diff.numel() == 0:  # the forward was asked not to keep D: recompute it
        diff = _forward(bot_s, top_s, bot_t, top_t, True, ctx.backend)[1]
    k = 2.0 / diff.numel()
    grads = []
    for (bot, top), sign, needs in (((bot_s, top_s), 1.0, ctx.needs_input_grad[0:2]),
                                    ((bot_t, top_t), -1.0, ctx.needs_input_grad[2:4])):
        alpha = sign * k / top.shape[-1]
        grads.append(_backward(diff, top, True, alpha, grad_loss, ctx.backend) if needs[0] else None)
        grads.append(_backward(diff, bot, False, alpha, grad_loss, ctx.backend) if needs[1] else None)
    return (*grads, None, None)


_forward.register_autograd(_loss_autograd_backward, setup_context=_loss_setup_context)


def fsp_matrix(bot: Tensor, top: Tensor) -> Tensor:
    """The FSP (flow of solution procedure) matrix G = top · botᵀ / HW.

    bot (B, C_bot, H, W) and top (B, C_top, H, W) (or flattened (B, C, HW)) are two maps of one
    network at the same spatial size; returns G (B, C_top, C_bot) in their dtype, accumulated in
    float32 (float64 for float64 inputs). Differentiable in both inputs.
    """
    bot3, top3 = as_maps("bot", bot), as_maps("top", top)
    check_same_spatial("bot", bot, "top", top)
    check_same_batch_dtype_device(top=top3, bot=bot3)
    return _matrix(bot3, top3)


def fsp_loss(bot_s: Tensor, top_s: Tensor, bot_t: Tensor, top_t: Tensor) -> Tensor:
    """mean((G_s − G_t)²) over the B·C_top·C_bot entries, G = top · botᵀ / HW per network.

    The student's pair (bot_s, top_s) and the teacher's (bot_t, top_t) are (B, C, H, W) or
    (B, C, HW) maps; within a network bot and top share their spatial size (the student's and
    the teacher's may differ), across networks the channel counts must match. The fused op never
    stores G_s or G_t: forward keeps only D = G_s − G_t, and only when an input requires grad.
    Returns a scalar in the inputs' dtype; gradients reach whichever inputs require them.
    """
    maps = {name: as_maps(name, t) for name, t in
            (("top_s", top_s), ("bot_s", bot_s), ("top_t", top_t), ("bot_t", bot_t))}
    check_same_spatial("bot_s", bot_s, "top_s", top_s)
    check_same_spatial("bot_t", bot_t, "top_t", top_t)
    check_same_batch_dtype_device(**maps)
    for role in ("bot", "top"):
        c_s, c_t = maps[f"{role}_s"].shape[1], maps[f"{role}_t"].shape[1]
        if c_s != c_t:
            raise ValueError(
                f"{role}_s has {c_s} channels but {role}_t has {c_t}; the student's and the "
                "teacher's FSP matrices must have the same shape (C_top, C_bot)")
    keep_diff = torch.is_grad_enabled() and any(t.requires_grad for t in maps.values())
    return _forward(maps["bot_s"], maps["top_s"], maps["bot_t"], maps["top_t"], keep_diff)[0]
