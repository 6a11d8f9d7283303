"""One table of bad input for every public name: a new public name fails
test_every_public_name_has_bad_input_cases until its cases are added here.

The library's rule (README, "Bad and degenerate input"): a wrong type is a TypeError and a wrong
value, shape or device a ValueError, each naming the argument; a loss refuses an empty batch (its
mean over no samples has no value) and a temperature that is not finite and positive; per-sample
outputs (confidence_mask, PrototypicalNetwork's query logits, StochNorm in eval mode) of an empty
batch are empty, as in PyTorch.
"""
import inspect
import math

import pytest
import torch
from torch import nn

import tltorch_ext as tl
from tltorch_ext import bi_tuning, co_tuning, lwf, strategies

E = torch.empty
LONG = torch.long


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def labelled(labels):
    return [(torch.randn(len(labels), 1, 6, 6), torch.tensor(labels))]


def discriminator_loss():
    return tl.DomainAdversarialLoss(tl.DomainDiscriminator(4, 8))


def cdan_loss(**kwargs):
    return tl.ConditionalDomainAdversarialLoss(tl.DomainDiscriminator(6, 8), **kwargs)


def mdd_call(y_s=None, y_t=None):
    y = torch.randn(2, 3)
    y_s, y_t = (y if y_s is None else y_s), (y if y_t is None else y_t)
    return tl.MarginDisparityDiscrepancy()(y_s, y, y, y_t)


def bi_tuning_classifier():
    return bi_tuning.Classifier(nn.Flatten(), 3, projection_dim=4, features_dim=8)


# name -> [(call, exception, message regex)]; every call must raise exactly that.
BAD_INPUT = {
    "available_backends": [
        (lambda: tl.available_backends("tpu"), ValueError, "device must be"),
    ],
    "explain_backend": [
        (lambda: tl.explain_backend("svd"), ValueError, "op must be one of"),
        (lambda: tl.explain_backend("bss", "tpu"), ValueError, "device must be"),
    ],
    "get_backend": [],  # takes no argument
    "set_backend": [
        (lambda: tl.set_backend("fast"), ValueError, "backend"),
    ],
    "grad_reverse": [
        (lambda: tl.grad_reverse(torch.ones(2, dtype=LONG)), TypeError, "x must be float16"),
        (lambda: tl.grad_reverse(torch.ones(2), "1"), TypeError, "coeff"),
    ],
    "GradientReverseLayer": [
        (lambda: tl.GradientReverseLayer()([1.0]), TypeError, "x must be a torch.Tensor"),
    ],
    "WarmStartGradientReverseLayer": [
        (lambda: tl.WarmStartGradientReverseLayer(max_iters=0), ValueError, "max_iters"),
        (lambda: tl.WarmStartGradientReverseLayer(alpha=math.inf), ValueError, "alpha"),
    ],
    "DomainDiscriminator": [
        (lambda: tl.DomainDiscriminator(0, 8), ValueError, "in_feature"),
        (lambda: tl.DomainDiscriminator(4, 8, out_features=3), ValueError, "out_features"),
    ],
    "DomainAdversarialLoss": [
        (lambda: tl.DomainAdversarialLoss(None), TypeError, "domain_discriminator"),
        (lambda: discriminator_loss()(E(0, 4), E(0, 4)), ValueError, "at least one sample"),
        (lambda: discriminator_loss()(torch.ones(2, 4, dtype=LONG), torch.ones(2, 4)),
         TypeError, "f_s must be float16"),
    ],
    "MultiLinearMap": [
        (lambda: tl.MultiLinearMap()(torch.ones(2, 3), torch.ones(3, 2)), ValueError,
         "same number of samples"),
        (lambda: tl.MultiLinearMap()(torch.ones(2, 3, dtype=LONG), torch.ones(2, 2)), TypeError,
         "f must be float16"),
    ],
    "RandomizedMultiLinearMap": [
        (lambda: tl.RandomizedMultiLinearMap(0, 3), ValueError, "features_dim"),
        (lambda: tl.RandomizedMultiLinearMap(4, 3, output_dim=2.0), TypeError, "output_dim"),
        (lambda: tl.RandomizedMultiLinearMap(4, 3, 8)(torch.ones(2, 5), torch.ones(2, 3)),
         ValueError, r"f must have shape \(N, 4\)"),
    ],
    "ConditionalDomainAdversarialLoss": [
        (lambda: tl.ConditionalDomainAdversarialLoss(None), TypeError, "discriminator"),
        (lambda: cdan_loss(randomized=True, num_classes=3), ValueError, "features_dim"),
        (lambda: cdan_loss(reduction="avg"), ValueError, "reduction"),
        (lambda: cdan_loss()(E(0, 3), E(0, 2), E(0, 3), E(0, 2)), ValueError,
         "f_s must hold at least one sample"),
        (lambda: cdan_loss()(torch.ones(2, 3), torch.ones(2, 2), torch.ones(2, 4),
                             torch.ones(2, 2)), ValueError, "number of classes"),
        (lambda: cdan_loss()(torch.ones(2, 3, dtype=LONG), torch.ones(2, 2), torch.ones(2, 3),
                             torch.ones(2, 2)), TypeError, "g_s must be float16"),
    ],
    "MinimumClassConfusionLoss": [
        (lambda: tl.MinimumClassConfusionLoss(temperature=0.0), ValueError, "temperature"),
        (lambda: tl.MinimumClassConfusionLoss(temperature=math.inf), ValueError, "temperature"),
        (lambda: tl.MinimumClassConfusionLoss()(E(0, 3)), ValueError, "logits must hold"),
        (lambda: tl.MinimumClassConfusionLoss()(torch.ones(2, 3, dtype=LONG)), TypeError,
         "logits must be float16"),
    ],
    "MarginDisparityDiscrepancy": [
        (lambda: tl.MarginDisparityDiscrepancy(margin=-1.0), ValueError, "margin"),
        (lambda: tl.MarginDisparityDiscrepancy(reduction="avg"), ValueError, "reduction"),
        (lambda: mdd_call(y_s=E(0, 3)), ValueError, "y_s must hold"),
        (lambda: mdd_call(y_t=torch.ones(2, 4)), ValueError, "y_t and y_t_adv"),
        (lambda: mdd_call(y_s=torch.ones(2, 3, dtype=LONG)), TypeError, "y_s must be float16"),
    ],
    "mk_mmd": [
        (lambda: tl.mk_mmd(torch.ones(4, 3), torch.ones(5, 3)), ValueError, "same shape"),
        (lambda: tl.mk_mmd(E(1, 3), E(1, 3)), ValueError, "B >= 2"),
        (lambda: tl.mk_mmd(torch.ones(2, 3, dtype=LONG), torch.ones(2, 3)), TypeError,
         "source must be float16"),
        (lambda: tl.mk_mmd(torch.ones(2, 3), torch.ones(2, 3), estimate="tllib"), ValueError,
         "estimate"),
    ],
    "joint_mk_mmd": [
        (lambda: tl.joint_mk_mmd([torch.ones(2, 3)], []), ValueError, "as many layers"),
        (lambda: tl.joint_mk_mmd([torch.ones(2, 3)], [torch.ones(2, 3)]), ValueError,
         "one GaussianKernels per layer"),
        (lambda: tl.joint_mk_mmd(torch.ones(2, 3), torch.ones(2, 3)), TypeError, "sequences"),
    ],
    "GaussianKernels": [
        (lambda: tl.GaussianKernels(), ValueError, "at least one kernel"),
        (lambda: tl.GaussianKernels(alphas=(math.inf,)), ValueError, "alphas"),
        (lambda: tl.GaussianKernels(sigmas=1.0), TypeError, "sigmas"),
    ],
    "MultipleKernelMMD": [
        (lambda: tl.MultipleKernelMMD(alphas=(-1.0,)), ValueError, "alphas"),
        (lambda: tl.MultipleKernelMMD(estimate="quadratic"), ValueError, "estimate"),
        (lambda: tl.MultipleKernelMMD()(torch.ones(3, 2), torch.ones(2, 2)), ValueError,
         "same shape"),
    ],
    "JointMultipleKernelMMD": [
        (lambda: tl.JointMultipleKernelMMD(kernels=[(0.92,)]), TypeError, "kernels"),
        (lambda: tl.JointMultipleKernelMMD(tllib_offset="yes"), TypeError, "tllib_offset"),
        (lambda: tl.JointMultipleKernelMMD()([torch.ones(2, 3)], [torch.ones(2, 3)]),
         ValueError, "one GaussianKernels per layer"),
    ],
    "StepwiseAdaptiveFeatureNorm": [
        (lambda: tl.StepwiseAdaptiveFeatureNorm(delta=math.nan), ValueError, "delta"),
        (lambda: tl.StepwiseAdaptiveFeatureNorm()(E(0, 4)), ValueError, "f must hold"),
        (lambda: tl.StepwiseAdaptiveFeatureNorm()(torch.ones(2, 4, dtype=LONG)), TypeError,
         "f must be float16"),
    ],
    "AdaptiveFeatureNorm": [
        (lambda: tl.AdaptiveFeatureNorm("25"), TypeError, "radius"),
        (lambda: tl.AdaptiveFeatureNorm(0.0), ValueError, "radius"),
        (lambda: tl.AdaptiveFeatureNorm(25.0)(E(0, 4)), ValueError, "f must hold"),
    ],
    "BatchSpectralPenalization": [
        (lambda: tl.BatchSpectralPenalization(0), ValueError, "k"),
        (lambda: tl.BatchSpectralPenalization(3)(torch.ones(2, 4), torch.ones(4, 4)), ValueError,
         r"k must satisfy k <= min\(N, d\) = 2 for f_s"),
        (lambda: tl.BatchSpectralPenalization()(torch.ones(2, 4), torch.ones(2, 5)), ValueError,
         "feature dimension"),
        (lambda: tl.BatchSpectralPenalization()(E(0, 4), torch.ones(2, 4)), ValueError,
         "f_s must hold"),
    ],
    "ConsistencyLoss": [
        (lambda: tl.ConsistencyLoss(None), TypeError, "distance_measure"),
        (lambda: tl.ConsistencyLoss(lambda a, b: (a - b).sum(1))(E(0, 3), E(0, 3)),
         ValueError, "y must hold at least one sample"),
    ],
    "L2ConsistencyLoss": [
        (lambda: tl.L2ConsistencyLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: tl.L2ConsistencyLoss()(E(0, 3), E(0, 3)), ValueError, "y must hold"),
        (lambda: tl.L2ConsistencyLoss()(torch.ones(2, 3), torch.ones(2, 4)), ValueError,
         "same shape"),
    ],
    "ClassBalanceLoss": [
        (lambda: tl.ClassBalanceLoss(0), ValueError, "num_classes"),
        (lambda: tl.ClassBalanceLoss(3)(E(0, 3)), ValueError, "N >= 1"),
    ],
    "EmaTeacher": [
        (lambda: tl.EmaTeacher(nn.Linear(2, 2), 1.5), ValueError, "alpha"),
        (lambda: tl.EmaTeacher(None, 0.9), TypeError, "model"),
    ],
    "confidence_mask": [
        (lambda: tl.confidence_mask(torch.rand(2, 3), math.nan), ValueError, "threshold"),
        (lambda: tl.confidence_mask(torch.ones(2, 3, dtype=LONG), 0.5), TypeError, "probs"),
    ],
    "CRDLoss": [
        (lambda: tl.CRDLoss(4, 4), ValueError, "n_data"),
        (lambda: tl.CRDLoss(4, 4, nce_t=math.inf, n_data=10), ValueError, "nce_t"),
        (lambda: tl.CRDLoss(4, 4, 8, nce_k=3, n_data=10)(E(0, 4), E(0, 4), E(0, dtype=LONG)),
         ValueError, "f_s must have shape .* B >= 1"),
    ],
    "ContrastLoss": [
        (lambda: tl.ContrastLoss(0), ValueError, "n_data"),
        (lambda: tl.ContrastLoss(10)(E(0, 4)), ValueError, "B >= 1"),
    ],
    "ContrastMemory": [
        (lambda: tl.ContrastMemory(4, 10, nce_m=2.0), ValueError, "nce_m"),
        (lambda: tl.ContrastMemory(4, 10, nce_k=3)(torch.randn(2, 4), torch.randn(2, 4),
                                                   torch.tensor([0, 10])),
         ValueError, r"idx values must lie in \[0, n_data=10\)"),
    ],
    "Embed": [
        (lambda: tl.Embed(0), ValueError, "dim_in"),
        (lambda: tl.Embed(4)(torch.ones(2, 4, dtype=LONG)), TypeError, "x must be"),
    ],
    "FSP": [
        (lambda: tl.FSP([(2, 2, 4, 4)], [(2, 2, 4, 4)]), ValueError, "two"),
        (lambda: tl.FSP([(0, 2, 4, 4), (0, 3, 4, 4)], [(0, 2, 4, 4), (0, 3, 4, 4)]),
         ValueError, "s_shapes"),
    ],
    "KDLoss": [
        (lambda: tl.KDLoss(math.inf), ValueError, "T must be a finite number > 0"),
        (lambda: tl.KDLoss(0), ValueError, "T must be a finite number > 0"),
        (lambda: tl.KDLoss(2)(E(0, 3), E(0, 3)), ValueError, "N >= 1"),
        (lambda: tl.KDLoss(2)(torch.ones(2, 3, dtype=LONG), torch.ones(2, 3)), TypeError,
         "student_logits"),
    ],
    "NSTLoss": [
        (lambda: tl.NSTLoss()([E(0, 2, 4, 4)], [E(0, 2, 4, 4)]), ValueError, "empty"),
        (lambda: tl.NSTLoss()([torch.ones(2, 2, 4, 4, dtype=LONG)], [torch.ones(2, 2, 4, 4)]),
         TypeError, r"g_s\[0\]"),
    ],
    "OFD": [
        (lambda: tl.OFD(0, 2), ValueError, "in_channels"),
        (lambda: tl.OFD(2, 2)(E(0, 2, 4, 4), E(0, 2, 4, 4)), ValueError,
         "student_pre_relu .* B >= 1"),
        (lambda: tl.OFD(2, 2, margin=torch.zeros(3)), ValueError, "margin"),
    ],
    "pre_relu_features": [
        (lambda: tl.pre_relu_features(tiny_cnn(), ["9"]).__enter__(), ValueError,
         r"layer_names not found in the model: \['9'\]"),
        (lambda: tl.pre_relu_features(tiny_cnn(), "0").__enter__(), TypeError, "layer_names"),
    ],
    "PrototypicalNetwork": [
        (lambda: tl.PrototypicalNetwork(nn.Identity(), distance="l1"), ValueError, "distance"),
        (lambda: tl.PrototypicalNetwork(nn.Identity())(
            torch.randn(4, 3), torch.tensor([0, 0, 1, 5]), torch.randn(2, 3), 2),
         ValueError, "support_labels must lie in"),
        (lambda: tl.PrototypicalNetwork(nn.Identity())(
            torch.ones(4, 3, dtype=LONG), torch.tensor([0, 0, 1, 1]), torch.ones(2, 3, dtype=LONG),
            2),
         TypeError, "encoder output"),
    ],
    "EpisodicSampler": [
        (lambda: tl.EpisodicSampler(torch.tensor([0, 1]), 2, 0, 1, 1), ValueError, "k_shot"),
        (lambda: tl.EpisodicSampler(torch.tensor([0, 1]), 3, 1, 1, 1), ValueError, "n_way"),
    ],
    "class_prototypes": [
        (lambda: tl.class_prototypes(E(0, 3), E(0, dtype=LONG), 2), ValueError,
         "needs a support example"),
        (lambda: tl.class_prototypes(torch.randn(2, 3), torch.tensor([0, 1]), 0), ValueError,
         "n_way"),
    ],
    "StochNorm1d": [
        (lambda: tl.StochNorm1d(4)(torch.randn(1, 4)), ValueError, "more than one value"),
    ],
    "StochNorm2d": [
        (lambda: tl.StochNorm2d(-3), ValueError, "num_features"),
        (lambda: tl.StochNorm2d(4, p="half"), TypeError, "p must be a real number"),
        (lambda: tl.StochNorm2d(2)(E(0, 2, 3, 3)), ValueError, "more than one value"),
        (lambda: tl.StochNorm2d(2)(torch.ones(2, 2, 3, 3, dtype=LONG)), TypeError, "input"),
    ],
    "StochNorm3d": [
        (lambda: tl.StochNorm3d(2)(torch.randn(2, 2, 3, 3)), ValueError, "5 dimensions"),
    ],
    "SyncStochNorm": [
        (lambda: tl.SyncStochNorm(2, p=1.5), ValueError, "p must be a finite number in"),
    ],
    "convert_model": [
        (lambda: tl.convert_model([nn.BatchNorm2d(2)], 0.5), TypeError, "module"),
        (lambda: tl.convert_model(nn.BatchNorm2d(2), 2.0), ValueError, "p"),
    ],
    "BatchSpectralShrinkage": [
        (lambda: tl.BatchSpectralShrinkage(0), ValueError, "k must be >= 1"),
        (lambda: tl.BatchSpectralShrinkage(1)(E(0, 4)), ValueError, "k must satisfy"),
        (lambda: tl.BatchSpectralShrinkage(1)(torch.ones(3, 4, dtype=LONG)), TypeError,
         "feature"),
    ],
    "L2Regularization": [
        (lambda: tl.L2Regularization(None), TypeError, "model"),
    ],
    "SPRegularization": [
        (lambda: tl.SPRegularization(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2))),
         ValueError, "share no parameter"),
    ],
    "BehavioralRegularization": [
        (lambda: tl.BehavioralRegularization()({"a": torch.ones(2)}, {"b": torch.ones(2)}),
         ValueError, "layer"),
    ],
    "AttentionBehavioralRegularization": [
        (lambda: tl.AttentionBehavioralRegularization([torch.ones(2)])(
            {"a": torch.ones(2, 3, 1, 1)}, {"a": torch.ones(2, 3, 1, 1)}),
         ValueError, "channel"),
    ],
    "compute_channel_attention": [
        (lambda: tl.compute_channel_attention(tiny_cnn(), ["0"], labelled([0, 7]),
                                              progress=False),
         ValueError, r"class labels in \[0, 3\)"),
        (lambda: tl.compute_channel_attention(tiny_cnn(), ["0"], labelled([0, 1]),
                                              temperature=math.inf, progress=False),
         ValueError, "temperature"),
        (lambda: tl.compute_channel_attention(tiny_cnn(), ["0"], [], progress=False),
         ValueError, "no batch"),
    ],
    "IntermediateLayerGetter": [
        (lambda: tl.IntermediateLayerGetter(tiny_cnn(), ["fc"]), ValueError, "fc"),
    ],
    "lwf.Classifier": [
        (lambda: lwf.Classifier(nn.Flatten(), 0, nn.Linear(4, 2)), ValueError, "num_classes"),
        (lambda: lwf.Classifier(None, 2, nn.Linear(4, 2)), TypeError, "backbone"),
    ],
    "LwFLoss": [
        (lambda: tl.LwFLoss(math.inf), ValueError, "T must be a finite number > 0"),
        (lambda: tl.LwFLoss(2)(E(0, 3), E(0, 3)), ValueError, "input must hold at least one"),
        (lambda: tl.LwFLoss(2)(torch.ones(2, 3, dtype=LONG), torch.ones(2, 3, dtype=LONG)),
         TypeError, "input must be float16"),
    ],
    "collect_pretrain_labels": [
        (lambda: tl.collect_pretrain_labels([], nn.Linear(2, 2), progress=False), ValueError,
         "no batch"),
        (lambda: tl.collect_pretrain_labels([torch.ones(2, 2)], None), TypeError, "classifier"),
    ],
    "co_tuning.Classifier": [
        (lambda: co_tuning.Classifier(nn.Flatten(), 2, nn.Linear(4, 2), bottleneck=nn.Identity()),
         ValueError, "bottleneck_dim"),
    ],
    "CoTuningLoss": [
        (lambda: tl.CoTuningLoss()(E(0, 3), E(0, 3)), ValueError, "input must hold"),
        (lambda: tl.CoTuningLoss()(torch.ones(2, 3), torch.ones(2, 3, dtype=LONG)), TypeError,
         "target must be float16"),
    ],
    "Relationship": [
        (lambda: tl.Relationship([], nn.Linear(2, 2), progress=False), ValueError, "no batch"),
        (lambda: tl.Relationship([(torch.ones(2, 2), torch.tensor([0, 1]))], nn.Linear(2, 2),
                                 method="inverse", progress=False), ValueError, "method"),
    ],
    "bi_tuning.Classifier": [
        (lambda: bi_tuning.Classifier(nn.Flatten(), 3, projection_dim=0, features_dim=8),
         ValueError, "projection_dim"),
    ],
    "BiTuning": [
        (lambda: tl.BiTuning(bi_tuning_classifier(), None, 3, T=math.inf), ValueError, "T"),
        (lambda: tl.BiTuning(bi_tuning_classifier(), None, 4), ValueError, "num_classes"),
        (lambda: tl.BiTuning(nn.Linear(2, 2), None, 2), TypeError, "encoder_q"),
    ],
    "Bituning": [
        (lambda: tl.Bituning(bi_tuning_classifier(), None, 3, K=0), ValueError, "K"),
    ],
    "FeatureExtractor": [
        (lambda: tl.FeatureExtractor(tiny_cnn(), "head"), ValueError, "head"),
    ],
    "extract_features": [
        (lambda: tl.extract_features(tiny_cnn(), []), ValueError, "no batch"),
    ],
    "GradualUnfreezing": [
        (lambda: tl.GradualUnfreezing(tiny_cnn(), None), TypeError, "optimizer"),
        (lambda: tl.GradualUnfreezing(
            tiny_cnn(), torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), 0),
         ValueError, "epochs_per_stage"),
    ],
    "layerwise_lr_groups": [
        (lambda: tl.layerwise_lr_groups(tiny_cnn(), 0.1, -1.0), ValueError, "decay"),
    ],
    "freeze_policy": [
        (lambda: tl.freeze_policy(-1), ValueError, "dataset_size"),
    ],
    "forgetting": [
        (lambda: tl.forgetting(tiny_cnn(), [], labelled([0, 1])), ValueError, "no batch"),
    ],
    "replace_head": [
        (lambda: tl.replace_head(tiny_cnn(), 0), ValueError, "num_classes"),
    ],
    "log_me": [
        (lambda: tl.log_me(torch.ones(4, 3, dtype=LONG), torch.tensor([0, 1, 0, 1])), TypeError,
         "features must be float16"),
        (lambda: tl.log_me(torch.randn(4, 3), torch.tensor([0.0, 1, 0, 1])), TypeError,
         "labels must have an integer dtype"),
        (lambda: tl.log_me(torch.randn(1, 3), torch.tensor([0])), ValueError,
         "features must hold at least two samples"),
        (lambda: tl.log_me(torch.randn(4, 3), torch.tensor([2, 2, 2, 2])), ValueError,
         "labels must hold at least 2 distinct classes"),
        (lambda: tl.log_me(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), max_iter=0),
         ValueError, "max_iter"),
    ],
    "leep": [
        (lambda: tl.leep(torch.full((4, 2), 0.5), torch.tensor([0, 1, 0])), ValueError,
         r"labels must have shape \(4,\)"),
        (lambda: tl.leep(torch.full((4, 2), 0.3), torch.tensor([0, 1, 0, 1])), ValueError,
         "probabilities rows must sum to 1"),
        (lambda: tl.leep(torch.tensor([[2.0, -1.0]] * 4), torch.tensor([0, 1, 0, 1])),
         ValueError, r"probabilities must lie in \[0, 1\]"),
        (lambda: tl.leep(torch.tensor([[math.nan, 1.0]] * 4), torch.tensor([0, 1, 0, 1])),
         ValueError, "probabilities must be finite"),
    ],
    "nce": [
        (lambda: tl.nce([0, 1], torch.tensor([0, 1])), TypeError, "source_labels must be a"),
        (lambda: tl.nce(torch.tensor([0, 1]), torch.tensor([1, 1])), ValueError,
         "target_labels must hold at least 2 distinct classes"),
        (lambda: tl.nce(torch.tensor([[0, 1]]), torch.tensor([0, 1])), ValueError,
         "source_labels must have 1 dimensions"),
    ],
    "h_score": [
        (lambda: tl.h_score(torch.tensor([[math.inf], [0.0]]), torch.tensor([0, 1])), ValueError,
         "features must be finite"),
        (lambda: tl.h_score(torch.randn(4), torch.tensor([0, 1, 0, 1])), ValueError,
         "features must have 2 dimensions"),
        (lambda: tl.h_score(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), shrinkage="yes"),
         TypeError, "shrinkage must be a bool"),
    ],
}


def public_names():
    """Every public name: tltorch_ext.__all__, and the members of its public submodules."""
    names = []
    for name in tl.__all__:
        value = getattr(tl, name)
        if inspect.ismodule(value):
            short = value.__name__.rsplit(".", 1)[-1]
            names += [f"{short}.{member}" for member in value.__all__
                      if getattr(tl, member, None) is not getattr(value, member)]
        else:
            names.append(name)
    return names


def test_every_public_name_has_bad_input_cases():
    missing = [name for name in public_names() if name not in BAD_INPUT]
    assert not missing, f"add bad-input cases for {missing} to tests/test_bad_input.py"
    stale = sorted(set(BAD_INPUT) - set(public_names()))
    assert not stale, f"{stale} are no longer public"
    without_cases = [name for name, cases in BAD_INPUT.items() if not cases]
    assert without_cases == ["get_backend"]


CASES = [(name, i, *case) for name, cases in BAD_INPUT.items() for i, case in enumerate(cases)]


@pytest.mark.parametrize("name,i,call,error,message", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_is_refused_with_a_named_error(name, i, call, error, message):
    with pytest.raises(error, match=message) as raised:
        call()
    assert type(raised.value) is error, f"{name}: {type(raised.value).__name__} is not {error}"
