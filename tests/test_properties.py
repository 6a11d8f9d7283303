"""Property-based agreement of each hot op with its float64 result, over random shapes, dtypes,
memory layouts and every CPU backend (hypothesis draws the cases; derandomized, so CI is stable).

The float64 side is the reference backend on float64 copies of the same inputs; each op's own test
module checks that reference against an independent closed form.
"""
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tltorch_ext
from tltorch_ext._tensors import memory_format_of
from tltorch_ext.ops.bss import bss_penalty
from tltorch_ext.ops.fsp import fsp_loss
from tltorch_ext.ops.nst import nst_loss
from tltorch_ext.ops.stoch_norm import stoch_norm

from op_testing import CPU_BACKENDS, rel_err, tolerances

# The Triton interpreter runs each kernel in Python: few, small cases keep the suite in budget.
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
DTYPES = st.sampled_from([torch.float64, torch.float32, torch.bfloat16])
BACKENDS = st.sampled_from(CPU_BACKENDS)
TOLERANCE = tolerances(float32=1e-4, bfloat16=5e-2, float16=5e-3)


def laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x``, stored contiguous, channels_last (4-D) or as a strided view."""
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.cat([x, x], dim=-1)[..., ::2]
    return x


def run(fn, backend, dtype, *inputs):
    """(outputs, input gradients) of fn on ``backend`` in ``dtype``, and of the float64 reference,
    for the same values; the gradient is of Σ output·w with a fixed random weight."""
    results = []
    for name, as_type in ((backend, dtype), ("reference", torch.float64)):
        leaves = [x.detach().to(as_type).requires_grad_() for x in inputs]
        with tltorch_ext.set_backend(name):
            out = fn(*leaves)
            weight = torch.linspace(-1, 2, out.numel(), dtype=torch.float64).view(out.shape)
            (out.double() * weight).sum().backward()
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    return results


def assert_agree(got, expected, dtype, bound=None):
    bound = TOLERANCE[dtype] if bound is None else bound
    (out, grads), (ref_out, ref_grads) = got, expected
    assert out.dtype in (dtype, torch.float32), f"output dtype {out.dtype} for {dtype} input"
    assert rel_err(out, ref_out) < bound
    for grad, ref_grad in zip(grads, ref_grads):
        assert rel_err(grad, ref_grad) < bound


@PROPERTY
@given(backend=BACKENDS, dtype=DTYPES, layout=st.sampled_from(["contiguous", "channels_last"]),
       n=st.integers(2, 5), c=st.integers(1, 6), hw=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_stoch_norm_agrees_with_float64(backend, dtype, layout, n, c, hw, seed):
    g = torch.Generator().manual_seed(seed)
    x = laid_out(torch.randn(n, c, hw, hw + 1, generator=g) * 3 + 1, layout)
    weight, bias = torch.randn(c, generator=g), torch.randn(c, generator=g)
    running_mean, running_var = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
    mask = torch.rand(c, generator=g) < 0.5

    def normalized(x, weight, bias):
        stats = [t.to(x.dtype) for t in (running_mean, running_var)]
        return stoch_norm(x, weight, bias, *stats, mask, 1e-5)[0]

    got, expected = run(normalized, backend, dtype, x, weight, bias)
    assert memory_format_of(got[0]) == memory_format_of(x)  # y keeps x's layout
    assert_agree(got, expected, dtype)


@PROPERTY
@given(backend=BACKENDS, dtype=DTYPES, layout=st.sampled_from(["contiguous", "channels_last",
                                                               "strided"]),
       b=st.integers(1, 4), c1=st.integers(1, 6), c2=st.integers(1, 6), hw=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_fsp_loss_agrees_with_float64(backend, dtype, layout, b, c1, c2, hw, seed):
    g = torch.Generator().manual_seed(seed)
    maps = [laid_out(torch.randn(b, c, hw, hw, generator=g), layout) for c in (c1, c2, c1, c2)]
    got, expected = run(fsp_loss, backend, dtype, *maps)
    assert_agree(got, expected, dtype)


@PROPERTY
@given(backend=BACKENDS, dtype=DTYPES, layout=st.sampled_from(["contiguous", "channels_last",
                                                               "strided"]),
       gram=st.sampled_from(["auto", "channel", "spatial"]), b=st.integers(1, 3),
       c_s=st.integers(1, 6), c_t=st.integers(1, 6), hw=st.integers(2, 5),
       seed=st.integers(0, 2**16))
def test_nst_loss_agrees_with_float64(backend, dtype, layout, gram, b, c_s, c_t, hw, seed):
    g = torch.Generator().manual_seed(seed)
    f_s = laid_out(torch.randn(b, c_s, hw, hw, generator=g), layout)
    f_t = laid_out(torch.randn(b, c_t, hw, hw, generator=g), layout)
    got, expected = run(lambda s, t: nst_loss(s, t, gram), backend, dtype, f_s, f_t)
    # The loss is a difference of kernel means; bf16 inputs round the maps themselves.
    assert_agree(got, expected, dtype, bound=0.1 if dtype == torch.bfloat16 else None)


@PROPERTY
@given(backend=BACKENDS, dtype=st.sampled_from([torch.float64, torch.float32]),
       layout=st.sampled_from(["contiguous", "strided"]), b=st.integers(2, 12),
       d=st.integers(2, 12), k=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_bss_penalty_agrees_with_float64(backend, dtype, layout, b, d, k, seed):
    k = min(k, b, d)
    g = torch.Generator().manual_seed(seed)
    feature = laid_out(torch.randn(b, d, generator=g), layout)
    sigma = torch.linalg.svdvals(feature.double())
    # In float32 the k smallest σ² carry an error of about eps·σ_max², and their gradient needs
    # σ_k apart from its neighbour: draw well-conditioned, separated cases.
    assume(sigma[0] / sigma[-k] < 30)
    assume(k == len(sigma) or sigma[-k - 1] - sigma[-k] > 1e-2 * sigma[0])
    got, expected = run(lambda f: bss_penalty(f, k), backend, dtype, feature)
    assert_agree(got, expected, dtype, bound=1e-3 if dtype == torch.float32 else None)


def test_backends_under_test_include_the_kernels():
    assert {"reference", "cpu", "triton"} <= set(CPU_BACKENDS)
    with pytest.raises(AssertionError):  # the comparison can fail
        assert_agree((torch.ones(2), [torch.ones(2)]), (torch.ones(2) * 2, [torch.ones(2)]),
                     torch.float32)
