import copy
import math

import pytest
import torch

from tltorch_ext import CRDLoss, ContrastLoss, ContrastMemory, Embed, KDLoss

# ---------------------------------------------------------------------------------------------- KD


def test_kd_matches_hand_computed_kl():
    # Teacher softmax at T=2 of (2 ln 3, 0) is (3/4, 1/4); the student's of (0, 0) is (1/2, 1/2).
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2); the second row is identical in both, KL 0; batch mean /2; ×T².
    teacher = torch.tensor([[2 * math.log(3), 0.0], [1.0, -1.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2
    assert KDLoss(T=2)(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kd_matches_float64_formula_and_grads_only_student():
    student = torch.randn(5, 7, requires_grad=True)
    teacher = torch.randn(5, 7, requires_grad=True)
    loss = KDLoss(T=3.0)(student, teacher)
    p = torch.softmax(teacher.detach().double() / 3, 1)
    log_q = torch.log_softmax(student.detach().double() / 3, 1)
    expected = 9 * (p * (p.log() - log_q)).sum() / 5
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_half_precision_keeps_dtype():
    student, teacher = torch.randn(4, 6), torch.randn(4, 6)
    loss = KDLoss(T=4)(student.bfloat16(), teacher.bfloat16())
    assert loss.dtype == torch.bfloat16
    torch.testing.assert_close(loss.float(), KDLoss(T=4)(student, teacher), rtol=2e-2, atol=1e-3)


def test_kd_bad_input():
    with pytest.raises(ValueError, match="T must be a finite number > 0"):
        KDLoss(T=0)
    kd = KDLoss(T=1)
    with pytest.raises(ValueError, match="same shape"):
        kd(torch.randn(4, 5), torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"student_logits must have shape \(N, C\)"):
        kd(torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="teacher_logits must be a floating-point tensor"):
        kd(torch.randn(4, 5), torch.ones(4, 5, dtype=torch.long))


# --------------------------------------------------------------------------------------------- CRD

N_DATA, S_DIM, T_DIM, FEAT, K = 10, 5, 3, 4, 3


def tiny_crd(**kwargs):
    kwargs = {"feat_dim": FEAT, "nce_k": K, "nce_t": 0.5, "nce_m": 0.5, "n_data": N_DATA, **kwargs}
    return CRDLoss(S_DIM, T_DIM, **kwargs).double()


def tiny_batch():
    f_s = torch.randn(2, S_DIM, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(2, T_DIM, dtype=torch.float64)
    idx = torch.tensor([4, 7])
    contrast_idx = torch.tensor([[4, 0, 9, 7], [7, 7, 2, 2]])  # noise may repeat, even the positive
    return f_s, f_t, idx, contrast_idx


def loop_crd_loss(crd, memory_s, memory_t, f_s, f_t, contrast_idx):
    """Independent float64 formulation, one score at a time. Returns (loss, Z_s, Z_t)."""
    def embed(linear, f):
        y = [sum(linear.weight[o, i].item() * f[i].item() for i in range(f.numel()))
             + linear.bias[o].item() for o in range(linear.out_features)]
        norm = math.sqrt(sum(v * v for v in y))
        return [v / norm for v in y]

    b, t = f_s.shape[0], crd.contrast.nce_t
    total, normalizers = 0.0, []
    sides = ((crd.embed_s.linear, f_s, memory_t), (crd.embed_t.linear, f_t, memory_s))
    for linear, f, bank in sides:
        scores = [[math.exp(sum(a * bank[k, d].item() for d, a in enumerate(embed(linear, f[i])))
                            / t) for k in contrast_idx[i].tolist()] for i in range(b)]
        z = sum(map(sum, scores)) / (b * (K + 1)) * N_DATA
        noise = K / N_DATA
        for row in scores:
            x = [s / z for s in row]
            total -= math.log(x[0] / (x[0] + noise))
            total -= sum(math.log(noise / (xj + noise)) for xj in x[1:])
        normalizers.append(z)
    return total / b, normalizers


def test_crd_matches_float64_loop_with_given_negatives():
    crd = tiny_crd()
    f_s, f_t, idx, contrast_idx = tiny_batch()
    memory_s, memory_t = crd.contrast.memory_s.clone(), crd.contrast.memory_t.clone()
    loss = crd(f_s, f_t, idx, contrast_idx)
    expected, normalizers = loop_crd_loss(crd, memory_s, memory_t, f_s, f_t, contrast_idx)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert crd.contrast.normalizer.tolist() == pytest.approx(normalizers, rel=1e-10)


def test_crd_takes_the_noise_indices_alone_or_after_the_positives():
    f_s, f_t, idx, contrast_idx = tiny_batch()
    with_positives, noise_only = tiny_crd(), tiny_crd()
    noise_only.load_state_dict(with_positives.state_dict())
    expected = with_positives(f_s, f_t, idx, contrast_idx)
    got = noise_only(f_s, f_t, idx, contrast_idx[:, 1:])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(noise_only.contrast.memory_s, with_positives.contrast.memory_s)


def test_crd_normalizer_is_estimated_once():
    crd = tiny_crd()
    f_s, f_t, idx, contrast_idx = tiny_batch()
    crd(f_s, f_t, idx, contrast_idx)
    first = crd.contrast.normalizer.clone()
    memory_s, memory_t = crd.contrast.memory_s.clone(), crd.contrast.memory_t.clone()
    f_s2, f_t2 = 3 * torch.randn_like(f_s), torch.randn_like(f_t)
    loss = crd(f_s2, f_t2, idx, contrast_idx)
    assert torch.equal(crd.contrast.normalizer, first)
    # The loop re-estimates Z from this batch: a different value, so the kept Z must be used.
    fresh, fresh_z = loop_crd_loss(crd, memory_s, memory_t, f_s2, f_t2, contrast_idx)
    assert fresh_z != pytest.approx(first.tolist(), rel=1e-3)
    assert loss.item() != pytest.approx(fresh, rel=1e-6)


def test_crd_gradients_reach_student_and_both_embeddings():
    crd = tiny_crd()
    f_s, f_t, idx, contrast_idx = tiny_batch()
    f_t.requires_grad_(True)
    crd(f_s, f_t, idx, contrast_idx).backward()
    for grad in (f_s.grad, f_t.grad, crd.embed_s.linear.weight.grad, crd.embed_t.linear.weight.grad,
                 crd.embed_s.linear.bias.grad, crd.embed_t.linear.bias.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not crd.contrast.memory_s.requires_grad and not crd.contrast.memory_t.requires_grad


def test_crd_memory_momentum_update():
    crd = tiny_crd(nce_m=0.3)
    f_s, f_t, idx, contrast_idx = tiny_batch()
    before_s, before_t = crd.contrast.memory_s.clone(), crd.contrast.memory_t.clone()
    e_s, e_t = crd.embed_s(f_s).detach(), crd.embed_t(f_t).detach()
    crd(f_s, f_t, idx, contrast_idx)
    others = torch.tensor([i for i in range(N_DATA) if i not in idx.tolist()])
    for bank, before, e in ((crd.contrast.memory_s, before_s, e_s),
                            (crd.contrast.memory_t, before_t, e_t)):
        moved = 0.3 * before[idx] + 0.7 * e
        torch.testing.assert_close(bank[idx], moved / moved.norm(dim=1, keepdim=True))
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(N_DATA, dtype=torch.float64))
        assert torch.equal(bank[others], before[others])
        # Closer to the new embedding than before the update.
        assert ((bank[idx] * e).sum(1) > (before[idx] * e).sum(1)).all()


def test_crd_eval_mode_leaves_memory():
    crd = tiny_crd().eval()
    f_s, f_t, idx, contrast_idx = tiny_batch()
    before = copy.deepcopy(crd.contrast.state_dict())
    crd(f_s, f_t, idx, contrast_idx)
    after = crd.contrast.state_dict()
    assert torch.equal(after["memory_s"], before["memory_s"])
    assert torch.equal(after["memory_t"], before["memory_t"])


def test_crd_banks_start_as_unit_vectors():
    memory = ContrastMemory(feat_dim=16, n_data=50, nce_k=8)
    for bank in (memory.memory_s, memory.memory_t):
        assert bank.shape == (50, 16)
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(50))
    assert not torch.equal(memory.memory_s, memory.memory_t)


def test_crd_explicit_negatives_honoured_and_drawn_ones_use_torch_generator():
    crd = tiny_crd()
    f_s, f_t, idx, contrast_idx = tiny_batch()
    other_idx = contrast_idx.clone()
    other_idx[:, 1:] = torch.tensor([[1, 2, 3], [5, 6, 8]])
    given = copy.deepcopy(crd)(f_s, f_t, idx, contrast_idx)
    changed = copy.deepcopy(crd)(f_s, f_t, idx, other_idx).item()
    assert changed != pytest.approx(given.item(), rel=1e-6)
    torch.manual_seed(123)
    given_again = copy.deepcopy(crd)(f_s, f_t, idx, contrast_idx)
    assert given_again.item() == given.item()  # the generator does not enter when negatives given
    # Drawn negatives: uniform from torch's generator, positive in column 0.
    torch.manual_seed(5)
    drawn = copy.deepcopy(crd)(f_s, f_t, idx)
    torch.manual_seed(5)
    replay_idx = torch.cat([idx[:, None], torch.randint(N_DATA, (2, K))], dim=1)
    assert drawn.item() == copy.deepcopy(crd)(f_s, f_t, idx, replay_idx).item()


def test_crd_state_dict_carries_banks_and_normalizer():
    crd = tiny_crd()
    f_s, f_t, idx, contrast_idx = tiny_batch()
    crd(f_s, f_t, idx, contrast_idx)
    state = crd.state_dict()
    assert {"contrast.memory_s", "contrast.memory_t", "contrast.normalizer"} <= set(state)
    assert state["contrast.normalizer"].min() > 0
    restored = tiny_crd()
    restored.load_state_dict(state)
    assert torch.equal(restored(f_s, f_t, idx, contrast_idx), crd(f_s, f_t, idx, contrast_idx))


def test_crd_default_sizes_bfloat16():
    crd = CRDLoss(32, 48, n_data=20000)  # default feat_dim=128, nce_k=16384
    f_s, f_t, idx = torch.randn(4, 32), torch.randn(4, 48), torch.tensor([0, 5, 19999, 7])
    torch.manual_seed(1)
    reference = copy.deepcopy(crd)(f_s, f_t, idx)
    torch.manual_seed(1)
    low = crd.to(torch.bfloat16)(f_s.bfloat16(), f_t.bfloat16(), idx)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low)
    torch.testing.assert_close(low.float(), reference, rtol=5e-2, atol=0)


def test_contrast_loss_hand_value():
    # One row, K = 1, n_data = 4: noise mass m·Pn = 1/4. x = (1/4, 3/4): P(pos) = 1/2,
    # P(noise | 3/4) = 1/4.
    x = torch.tensor([[0.25, 0.75]])
    expected = -(math.log(0.5) + math.log(0.25))
    assert ContrastLoss(n_data=4)(x).item() == pytest.approx(expected, rel=1e-6)


def test_embed_outputs_unit_rows_and_flattens():
    embed = Embed(12, 5)
    out = embed(torch.randn(3, 3, 2, 2))
    assert out.shape == (3, 5)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_crd_bad_input():
    crd = tiny_crd()
    f_s, f_t, idx, contrast_idx = tiny_batch()
    with pytest.raises(TypeError, match="idx must be an int64 or int32 tensor"):
        crd(f_s, f_t, idx.double(), contrast_idx)
    with pytest.raises(ValueError, match=r"idx values must lie in \[0, n_data=10\)"):
        crd(f_s, f_t, torch.tensor([4, 10]))
    with pytest.raises(ValueError, match=r"idx values must lie in \[0, n_data=10\)"):
        crd(f_s, f_t, torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match=r"idx must have shape \(2,\)"):
        crd(f_s, f_t, torch.tensor([4, 7, 1]))
    with pytest.raises(ValueError, match=r"contrast_idx must have shape \(B, nce_k\) = \(2, 3\) "
                                         r"noise indices or \(2, 4\), got \(2, 2\)"):
        crd(f_s, f_t, idx, contrast_idx[:, :2])
    with pytest.raises(ValueError, match=r"contrast_idx values must lie"):
        crd(f_s, f_t, idx, contrast_idx + 3)
    with pytest.raises(ValueError, match=r"positives first: contrast_idx\[:, 0\] must equal idx"):
        crd(f_s, f_t, idx, contrast_idx.flip(0))
    with pytest.raises(ValueError, match=r"f_s must have shape \(B, 5\)"):
        crd(torch.randn(2, 6, dtype=torch.float64), f_t, idx)
    with pytest.raises(ValueError, match=r"f_t must have shape \(B, 3\)"):
        crd(f_s, torch.randn(2, 4, dtype=torch.float64), idx)
    with pytest.raises(ValueError, match="same batch size"):
        crd(f_s, f_t[:1], idx)
    with pytest.raises(ValueError, match="n_data .* is required"):
        CRDLoss(4, 4)
    with pytest.raises(ValueError, match=r"nce_m must be a finite number in \[0, 1\]"):
        CRDLoss(4, 4, nce_m=1.5, n_data=10)
    with pytest.raises(ValueError, match="nce_k must be a positive int"):
        CRDLoss(4, 4, nce_k=0, n_data=10)
