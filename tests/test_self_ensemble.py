"""Self-ensembling: consistency losses, class balance, EMA teacher, confidence mask."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tltorch_ext.adaptation import (
    ClassBalanceLoss,
    ConsistencyLoss,
    EmaTeacher,
    L2ConsistencyLoss,
    confidence_mask,
)

Y = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])
Y_TEACHER = torch.tensor([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7]])
# Squared L2 per sample: 0.01 + 0.01, 0.25 + 0.25, 0.


# ---------------------------------------------------------------- consistency
@pytest.mark.parametrize(
    "mask, reduction, expected",
    [
        (None, "none", [0.02, 0.5, 0.0]),
        (None, "mean", 0.52 / 3),
        (None, "sum", 0.52),
        (torch.tensor([True, False, True]), "none", [0.02, 0.0, 0.0]),
        (torch.tensor([True, False, True]), "mean", 0.02 / 3),
        (torch.tensor([1.0, 0.0, 1.0]), "sum", 0.02),
        (torch.tensor([0.5, 1.0, 1.0]), "none", [0.01, 0.5, 0.0]),
        (torch.tensor([0.5, 1.0, 1.0]), "mean", 0.51 / 3),
        (torch.tensor([0.5, 1.0, 1.0]), "sum", 0.51),
    ],
)
def test_l2_consistency_hand_values(mask, reduction, expected):
    loss = L2ConsistencyLoss(reduction)(Y, Y_TEACHER, mask)
    assert torch.allclose(loss, torch.tensor(expected), atol=1e-7)


def test_l2_consistency_gradient():
    y = Y.clone().requires_grad_(True)
    mask = torch.tensor([1.0, 0.0, 0.5])
    L2ConsistencyLoss("mean")(y, Y_TEACHER, mask).backward()
    # d/dy of mean_i m_i sum_c (y - t)^2 = 2 m_i (y - t) / N
    assert torch.allclose(y.grad, 2.0 * mask[:, None] * (Y - Y_TEACHER) / 3)


def test_consistency_with_custom_distance_and_half_precision():
    def kl(y, y_teacher):  # per-sample KL(teacher || student) on logits
        return F.kl_div(y.log_softmax(1), y_teacher.log_softmax(1), log_target=True,
                        reduction="none").sum(1)

    y, y_teacher = torch.randn(5, 4), torch.randn(5, 4)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    expected = (kl(y.double(), y_teacher.double()) * mask.double()).sum()
    loss = ConsistencyLoss(kl, "sum")(y, y_teacher, mask)
    assert torch.allclose(loss.double(), expected, rtol=1e-5)
    half = L2ConsistencyLoss()(y.bfloat16(), y_teacher.bfloat16(), mask.bool())
    assert half.dtype == torch.bfloat16
    full = L2ConsistencyLoss()(y, y_teacher, mask)
    assert abs(half.item() - full.item()) < 2e-2 * full.item()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: L2ConsistencyLoss()(Y, Y_TEACHER, torch.ones(2)), ValueError,
         r"mask must have shape \(3,\)"),
        (lambda: L2ConsistencyLoss()(Y, Y_TEACHER, torch.ones(3, 1)), ValueError,
         r"mask must have shape \(3,\)"),
        (lambda: L2ConsistencyLoss()(Y, Y_TEACHER, torch.ones(3, dtype=torch.long)), TypeError,
         "mask must have a floating or bool dtype"),
        (lambda: L2ConsistencyLoss("batchmean"), ValueError,
         r"reduction must be one of \('none', 'mean', 'sum'\), got 'batchmean'"),
        (lambda: ConsistencyLoss(lambda a, b: a, reduction="max"), ValueError,
         "reduction must be one of"),
        (lambda: ConsistencyLoss("l2"), TypeError, "distance_measure must be callable"),
        (lambda: ConsistencyLoss(lambda a, b: (a - b).square())(Y, Y_TEACHER), ValueError,
         r"one value per sample, shape \(3,\), got \(3, 2\)"),
        (lambda: L2ConsistencyLoss()(Y, Y_TEACHER[:2]), ValueError, "same shape"),
        (lambda: L2ConsistencyLoss()(Y.long(), Y_TEACHER), TypeError,
         "y must be float16, bfloat16, float32 or float64"),
    ],
)
def test_consistency_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- class balance
def test_class_balance_hand_value_and_torch_bce():
    pred = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])  # batch mean (0.4, 0.4, 0.2)
    u = 1.0 / 3
    terms = [u * math.log(p) + (1 - u) * math.log(1 - p) for p in (0.4, 0.4, 0.2)]
    loss = ClassBalanceLoss(3)(pred)
    assert loss.item() == pytest.approx(-sum(terms) / 3, rel=1e-6)
    assert torch.allclose(loss, F.binary_cross_entropy(pred.mean(0), torch.full((3,), u)))


def test_class_balance_is_finite_when_a_class_is_never_predicted():
    pred = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # mean (1, 0, 0): logs clamped at -100
    loss = ClassBalanceLoss(3)(pred)
    assert loss.item() == pytest.approx((200.0 / 3 + 100.0 / 3 + 100.0 / 3) / 3, rel=1e-6)


def test_class_balance_gradient_pushes_towards_uniform():
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.0, 0.5]], requires_grad=True)
    ClassBalanceLoss(3)(logits.softmax(1)).backward()
    # The over-predicted class 0 must lose probability: its logits' gradient is positive.
    assert (logits.grad[:, 0] > 0).all()
    uniform = torch.full((4, 3), 1.0 / 3, requires_grad=True)
    ClassBalanceLoss(3)(uniform).backward()
    assert torch.allclose(uniform.grad, torch.zeros(4, 3), atol=1e-6)


def test_class_balance_half_precision_dtype():
    pred = torch.randn(8, 5).softmax(1)
    half = ClassBalanceLoss(5)(pred.bfloat16())
    assert half.dtype == torch.bfloat16
    assert abs(half.item() - ClassBalanceLoss(5)(pred).item()) < 1e-2


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ClassBalanceLoss(0), ValueError, "num_classes must be a positive int"),
        (lambda: ClassBalanceLoss(3)(torch.rand(4, 2)), ValueError, r"shape \(N >= 1, 3\)"),
        (lambda: ClassBalanceLoss(3)(torch.rand(3)), ValueError, "pred must have 2 dimensions"),
        (lambda: ClassBalanceLoss(3)(torch.ones(2, 3, dtype=torch.long)), TypeError, "pred must be float16"),
    ],
)
def test_class_balance_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- EMA teacher
def student_with_batchnorm():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    return model


def set_parameters(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_ema_teacher_two_updates_hand_values():
    student = student_with_batchnorm()
    ema = EmaTeacher(student, alpha=0.9)
    assert all(not p.requires_grad for p in ema.teacher.parameters())
    set_parameters(student, 2.0)
    ema.update()  # 0.9 * 1 + 0.1 * 2
    assert all(torch.allclose(p, torch.full_like(p, 1.1)) for p in ema.teacher.parameters())
    set_parameters(student, 5.0)
    ema.update()  # 0.9 * 1.1 + 0.1 * 5
    assert all(torch.allclose(p, torch.full_like(p, 1.49)) for p in ema.teacher.parameters())
    assert all(torch.equal(p, torch.full_like(p, 5.0)) for p in student.parameters())


def test_ema_teacher_copies_buffers_and_runs_the_teacher():
    student = student_with_batchnorm()
    ema = EmaTeacher(student, alpha=0.5)
    student(torch.randn(6, 2))  # training step: the student's BatchNorm statistics move
    assert not torch.equal(ema.teacher[1].running_mean, student[1].running_mean)
    ema.update()
    for name, buffer in student.named_buffers():
        assert torch.equal(ema.teacher.get_buffer(name), buffer), name
    assert int(ema.teacher[1].num_batches_tracked) == 1

    ema.eval()
    assert not ema.teacher.training and student.training  # modes are independent
    x = torch.randn(3, 2)
    assert torch.equal(ema(x), ema.teacher(x))
    student.eval()
    set_parameters(student, 3.0)
    assert not torch.equal(ema(x), student(x))


def test_ema_teacher_alpha_edges():
    student = student_with_batchnorm()
    copier, frozen = EmaTeacher(student, 0.0), EmaTeacher(student, 1.0)
    set_parameters(student, 4.0)
    copier.update()
    frozen.update()
    assert all(torch.equal(p, torch.full_like(p, 4.0)) for p in copier.teacher.parameters())
    assert all(torch.equal(p, torch.full_like(p, 1.0)) for p in frozen.teacher.parameters())


def test_ema_teacher_state_dict_holds_the_teacher_only():
    student = student_with_batchnorm()
    ema = EmaTeacher(student, alpha=0.9)
    set_parameters(student, 2.0)
    ema.update()
    state = ema.state_dict()
    assert set(state) == {f"teacher.{k}" for k in student.state_dict()}
    restored = EmaTeacher(student_with_batchnorm(), alpha=0.9)
    restored.load_state_dict(state)
    assert torch.allclose(restored.teacher[0].weight, torch.full((2, 2), 1.1))


def test_ema_teacher_refuses_mismatched_devices_dtypes_and_architectures():
    student = student_with_batchnorm()
    ema = EmaTeacher(student, alpha=0.9)
    ema.to("meta")
    with pytest.raises(ValueError, match=r"on meta.* on cpu; move the teacher with \.to\(\)"):
        ema.update()
    ema = EmaTeacher(student, alpha=0.9).to(torch.float64)
    with pytest.raises(ValueError, match="torch.float64"):
        ema.update()
    ema = EmaTeacher(student, alpha=0.9)
    student.append(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no longer match the teacher's by name"):
        ema.update()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: EmaTeacher(nn.Linear(2, 2), 1.5), ValueError,
         r"alpha must be a finite number in \[0, 1\]"),
        (lambda: EmaTeacher(lambda x: x, 0.9), TypeError, "model must be an nn.Module"),
    ],
)
def test_ema_teacher_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- confidence mask
def test_confidence_mask_hand_values():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert torch.equal(confidence_mask(probs, 0.8), torch.tensor([True, False, True]))
    assert torch.equal(confidence_mask(probs, 0.0), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"threshold must be a finite number in \[0, 1\]"):
        confidence_mask(probs, 1.5)
    with pytest.raises(ValueError, match="probs must have 2 dimensions"):
        confidence_mask(probs[0], 0.5)


def test_self_ensembling_step_only_trains_the_student_on_confident_samples():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ema = EmaTeacher(student, alpha=0.99)
    x_student, x_teacher = torch.randn(16, 4), torch.randn(16, 4)
    y_student = student(x_student).softmax(1)
    y_teacher = ema(x_teacher).softmax(1)
    mask = confidence_mask(y_teacher, 0.4)
    assert 0 < int(mask.sum()) < 16
    loss = L2ConsistencyLoss()(y_student, y_teacher, mask) + ClassBalanceLoss(3)(y_student)
    loss.backward()
    assert not y_teacher.requires_grad
    assert all(p.grad is None for p in ema.teacher.parameters())
    assert student[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_ema_teacher_and_consistency_on_cuda():
    student = student_with_batchnorm().cuda()
    ema = EmaTeacher(student, alpha=0.9)
    assert ema.teacher[0].weight.device.type == "cuda"
    set_parameters(student, 2.0)
    ema.update()
    assert torch.allclose(ema.teacher[0].weight.cpu(), torch.full((2, 2), 1.1))
    mask = confidence_mask(Y_TEACHER.cuda(), 0.75)
    loss = L2ConsistencyLoss("sum")(Y.cuda(), Y_TEACHER.cuda(), mask)
    assert loss.item() == pytest.approx(0.02 + 0.5, rel=1e-6)
    expected = ClassBalanceLoss(2)(Y).item()
    assert ClassBalanceLoss(2)(Y.cuda()).item() == pytest.approx(expected, rel=1e-6)
