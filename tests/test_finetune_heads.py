"""LwF, Co-Tuning and Bi-Tuning (docs/api_finetune.md)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tltorch_ext.finetune import (
    BiTuning,
    Bituning,
    CoTuningLoss,
    LwFLoss,
    Relationship,
    bi_tuning,
    co_tuning,
    collect_pretrain_labels,
    lwf,
)


class ConvBackbone(nn.Module):
    def __init__(self, out_features=6):
        super().__init__()
        self.conv = nn.Conv2d(3, out_features, 3, padding=1)
        self.out_features = out_features

    def forward(self, x):
        return torch.relu(self.conv(x))


# -------------------------------------------------------------------------------------------- LwF

def test_lwf_classifier_outputs_and_feature_size():
    backbone = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())  # no out_features attribute
    head_source = nn.Linear(5, 10)
    model = lwf.Classifier(backbone, 4, head_source)  # feature size from head_source.in_features
    x = torch.randn(2, 3, 6, 7)
    features = backbone(x).mean((2, 3))
    y_s, y_t = model(x)
    torch.testing.assert_close(y_s, head_source(features))
    torch.testing.assert_close(y_t, model.head_target(features))
    assert y_t.shape == (2, 4) and model.features_dim == 5
    model.eval()
    torch.testing.assert_close(model(x), y_t)
    torch.testing.assert_close(model.forward_source(x), y_s)
    assert co_tuning.Classifier is lwf.Classifier


def test_lwf_classifier_parameter_groups():
    bottleneck = nn.Linear(6, 3)
    model = lwf.Classifier(
        ConvBackbone(), 4, nn.Linear(6, 10), bottleneck=bottleneck, bottleneck_dim=3
    )
    groups = model.get_parameters(base_lr=0.5)
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.05, 0.5, 0.5])
    assert groups[2]["params"] == list(bottleneck.parameters())
    assert model.head_target.in_features == 3
    held = {id(p) for g in groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters()}
    scratch = lwf.Classifier(ConvBackbone(), 4, nn.Linear(6, 10), finetune=False)
    # the Identity bottleneck has no parameters and no group
    assert [g["lr"] for g in scratch.get_parameters(1.0)] == [1.0, 1.0, 1.0]


def test_lwf_classifier_checks():
    with pytest.raises(ValueError, match="bottleneck_dim must be a positive int"):
        lwf.Classifier(ConvBackbone(), 4, nn.Linear(6, 10), bottleneck=nn.Linear(6, 3))
    with pytest.raises(ValueError, match="cannot tell the backbone's feature size"):
        lwf.Classifier(nn.Conv2d(3, 5, 1), 4, nn.Sequential(nn.Linear(5, 10)))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        lwf.Classifier(ConvBackbone(), 0, nn.Linear(6, 10))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_lwf_loss_is_scaled_kl(T):
    current = torch.randn(5, 7, dtype=torch.float64)
    recorded = 3 * torch.randn(5, 7, dtype=torch.float64)
    p = torch.softmax(recorded / T, 1)
    q = torch.softmax(current / T, 1)
    expected = T * T * (p * (p.log() - q.log())).sum() / 5
    torch.testing.assert_close(LwFLoss(T)(current, recorded), expected)
    assert LwFLoss(T)(recorded, recorded).item() == pytest.approx(0.0, abs=1e-12)


def test_lwf_loss_gradient_and_checks():
    current = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    recorded = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c: LwFLoss(2.0)(c, recorded), (current,))
    LwFLoss(2.0)(current, recorded).backward()
    # d/dy_s of T²·KL(p‖q) with q = softmax(y_s/T) is T·(q − p)/b
    expected = 2.0 * (torch.softmax(current.detach() / 2, 1) - torch.softmax(recorded / 2, 1)) / 3
    torch.testing.assert_close(current.grad, expected)
    with pytest.raises(ValueError, match="T must be a finite number > 0"):
        LwFLoss(0)
    with pytest.raises(ValueError, match=r"same shape, got \(3, 4\) and \(3, 5\)"):
        LwFLoss()(torch.zeros(3, 4), torch.zeros(3, 5))
    assert LwFLoss()(current.half().detach(), recorded.half()).dtype == torch.float32


def test_collect_pretrain_labels_records_source_head_in_order():
    head_source = nn.Linear(6, 10)
    model = lwf.Classifier(ConvBackbone(), 4, head_source)
    x = torch.randn(7, 3, 4, 4)
    model.train()
    loader = DataLoader(TensorDataset(x, torch.zeros(7)), batch_size=3)
    recorded = collect_pretrain_labels(loader, model, progress=False)
    assert model.training  # mode restored
    with torch.no_grad():
        torch.testing.assert_close(recorded, head_source(model.backbone(x).mean((2, 3))))
    plain = collect_pretrain_labels(DataLoader(x, batch_size=4), nn.Flatten(), progress=False)
    torch.testing.assert_close(plain, x.flatten(1))


# -------------------------------------------------------------------------------------- Co-Tuning

def test_co_tuning_loss_against_manual():
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(torch.randn(4, 6, dtype=torch.float64), 1)
    loss = CoTuningLoss()(logits, target)
    expected = 0.0
    for b in range(4):
        probabilities = torch.exp(logits[b]) / torch.exp(logits[b]).sum()
        expected = expected - (target[b] * torch.log(probabilities)).sum() / 4
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(logits.grad, (torch.softmax(logits.detach(), 1) - target) / 4)
    with pytest.raises(ValueError, match="input and target must both be \\(b, N\\)"):
        CoTuningLoss()(torch.zeros(4), torch.zeros(4))


def logits_loader(logits, labels, batch_size=5):
    """The 'classifier' will be nn.Identity: the inputs are the source-head logits themselves."""
    return DataLoader(TensorDataset(logits, labels), batch_size=batch_size)


def test_relationship_direct_is_class_mean_of_softmax(tmp_path):
    logits, labels = torch.randn(12, 5), torch.tensor([0, 1, 2] * 4)
    relationship = Relationship(logits_loader(logits, labels), nn.Identity(), "cpu", progress=False)
    probabilities = torch.softmax(logits.double(), 1)
    expected = torch.stack([probabilities[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(relationship.relationship.double(), expected, rtol=1e-6, atol=1e-7)
    table = relationship.relationship
    torch.testing.assert_close(relationship[torch.tensor([2, 0])], table[[2, 0]])
    torch.testing.assert_close(relationship[1], table[1])
    torch.testing.assert_close(relationship[np.array([1, 1])], table[[1, 1]])
    assert len(relationship) == 3


@pytest.mark.parametrize("name", ["relationship.pt", "relationship.npy"])
def test_relationship_cache_round_trip(tmp_path, name):
    cache = tmp_path / name
    logits, labels = torch.randn(9, 4), torch.tensor([0, 1, 2] * 3)
    loader = logits_loader(logits, labels)
    first = Relationship(loader, nn.Identity(), "cpu", cache=cache, progress=False)
    assert cache.exists()
    # the second one loads the cache and never reads the loader or the classifier
    second = Relationship(None, None, "cpu", cache=cache)
    torch.testing.assert_close(second.relationship, first.relationship)
    np.save(open(tmp_path / "bad.npy", "wb"), np.ones(3))
    with pytest.raises(ValueError, match="does not hold an \\(N_t, N_p\\) relationship table"):
        Relationship(None, None, "cpu", cache=tmp_path / "bad.npy")


def test_relationship_reports_classes_without_samples():
    logits, labels = torch.randn(6, 4), torch.tensor([0, 2, 0, 2, 3, 3])
    with pytest.raises(ValueError, match=r"target classes \[1\] have no sample"):
        Relationship(logits_loader(logits, labels), nn.Identity(), "cpu", progress=False)
    # a Co-Tuning classifier knows its number of classes: the missing last class is caught too
    backbone = nn.Flatten()
    backbone.out_features = 4
    classifier = co_tuning.Classifier(backbone, 5, nn.Identity())
    with pytest.raises(ValueError, match=r"target classes \[1, 4\] have no sample"):
        Relationship(
            logits_loader(logits, labels), classifier, "cpu", method="reverse", progress=False
        )
    with pytest.raises(ValueError, match="method must be 'direct' or 'reverse'"):
        Relationship(None, nn.Identity(), "cpu", method="bayes")


def synthetic_mapping(samples_per_class=150):
    """Target class t draws a source class from p(y_s | y_t = t) below; the source head predicts
    that class confidently (logit 6 plus noise)."""
    p_source_given_target = torch.tensor(
        [[0.7, 0.3, 0.0, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]
    )
    labels = torch.arange(3).repeat_interleave(samples_per_class)
    source_class = torch.multinomial(p_source_given_target[labels], 1).squeeze(1)
    logits = 6.0 * F.one_hot(source_class, 5).float() + 0.3 * torch.randn(len(labels), 5)
    return logits, labels, p_source_given_target


@pytest.mark.parametrize("method", ["direct", "reverse"])
def test_relationship_recovers_known_mapping(method):
    logits, labels, truth = synthetic_mapping()
    loader = logits_loader(logits, labels, 64)
    relationship = Relationship(loader, nn.Identity(), "cpu", method=method, progress=False)
    relationship = relationship.relationship
    torch.testing.assert_close(relationship.sum(1), torch.ones(3))
    assert (relationship >= 0).all()
    torch.testing.assert_close(relationship, truth, atol=0.07, rtol=0)
    # rows follow the drawn proportions closely (the sampling noise, not the estimator, dominates)
    probabilities = torch.softmax(logits, 1)
    empirical = torch.stack([probabilities[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(relationship, empirical, atol=0.03, rtol=0)


# ------------------------------------------------------------------------------------- Bi-Tuning

def make_bituning(num_classes=3, K=2, m=0.9, T=0.5, features=4, projection=3):
    backbone = nn.Linear(5, features)
    backbone.out_features = features
    encoder_q = bi_tuning.Classifier(backbone, num_classes, projection_dim=projection)
    backbone_k = nn.Linear(5, features)
    backbone_k.out_features = features
    encoder_k = bi_tuning.Classifier(backbone_k, num_classes, projection_dim=projection)
    return BiTuning(encoder_q, encoder_k, num_classes, K=K, m=m, T=T)


def test_bi_tuning_classifier_outputs():
    backbone = ConvBackbone()
    model = bi_tuning.Classifier(backbone, 4, projection_dim=3)
    x = torch.randn(2, 3, 5, 5)
    y, z, hn = model(x)
    h = backbone(x).mean((2, 3))
    torch.testing.assert_close(y, model.head(h))
    torch.testing.assert_close(z, model.projector(h) / model.projector(h).norm(dim=1, keepdim=True))
    h1 = torch.cat([h, torch.ones(2, 1)], 1)
    torch.testing.assert_close(hn, h1 / h1.norm(dim=1, keepdim=True))
    assert model.head.bias.abs().sum() == 0
    assert model.head.weight.std().item() == pytest.approx(0.01, rel=0.5)
    model.eval()
    torch.testing.assert_close(model(x), y)
    assert [g["lr"] for g in model.get_parameters(1.0)] == [0.1, 1.0, 1.0]
    with pytest.raises(ValueError, match="cannot tell the backbone's feature size"):
        bi_tuning.Classifier(nn.Conv2d(3, 4, 1), 4)
    assert bi_tuning.Classifier(nn.Conv2d(3, 4, 1), 4, features_dim=4).head.in_features == 4


def test_bi_tuning_logits_layout_against_loop():
    model = make_bituning(num_classes=3, K=2)
    torch.testing.assert_close(model.encoder_k.head.weight, model.encoder_q.head.weight)  # copied
    queue_h, queue_z = model.queue_h.clone(), model.queue_z.clone()
    im_q, im_k, labels = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([2, 0, 2, 1])
    y_q, logits_z, logits_y, labels_c = model(im_q, im_k, labels)
    assert logits_z.shape == logits_y.shape == labels_c.shape == (4, 1 + 3 * 2)
    with torch.no_grad():
        _, z_q, h_q = model.encoder_q(im_q)
        _, z_k, _ = model.encoder_k(im_k)  # the key encoder after this step's momentum update
        w = torch.cat([model.encoder_q.head.weight, model.encoder_q.head.bias[:, None]], 1)
        w = w / w.norm(dim=1, keepdim=True)
    for i, c in enumerate(labels.tolist()):
        order = [c] + [k for k in range(3) if k != c]
        raw_z = [z_q[i] @ z_k[i]] + [z_q[i] @ queue_z[k, j] for k in order for j in range(2)]
        raw_y = [w[c] @ h_q[i]] + [w[c] @ queue_h[k, j] for k in order for j in range(2)]
        torch.testing.assert_close(logits_z[i], torch.log_softmax(torch.stack(raw_z) / 0.5, 0))
        torch.testing.assert_close(logits_y[i], torch.log_softmax(torch.stack(raw_y) / 0.5, 0))
    torch.testing.assert_close(labels_c, torch.tensor([[1 / 3] * 3 + [0.0] * 4] * 4))
    torch.testing.assert_close(y_q, model.encoder_q.head(model.encoder_q.backbone(im_q)))


def test_bi_tuning_queue_update_per_class():
    model = make_bituning(num_classes=3, K=2)
    queue_z = model.queue_z.clone()
    im_k = torch.randn(4, 5)
    labels = torch.tensor([2, 0, 2, 2])  # class 2 has 3 > K samples: its last 2 are kept
    model(torch.randn(4, 5), im_k, labels)
    with torch.no_grad():
        _, z_k, h_k = model.encoder_k(im_k)
    # class 2 writes slots 0, 1, 0 (wrapping), so slot 0 holds sample 3 and slot 1 sample 2
    torch.testing.assert_close(model.queue_z[2], z_k[[3, 2]])
    torch.testing.assert_close(model.queue_h[2], h_k[[3, 2]])
    torch.testing.assert_close(model.queue_z[0, 0], z_k[1])
    torch.testing.assert_close(model.queue_z[0, 1], queue_z[0, 1])  # untouched
    torch.testing.assert_close(model.queue_z[1], queue_z[1])
    assert model.queue_ptr.tolist() == [1, 0, 1]
    model(torch.randn(1, 5), im_k[:1], torch.tensor([0]))
    assert model.queue_ptr.tolist() == [0, 0, 1]
    state = model.state_dict()
    assert {"queue_h", "queue_z", "queue_ptr"} <= set(state)
    restored = make_bituning(num_classes=3, K=2)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.queue_z, model.queue_z)


def test_bi_tuning_momentum_update_and_gradients():
    model = make_bituning(m=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    q = [p.detach().clone() for p in model.encoder_q.parameters()]
    k = [p.detach().clone() for p in model.encoder_k.parameters()]
    labels = torch.tensor([0, 1, 1])
    y_q, logits_z, logits_y, labels_c = model(torch.randn(3, 5), torch.randn(3, 5), labels)
    for p_k, before_k, before_q in zip(model.encoder_k.parameters(), k, q):
        torch.testing.assert_close(p_k, 0.9 * before_k + 0.1 * before_q)
        assert not p_k.requires_grad
    loss = F.cross_entropy(y_q, labels) - (labels_c * (logits_z + logits_y)).sum(1).mean()
    loss.backward()
    assert model.encoder_q.projector.weight.grad.abs().sum() > 0
    assert model.encoder_q.backbone.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert Bituning is BiTuning


def test_bi_tuning_checks():
    model = make_bituning()
    model.eval()
    with pytest.raises(RuntimeError, match="training step"):
        model(torch.randn(2, 5), torch.randn(2, 5), torch.tensor([0, 1]))
    model.train()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        model(torch.randn(2, 5), torch.randn(2, 5), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="same batch size, got 2, 2 and 3"):
        model(torch.randn(2, 5), torch.randn(2, 5), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="must equal the encoder's number of classes 3"):
        BiTuning(model.encoder_q, None, 4)
    with pytest.raises(TypeError, match="bi_tuning.Classifier"):
        BiTuning(nn.Linear(2, 2), None, 2)
    with pytest.raises(ValueError, match="encoder_k must have encoder_q's architecture"):
        BiTuning(model.encoder_q, nn.Linear(2, 2), 3)
    assert BiTuning(model.encoder_q, None, 3, K=5).queue_z.shape == (3, 5, 3)


def test_bi_tuning_under_bfloat16_autocast_keeps_float32_logits_and_queues():
    model = make_bituning(num_classes=3, K=2)
    labels = torch.tensor([0, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_q, logits_z, logits_y, _ = model(torch.randn(3, 5), torch.randn(3, 5), labels)
    assert y_q.dtype == torch.bfloat16
    assert logits_z.dtype == logits_y.dtype == model.queue_z.dtype == torch.float32
    # each row is a log-probability vector; the enqueued keys stay unit vectors
    torch.testing.assert_close(logits_z.exp().sum(1), torch.ones(3))
    enqueued = model.queue_z[[0, 1, 2], 0]
    torch.testing.assert_close(enqueued.norm(dim=1), torch.ones(3), atol=1e-2, rtol=0)
    model.encoder_q.eval()
    with pytest.raises(RuntimeError, match=r"encoder_q must be in training mode"):
        model(torch.randn(3, 5), torch.randn(3, 5), labels)
