"""Batch Spectral Shrinkage (docs/api_bss.md): every backend against the float64 SVD."""
import math

import pytest
import torch

import tltorch_ext
from op_testing import CPU_BACKENDS, CUDA_BACKENDS
from tltorch_ext import BatchSpectralShrinkage
from tltorch_ext.ops import bss_penalty

BACKENDS = CPU_BACKENDS
FUSED = [b for b in BACKENDS if b != "reference"]
# The Triton interpreter is slow: its shapes stay tiny.
SHAPES = {"triton": [(4, 7), (7, 4), (5, 5)]}
DEFAULT_SHAPES = [(6, 13), (13, 6), (9, 9), (24, 61), (61, 24)]


def shapes_for(backend):
    return SHAPES.get(backend, DEFAULT_SHAPES)


def backend_shapes():
    return [(b, s) for b in BACKENDS for s in shapes_for(b)]


def svd_penalty(x, k):
    """Σ of the k smallest σ², from the float64 SVD of x."""
    return (torch.linalg.svdvals(x.double())[..., -k:] ** 2).sum(-1)


def run(backend, x, k):
    with tltorch_ext.set_backend(backend):
        return bss_penalty(x, k)


def orthonormal(rows, cols, generator):
    q, _ = torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=generator))
    return q


def with_spectrum(b, d, sigma, dtype=torch.float32, seed=0):
    """U diag(σ) Vᵀ for random orthonormal U (b × m), V (d × m), σ given in any order."""
    generator = torch.Generator().manual_seed(seed)
    m = min(b, d)
    return ((orthonormal(b, m, generator) * sigma) @ orthonormal(d, m, generator).T).to(dtype)


def spectrum(m, k, kappa, gap):
    """m singular values log-spaced from kappa down to 1, except that the k smallest are 1 and the
    (k+1)-th is 1 + gap: a relative gap `gap` exactly where the penalty splits the spectrum."""
    sigma = torch.logspace(math.log10(kappa), 0, m, dtype=torch.float64)
    sigma = torch.maximum(sigma, torch.tensor(1 + gap, dtype=torch.float64))
    sigma[m - k:] = 1.0
    if k < m:
        sigma[m - k - 1] = 1 + gap
    return sigma


@pytest.mark.parametrize("backend,shape", backend_shapes())
def test_float32_within_1e4_of_float64_svd_for_every_k(backend, shape):
    b, d = shape
    m = min(b, d)
    for k in range(1, m + 1):
        x = with_spectrum(b, d, spectrum(m, k, kappa=100.0, gap=1.5e-3), seed=k)
        got = run(backend, x, k)
        assert got.dtype == torch.float32 and got.shape == ()
        want = svd_penalty(x, k)
        assert abs(got.double() - want) / want < 1e-4, (k, got.item(), want.item())


@pytest.mark.parametrize("backend", FUSED)
def test_float64_gram_keeps_small_singular_values_at_condition_1e4(backend):
    # Forming the Gram squares σ_max/σ_min = 1e4 to 1e8: a float32 Gram would be off by ~eps·1e8.
    b, d = shapes_for(backend)[0]
    m = min(b, d)
    for k in (1, m // 2):
        x = with_spectrum(b, d, spectrum(m, k, kappa=1e4, gap=1.5e-3), seed=k)
        want = svd_penalty(x, k)
        assert abs(run(backend, x, k).double() - want) / want < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_singular_values_give_the_continuous_value(backend):
    # k = 2 splits the cluster σ = 2, 2, 2: the value is still 1 + 4.
    x = with_spectrum(5, 8, torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0], dtype=torch.float64),
                      dtype=torch.float64)
    assert run(backend, x, 2).item() == pytest.approx(5.0, rel=1e-10)
    assert run(backend, x, 4).item() == pytest.approx(13.0, rel=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_looped(backend):
    b, d = shapes_for(backend)[1]
    x = torch.randn(3, b, d, dtype=torch.float64)
    got = run(backend, x, 2)
    assert got.shape == (3,)
    for i in range(3):
        torch.testing.assert_close(got[i], run(backend, x[i], 2), rtol=1e-12, atol=0)
    torch.testing.assert_close(got, svd_penalty(x, 2), rtol=1e-10, atol=0)
    empty = torch.zeros(0, b, d, dtype=torch.float64, requires_grad=True)
    penalty = run(backend, empty, 2)
    assert penalty.shape == (0,)
    penalty.sum().backward()
    assert empty.grad.shape == empty.shape


@pytest.mark.parametrize("backend,shape", backend_shapes())
def test_gradient_matches_autograd_through_svd(backend, shape):
    b, d = shape
    x = torch.randn(2, b, d, dtype=torch.float64)
    weights = torch.tensor([0.7, -1.3], dtype=torch.float64)
    k = min(b, d) // 2 + 1
    ours = x.clone().requires_grad_()
    (run(backend, ours, k) * weights).sum().backward()
    oracle = x.clone().requires_grad_()
    (svd_penalty(oracle, k) * weights).sum().backward()
    torch.testing.assert_close(ours.grad, oracle.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_gradient_with_gap(backend):
    b, d = shapes_for(backend)[0]
    m = min(b, d)
    x = with_spectrum(b, d, spectrum(m, 2, kappa=30.0, gap=0.05)).requires_grad_()
    run(backend, x, 2).backward()
    oracle = x.detach().double().requires_grad_()
    svd_penalty(oracle, 2).backward()
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad.double(), oracle.grad, rtol=0, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    # Each check runs the op twice per input element: the interpreter gets 2 × 3 inputs.
    batch, b, d = (1, 2, 3) if backend == "triton" else (2, 3, 4)
    with tltorch_ext.set_backend(backend):
        for shape in ((batch, b, d), (d, b)):
            x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
            assert torch.autograd.gradcheck(lambda t: bss_penalty(t, 1), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x = torch.randn(2, 3, 5)
    with tltorch_ext.set_backend(backend):
        torch.library.opcheck(torch.ops.tltorch_ext.bss_forward, (x, 2))
        torch.library.opcheck(torch.ops.tltorch_ext.bss_forward, (x.mT.contiguous(), 1))
        _, vectors = torch.ops.tltorch_ext.bss_forward(x, 2)
        torch.library.opcheck(torch.ops.tltorch_ext.bss_backward,
                              (torch.randn(2), x, vectors))


def test_module_compiles_fullgraph_and_matches_eager():
    module = BatchSpectralShrinkage(k=3)
    x = torch.randn(10, 17, requires_grad=True)
    eager = module(x)
    compiled = torch.compile(module, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
    (grad_eager,) = torch.autograd.grad(eager, x)
    (grad_compiled,) = torch.autograd.grad(compiled, x)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_gives_a_float32_penalty(backend, dtype):
    b, d = shapes_for(backend)[0]
    x = with_spectrum(b, d, spectrum(min(b, d), 1, kappa=4.0, gap=0.2), dtype=dtype)
    x.requires_grad_()
    got = run(backend, x, 1)
    assert got.dtype == torch.float32
    # The float64 SVD of the same (rounded) matrix.
    assert abs(got.double() - svd_penalty(x.detach(), 1)) <= 1e-4 * svd_penalty(x.detach(), 1)
    got.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    # σ² = 2.5e5 is beyond float16's range (65504): still finite and exact to float32.
    rows = torch.linalg.qr(torch.randn(d, b, dtype=torch.float64))[0].T
    large = (500 * rows).to(dtype)
    torch.testing.assert_close(run(backend, large, 1).double(), svd_penalty(large, 1),
                               rtol=1e-4, atol=0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_input_gives_nan_for_its_matrix_only(backend):
    b, d = shapes_for(backend)[0]
    x = torch.randn(3, b, d)
    x[1, 0, 0] = float("nan")
    x[2, b - 1, d - 1] = float("inf")
    got = run(backend, x, 1)
    assert torch.isnan(got[1]) and torch.isnan(got[2])
    assert abs(got[0].double() - svd_penalty(x[0], 1)) < 1e-4 * svd_penalty(x[0], 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_rank_deficient_matrices_clamp_at_zero(backend):
    b, d = shapes_for(backend)[1]
    zero = torch.zeros(b, d, dtype=torch.float64, requires_grad=True)
    penalty = run(backend, zero, 2)
    assert penalty.item() == 0.0
    penalty.backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))
    # Rank 2 with min(b, d) ≥ 4: the two smallest σ are 0 and their computed σ² must not be < 0.
    generator = torch.Generator().manual_seed(1)
    low_rank = (torch.randn(b, 2, dtype=torch.float64, generator=generator)
                @ torch.randn(2, d, dtype=torch.float64, generator=generator))
    penalty = run(backend, low_rank, 2)
    assert 0.0 <= penalty.item() <= 1e-12 * low_rank.square().sum().item()


def test_triton_falls_back_to_eigh_beyond_the_jacobi_size(monkeypatch):
    if "triton" not in BACKENDS:
        pytest.skip("Triton is not available")
    from tltorch_ext.kernels import bss as triton_bss

    monkeypatch.setattr(triton_bss, "MAX_JACOBI", 3)
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    got = run("triton", x, 2)
    torch.testing.assert_close(got, svd_penalty(x.detach(), 2), rtol=1e-10, atol=0)
    got.sum().backward()
    oracle = x.detach().clone().requires_grad_()
    svd_penalty(oracle, 2).sum().backward()
    torch.testing.assert_close(x.grad, oracle.grad, rtol=1e-9, atol=1e-9)


def test_triton_jacobi_over_several_row_tiles(monkeypatch):
    # Tiles of 2 rows: each round and each replay step loops over 4 tiles of the 8 × 8 buffers.
    if "triton" not in BACKENDS:
        pytest.skip("Triton is not available")
    from tltorch_ext.kernels import bss as triton_bss

    monkeypatch.setattr(triton_bss, "_TILE_ELEMENTS", 16)
    x = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)
    got = run("triton", x, 3)
    torch.testing.assert_close(got, svd_penalty(x.detach(), 3), rtol=1e-10, atol=0)
    got.backward()
    oracle = x.detach().clone().requires_grad_()
    svd_penalty(oracle, 3).backward()
    torch.testing.assert_close(x.grad, oracle.grad, rtol=1e-9, atol=1e-9)


def test_non_contiguous_input():
    x = torch.randn(11, 6, dtype=torch.float64)
    torch.testing.assert_close(bss_penalty(x.T, 2), bss_penalty(x.T.contiguous(), 2))


def test_bad_input():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= min\(b, d\) = 4"):
        bss_penalty(x, 5)
    with pytest.raises(ValueError, match="got k=0"):
        bss_penalty(x, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        bss_penalty(x, 1.0)
    with pytest.raises(ValueError,
                       match=r"feature must be \(b, d\) or \(n, b, d\), got shape \(6,\)"):
        bss_penalty(torch.randn(6), 1)
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 4, 6\)"):
        bss_penalty(torch.randn(1, 2, 4, 6), 1)
    with pytest.raises(TypeError, match="feature must be float16, bfloat16, float32 or float64"):
        bss_penalty(torch.ones(4, 6, dtype=torch.int64), 1)
    with pytest.raises(TypeError, match="feature must be a torch.Tensor"):
        bss_penalty([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match=r"min\(b, d\) = 0"):
        bss_penalty(torch.randn(0, 6), 1)


def test_module_arguments_and_state():
    module = BatchSpectralShrinkage(k=2)
    assert repr(module) == "BatchSpectralShrinkage(k=2)"
    assert module.state_dict() == {}
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    torch.testing.assert_close(module(x), svd_penalty(x, 2))
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        BatchSpectralShrinkage(k=0)
    with pytest.raises(TypeError, match="k must be an int, got float"):
        BatchSpectralShrinkage(k=1.5)
    with pytest.raises(ValueError, match=r"min\(b, d\) = 2"):
        BatchSpectralShrinkage(k=3)(torch.randn(2, 9))


# ---- CUDA: run on a machine with a GPU ------------------------------------------------------
GPU_SHAPES = [(32, 512), (512, 32), (64, 64), (127, 301), (250, 700), (256, 2048), (300, 900)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_cuda_float32_within_1e4_of_float64_svd(backend, shape):
    # 250 > the 236 a packed float64 Gram fits in H100 shared memory (global workspace path);
    # 300 > 256 (the eigh fallback).
    b, d = shape
    m = min(b, d)
    for k in sorted({1, 4, m // 2, m}):
        x = with_spectrum(b, d, spectrum(m, k, kappa=1e3, gap=1.5e-3), seed=k).cuda()
        want = svd_penalty(x.cpu(), k)
        got = run(backend, x, k).cpu()
        assert abs(got.double() - want) / want < 1e-4, (k, got.item(), want.item())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_batched_gradient_matches_svd(backend, dtype):
    x = torch.randn(5, 48, 200, dtype=torch.float64).to(dtype)
    weights = torch.randn(5, dtype=torch.float64).to(dtype)
    for feature in (x, x.mT.contiguous()):  # b < d and b > d
        oracle = feature.double().requires_grad_()
        (svd_penalty(oracle, 3) * weights.double()).sum().backward()
        ours = feature.cuda().requires_grad_()
        got = run(backend, ours, 3)
        assert got.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
        (got * weights.cuda()).sum().backward()
        # bfloat16: only the rounding of the gradient itself (8 bits) is left.
        tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 1e-2}[dtype]
        assert (ours.grad.double().cpu() - oracle.grad).abs().max() <= tol * oracle.grad.abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_nan_and_opcheck(backend):
    x = torch.randn(3, 20, 40, device="cuda")
    x[1, 3, 5] = float("nan")
    got = run(backend, x, 2)
    assert torch.isnan(got[1]) and torch.isfinite(got[0]) and torch.isfinite(got[2])
    with tltorch_ext.set_backend(backend):
        torch.library.opcheck(torch.ops.tltorch_ext.bss_forward, (x[[0, 2]], 2))
