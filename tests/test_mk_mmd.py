"""Multi-kernel MMD (docs/api_mmd.md): every backend against float64 loop oracles written from
TLlib's formulas (GaussianKernel, MultipleKernelMaximumMeanDiscrepancy and its index matrix,
JointMultipleKernelMaximumMeanDiscrepancy), gradients, gradcheck, opcheck, torch.compile, the
non-negativity of the biased estimate and bad input."""
import math
import pathlib
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tltorch_ext
from op_testing import CPU_BACKENDS, CUDA_BACKENDS, rel_err, tolerances
from tltorch_ext import JointMultipleKernelMMD, MultipleKernelMMD
from tltorch_ext.ops import GaussianKernels, joint_mk_mmd, mk_mmd

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api_mmd.md"
BACKENDS = CPU_BACKENDS
ESTIMATES = ("biased", "unbiased", "linear")
# (B, d): B = 2 (the linear matrix's coinciding entries), odd sizes, and for the compiled
# backend 2B across several 64-row tiles; the interpreter keeps to two 16-row tiles.
SHAPES = {"triton": [(2, 5), (3, 17), (9, 33)]}
DEFAULT_SHAPES = [(2, 5), (3, 17), (9, 33), (40, 70), (70, 19)]
DAN = (0.125, 0.25, 0.5, 1.0, 2.0)


def shapes_for(backend):
    return SHAPES.get(backend, DEFAULT_SHAPES)


# ---- the oracle: TLlib's formulas as loops, float64 -------------------------------------------
def tllib_kernel_matrix(x, alphas=(), sigmas=()):
    """Σ over kernels of exp(−‖x_i − x_j‖² / (2σ²)); σ² = α · mean of all n² squared distances
    (detached) or a fixed σ²; the distances by broadcasting, as TLlib's GaussianKernel."""
    x = x.double().flatten(1)
    d = ((x.unsqueeze(0) - x.unsqueeze(1)) ** 2).sum(2)
    total = torch.zeros_like(d)
    for alpha in alphas:
        total = total + torch.exp(-d / (2 * alpha * d.detach().mean()))
    for sigma in sigmas:
        total = total + torch.exp(-d / (2 * sigma**2))
    return total


def tllib_index_matrix(batch, linear):
    """TLlib's _update_index_matrix, entry by entry."""
    w = torch.zeros(2 * batch, 2 * batch, dtype=torch.float64)
    if linear:
        for i in range(batch):
            s1, s2 = i, (i + 1) % batch
            t1, t2 = s1 + batch, s2 + batch
            w[s1, s2] = 1 / batch
            w[t1, t2] = 1 / batch
            w[s1, t2] = -1 / batch
            w[s2, t1] = -1 / batch
        return w
    for i in range(batch):
        for j in range(batch):
            if i != j:
                w[i, j] = w[i + batch, j + batch] = 1 / (batch * (batch - 1))
            w[i, j + batch] = w[i + batch, j] = -1 / batch**2
    return w


def oracle(sources, targets, layer_kernels, estimate, offset=False):
    """TLlib's (J)MK-MMD for "unbiased"/"linear" (with its 2/(B−1) when ``offset``); for
    "biased" the V-statistic mean K_ss + mean K_tt − 2 mean K_st over whole blocks."""
    batch = sources[0].shape[0]
    k = 1
    for z_s, z_t, (alphas, sigmas) in zip(sources, targets, layer_kernels):
        k = k * tllib_kernel_matrix(torch.cat([z_s, z_t]), alphas, sigmas)
    if estimate == "biased":
        s, t = slice(0, batch), slice(batch, 2 * batch)
        value = k[s, s].mean() + k[t, t].mean() - 2 * k[s, t].mean()
    else:
        value = (k * tllib_index_matrix(batch, estimate == "linear")).sum()
    return value + (2 / (batch - 1) if offset else 0)


def run(backend, fn, *args, **kwargs):
    with tltorch_ext.set_backend(backend):
        return fn(*args, **kwargs)


def domains(batch, dim, dtype=torch.float64, shift=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z_s = torch.randn(batch, dim, dtype=torch.float64, generator=generator)
    z_t = torch.randn(batch, dim, dtype=torch.float64, generator=generator) * 1.2 + shift
    return z_s.to(dtype), z_t.to(dtype)


def grads_of(value, *inputs):
    return torch.autograd.grad(value, inputs)


# ---- values and gradients against the oracle ---------------------------------------------------
@pytest.mark.parametrize("estimate", ESTIMATES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_value_and_gradient_match_the_oracle(backend, estimate):
    for batch, dim in shapes_for(backend):
        z_s, z_t = domains(batch, dim, seed=batch * dim)
        ours = [z.clone().requires_grad_() for z in (z_s, z_t)]
        got = run(backend, mk_mmd, *ours, estimate=estimate)
        ref_in = [z.clone().requires_grad_() for z in (z_s, z_t)]
        want = oracle([ref_in[0]], [ref_in[1]], [(DAN, ())], estimate)
        assert got.dtype == torch.float64 and got.shape == ()
        assert abs(got.item() - want.item()) <= 1e-12 * max(1.0, abs(want.item())), (batch, dim)
        for g, r in zip(grads_of(got, *ours), grads_of(want, *ref_in)):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("estimate", ESTIMATES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_joint_two_layers_match_the_oracle(backend, estimate):
    # JAN's layout: features with DAN's relative bandwidths, softmax outputs with a fixed σ, and
    # a third layer mixing both kinds.
    kernels = [(DAN, ()), ((), (0.92,)), ((1.0,), (2.0, 3.0))]
    for batch, dim in shapes_for(backend)[:2]:
        f_s, f_t = domains(batch, dim, seed=3)
        p_s, p_t = (x.softmax(1) for x in domains(batch, 4, seed=4))
        h_s, h_t = domains(batch, 3, seed=5)
        layers = [f_s, p_s, h_s, f_t, p_t, h_t]
        ours = [z.clone().requires_grad_() for z in layers]
        specs = [GaussianKernels(a, s) for a, s in kernels]
        got = run(backend, joint_mk_mmd, ours[:3], ours[3:], specs, estimate=estimate)
        ref_in = [z.clone().requires_grad_() for z in layers]
        want = oracle(ref_in[:3], ref_in[3:], kernels, estimate)
        assert abs(got.item() - want.item()) <= 1e-12 * max(1.0, abs(want.item()))
        for g, r in zip(grads_of(got, *ours), grads_of(want, *ref_in)):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lower_precision_against_float64(backend, dtype):
    bounds = tolerances(float32=1e-5, bfloat16=1e-2, float16=2e-3)
    batch, dim = shapes_for(backend)[-1]
    z_s, z_t = (z.to(dtype) for z in domains(batch, dim))
    for estimate in ESTIMATES:
        ours = [z.clone().requires_grad_() for z in (z_s, z_t)]
        got = run(backend, mk_mmd, *ours, estimate=estimate)
        assert got.dtype == dtype
        ref_in = [z.double().requires_grad_() for z in (z_s, z_t)]
        want = oracle([ref_in[0]], [ref_in[1]], [(DAN, ())], estimate)
        # The loss is rounded to the input dtype at the end.
        assert rel_err(got, want) <= bounds[dtype] + torch.finfo(dtype).eps, estimate
        for g, r in zip(grads_of(got, *ours), grads_of(want, *ref_in)):
            assert g.dtype == dtype
            assert rel_err(g, r) <= 4 * bounds[dtype] + torch.finfo(dtype).eps, estimate


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_across_many_tiles_matches_the_reference(threads):
    # 2B = 300 rows: three 128-wide column tiles (the last one partial) and several row blocks in
    # both directions, on one thread and on two (the backward's row blocks follow the count).
    if "cpu" not in BACKENDS:
        pytest.skip("no compiled CPU kernels")
    z_s, z_t = domains(150, 40, seed=7)
    p_s, p_t = (x.softmax(1) for x in domains(150, 6, seed=8))
    layers = [z_s, p_s, z_t, p_t]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for estimate in ("biased", "unbiased"):
            values, grads = [], []
            for backend in ("cpu", "reference"):
                inputs = [z.clone().requires_grad_() for z in layers]
                value = run(backend, joint_mk_mmd, inputs[:2], inputs[2:], estimate=estimate)
                values.append(value)
                grads.append(grads_of(value, *inputs))
            assert abs(values[0].item() - values[1].item()) <= 1e-12 * max(1.0, abs(values[1]))
            for g, r in zip(*grads):
                torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_large_common_offset_keeps_float32_accuracy(backend):
    # The distances come from centred rows, so an offset of 1e3 over unit spread costs nothing
    # (uncentred, the Gram trick would lose ~6 of float32's 7 digits).
    batch, dim = shapes_for(backend)[-1]
    z_s, z_t = domains(batch, dim)
    z_s, z_t = z_s + 1e3, z_t + 1e3
    for estimate in ESTIMATES:
        got = run(backend, mk_mmd, z_s.float(), z_t.float(), estimate=estimate)
        want = oracle([z_s.float().double()], [z_t.float().double()], [(DAN, ())], estimate)
        assert rel_err(got, want) < 1e-4, estimate


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_flatten_and_fixed_sigmas(backend):
    z_s, z_t = domains(4, 12)
    got = run(backend, mk_mmd, z_s.view(4, 3, 4), z_t.view(4, 3, 4), alphas=(), sigmas=(1.5, 4.0),
              estimate="unbiased")
    torch.testing.assert_close(got, oracle([z_s], [z_t], [((), (1.5, 4.0))], "unbiased"),
                               rtol=1e-12, atol=0)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(backend=st.sampled_from(BACKENDS), dtype=st.sampled_from([torch.float64, torch.float32,
                                                                 torch.bfloat16]),
       estimate=st.sampled_from(ESTIMATES), batch=st.integers(2, 12), dim=st.integers(1, 20),
       layers=st.integers(1, 3), strided=st.booleans(), seed=st.integers(0, 2**16))
def test_random_cases_agree_with_the_float64_reference(backend, dtype, estimate, batch, dim,
                                                       layers, strided, seed):
    # Sizes, layer counts, layouts (strided views are copied by the op) and dtypes drawn at
    # random; the float64 side is the reference on the same (rounded) values. The estimates can
    # be near 0, so the value is compared against the kernel scale Π_l (kernel count) instead.
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, dim + 3 * l) for l in range(layers)]
    raw = [torch.randn(2, *shape, generator=generator, dtype=torch.float64) for shape in shapes]
    leaves = [(x[0], x[1] + 0.4) for x in raw]
    kernels = [GaussianKernels(DAN[: 1 + l * 2], (1.5,) if l else ()) for l in range(layers)]
    scale = math.prod(k.count for k in kernels)
    results = []
    for name, as_type in ((backend, dtype), ("reference", torch.float64)):
        inputs = [z.to(dtype).to(as_type) for pair in leaves for z in pair]
        if strided:
            inputs = [torch.cat([z, z], 1)[:, ::2] for z in inputs]
        inputs = [z.detach().requires_grad_() for z in inputs]
        with tltorch_ext.set_backend(name):
            value = joint_mk_mmd(inputs[::2], inputs[1::2], kernels, estimate=estimate)
        results.append((value, torch.cat([g.flatten() for g in grads_of(value, *inputs)])))
    (got, grad), (want, want_grad) = results
    bound = tolerances(float32=1e-5, bfloat16=1e-2, float16=2e-3)[dtype]
    assert abs(got.double() - want).item() <= bound * scale
    assert (grad.double() - want_grad).norm() <= 4 * bound * max(want_grad.norm(), 1e-3 * scale)


# ---- TLlib's constant and the guarantee ------------------------------------------------------
def test_tllib_offset_reproduces_tllibs_value():
    z_s, z_t = domains(6, 10)
    for estimate in ("unbiased", "linear"):
        got = mk_mmd(z_s, z_t, estimate=estimate, tllib_offset=True)
        want = oracle([z_s], [z_t], [(DAN, ())], estimate, offset=True)
        assert got.item() == pytest.approx(want.item(), rel=1e-12)
    p_s, p_t = (x.softmax(1) for x in domains(6, 3, seed=1))
    got = joint_mk_mmd([z_s, p_s], [z_t, p_t], estimate="linear", tllib_offset=True)
    want = oracle([z_s, p_s], [z_t, p_t], [(DAN, ()), ((), (0.92,))], "linear", offset=True)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def test_what_tllibs_constant_is():
    # TLlib = U + 2/(B−1) = V + (P_ss + P_tt)/(B−1) − 2(m−1)/(B−1), P the block means of K
    # (diagonal included) and m = K_ii the kernel count: for m = 1 it adds back the diagonal with
    # the off-diagonal weight (and TLlib ≥ V ≥ 0); for m = 5 it falls short by 8/(B−1).
    batch = 7
    z_s, z_t = domains(batch, 9)
    for alphas in ((1.0,), DAN):
        m = len(alphas)
        k = tllib_kernel_matrix(torch.cat([z_s, z_t]), alphas)
        s, t = slice(0, batch), slice(batch, 2 * batch)
        p_ss, p_tt = k[s, s].mean(), k[t, t].mean()
        tllib = oracle([z_s], [z_t], [(alphas, ())], "unbiased", offset=True)
        biased = oracle([z_s], [z_t], [(alphas, ())], "biased")
        assert tllib.item() == pytest.approx(
            (biased + (p_ss + p_tt) / (batch - 1) - 2 * (m - 1) / (batch - 1)).item(), rel=1e-12)
        if m == 1:
            assert tllib >= biased >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_biased_is_never_negative_where_unbiased_and_tllib_are(backend):
    # Source and target from one distribution: MMD² = 0, and the unbiased, linear and TLlib
    # estimates scatter around (TLlib's below) it; the biased one is a squared norm.
    seen = {"unbiased": 0, "linear": 0, "tllib": 0}
    for seed in range(12):
        z_s, z_t = domains(5, 8, shift=0.0, seed=seed)
        z_t = z_t / 1.2
        assert run(backend, mk_mmd, z_s, z_t, estimate="biased").item() >= 0
        for estimate in ("unbiased", "linear"):
            seen[estimate] += run(backend, mk_mmd, z_s, z_t, estimate=estimate).item() < 0
        seen["tllib"] += mk_mmd(z_s, z_t, estimate="unbiased", tllib_offset=True).item() < 0
        p_s, p_t = (x.softmax(1) for x in domains(5, 3, shift=0.0, seed=seed + 100))
        assert run(backend, joint_mk_mmd, [z_s, p_s], [z_t, p_t]).item() >= 0
    assert all(count > 0 for count in seen.values()), seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_domains_give_zero(backend):
    z = torch.randn(6, 10)
    assert run(backend, mk_mmd, z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    same = torch.ones(4, 3)  # every distance 0: no bandwidth (TLlib's would be 0/0)
    for estimate in ESTIMATES:
        value = run(backend, mk_mmd, same, same.clone(), estimate=estimate)
        assert value.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_features_give_nan(backend):
    z_s, z_t = domains(4, 6)
    z_s[1, 2] = float("nan")
    for estimate in ESTIMATES:
        assert run(backend, mk_mmd, z_s, z_t, estimate=estimate).isnan()


# ---- autograd, opcheck, compile ----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    # Fixed bandwidths: the relative ones follow the batch but carry no gradient by design,
    # which finite differences would see.
    z_s, z_t = domains(3, 4)
    p_s, p_t = (x.softmax(1) for x in domains(3, 2, seed=1))
    inputs = [z.clone().requires_grad_() for z in (z_s, z_t, p_s, p_t)]
    kernels = [GaussianKernels(sigmas=(1.0, 2.5)), GaussianKernels(sigmas=(0.5,))]
    with tltorch_ext.set_backend(backend):
        for estimate in ESTIMATES:
            if backend != "triton":  # the interpreter: one layer is the joint form's special case
                assert torch.autograd.gradcheck(
                    lambda a, b: mk_mmd(a, b, alphas=(), sigmas=(1.0, 2.5), estimate=estimate),
                    inputs[:2])
            assert torch.autograd.gradcheck(
                lambda a, b, c, d: joint_mk_mmd([a, c], [b, d], kernels, estimate=estimate),
                inputs)


def op_inputs(dtype=torch.float32):
    z = torch.randn(6, 5, dtype=dtype)
    p = torch.randn(6, 3, dtype=dtype).softmax(1)
    centers = [z.mean(0, dtype=torch.float32), p.mean(0, dtype=torch.float32)]
    gammas = torch.tensor([0.1, 0.4, 2.0], dtype=torch.float64)
    return [z, p], centers, gammas, [2, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    features, centers, gammas, kernels = op_inputs()
    with tltorch_ext.set_backend(backend):
        for estimate in ESTIMATES:
            torch.library.opcheck(torch.ops.tltorch_ext.mk_mmd_forward,
                                  ([features[0]], [centers[0]], gammas[:2], [2], estimate))
            torch.library.opcheck(torch.ops.tltorch_ext.mk_mmd_forward,
                                  (features, centers, gammas, kernels, estimate))
            torch.library.opcheck(torch.ops.tltorch_ext.mk_mmd_backward,
                                  (torch.tensor(0.7), features, centers, gammas, kernels,
                                   estimate))


@pytest.mark.parametrize("module", [MultipleKernelMMD(), JointMultipleKernelMMD(estimate="linear")])
def test_module_compiles_fullgraph_and_matches_eager(module):
    z_s, z_t = (z.float().requires_grad_() for z in domains(8, 16))
    p_s, p_t = (z.float().softmax(1).detach().requires_grad_() for z in domains(8, 5, seed=1))
    args = (z_s, z_t) if isinstance(module, MultipleKernelMMD) else ([z_s, p_s], [z_t, p_t])
    eager = module(*args)
    compiled = torch.compile(module, fullgraph=True)(*args)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(torch.autograd.grad(compiled, z_s), torch.autograd.grad(eager, z_s))


def test_modules_equal_the_functions_and_have_no_state():
    z_s, z_t = domains(5, 7)
    p_s, p_t = (x.softmax(1) for x in domains(5, 3, seed=2))
    module = MultipleKernelMMD(alphas=(0.5, 1.0), estimate="unbiased", tllib_offset=True)
    assert module.state_dict() == {}
    assert "estimate='unbiased'" in repr(module)
    torch.testing.assert_close(module(z_s, z_t), mk_mmd(z_s, z_t, alphas=(0.5, 1.0),
                                                        estimate="unbiased", tllib_offset=True))
    joint = JointMultipleKernelMMD()
    torch.testing.assert_close(joint([z_s, p_s], [z_t, p_t]),
                               joint_mk_mmd([z_s, p_s], [z_t, p_t]))


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_input():
    z = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"source and target must have the same shape .*\(4, 6\) "
                                         r"and \(5, 6\)"):
        mk_mmd(z, torch.randn(5, 6))
    with pytest.raises(ValueError, match="source must hold B >= 2 samples"):
        mk_mmd(z[:1], z[:1])
    with pytest.raises(ValueError, match=r"source must be \(B, \*\)"):
        mk_mmd(z[0], z[1])
    with pytest.raises(ValueError, match="at least one feature"):
        mk_mmd(torch.randn(4, 0), torch.randn(4, 0))
    with pytest.raises(TypeError, match="target must be float16, bfloat16, float32 or float64"):
        mk_mmd(z, z.long())
    with pytest.raises(TypeError, match="target is torch.float64 but source is torch.float32"):
        mk_mmd(z, z.double())
    with pytest.raises(ValueError, match="target is on meta but source is on cpu"):
        mk_mmd(z, z.to("meta"))
    with pytest.raises(ValueError, match="estimate must be one of"):
        mk_mmd(z, z, estimate="quadratic")
    with pytest.raises(ValueError, match="alphas must be finite and > 0"):
        mk_mmd(z, z, alphas=(1.0, 0.0))
    with pytest.raises(ValueError, match="at least one kernel"):
        mk_mmd(z, z, alphas=())
    with pytest.raises(TypeError, match="sigmas must be a sequence of numbers"):
        mk_mmd(z, z, sigmas=0.9)
    with pytest.raises(TypeError, match="tllib_offset must be a bool"):
        mk_mmd(z, z, tllib_offset=1)
    p = torch.randn(4, 3)
    with pytest.raises(ValueError, match="sources and targets must hold as many layers"):
        joint_mk_mmd([z, p], [z])
    with pytest.raises(ValueError, match="one GaussianKernels per layer: 2 layers, 1"):
        joint_mk_mmd([z, p], [z, p], [GaussianKernels(alphas=(1.0,))])
    with pytest.raises(ValueError, match=r"source\[1\] has batch 3 but source\[0\] has 4"):
        joint_mk_mmd([z, p[:3]], [z, p[:3]])
    with pytest.raises(TypeError, match="sequences of tensors"):
        joint_mk_mmd(z, z)
    with pytest.raises(TypeError, match=r"kernels\[1\] must be a GaussianKernels"):
        joint_mk_mmd([z, p], [z, p], [GaussianKernels(alphas=(1.0,)), (0.92,)])
    with pytest.raises(ValueError, match="estimate must be one of"):
        MultipleKernelMMD(estimate="tllib")


def test_docs_examples_run():
    """Every python block of docs/api_mmd.md runs."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})


# ---- CUDA: run on a machine with a GPU ------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("shape", [(32, 256), (100, 70), (256, 2048)])
def test_cuda_matches_the_float64_oracle(backend, shape):
    batch, dim = shape
    z_s, z_t = domains(batch, dim)
    p_s, p_t = (x.softmax(1) for x in domains(batch, 10, seed=1))
    for dtype, bound in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        for estimate in ESTIMATES:
            ours = [z.to("cuda", dtype).requires_grad_() for z in (z_s, z_t, p_s, p_t)]
            got = run(backend, joint_mk_mmd, ours[::2], ours[1::2], estimate=estimate)
            ref_in = [z.to(dtype).double().requires_grad_() for z in (z_s, z_t, p_s, p_t)]
            want = oracle(ref_in[::2], ref_in[1::2], [(DAN, ()), ((), (0.92,))], estimate)
            assert rel_err(got.cpu(), want) < bound, (dtype, estimate)
            for g, r in zip(grads_of(got, *ours), grads_of(want, *ref_in)):
                assert rel_err(g.cpu(), r) < 10 * bound, (dtype, estimate)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_opcheck(backend):
    features, centers, gammas, kernels = op_inputs()
    features = [z.cuda() for z in features]
    centers = [c.cuda() for c in centers]
    with tltorch_ext.set_backend(backend):
        for estimate in ESTIMATES:
            torch.library.opcheck(torch.ops.tltorch_ext.mk_mmd_forward,
                                  (features, centers, gammas.cuda(), kernels, estimate))
