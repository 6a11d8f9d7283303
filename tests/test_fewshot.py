"""Prototypical networks and the episodic sampler."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tltorch_ext.fewshot import EpisodicSampler, PrototypicalNetwork, class_prototypes

# Unsorted labels, unequal shots: class 1 = {(0,0), (2,0), (1,1)} -> prototype (1, 1/3);
# class 0 = {(0,4)} -> prototype (0, 4).
SUPPORT = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
LABELS = torch.tensor([1, 1, 0, 1])
QUERY = torch.tensor([[0.0, 0.0], [0.0, 3.0], [1.0, 0.0]])


def test_prototypes_hand_values():
    prototypes = class_prototypes(SUPPORT, LABELS, 2)
    assert torch.allclose(prototypes, torch.tensor([[0.0, 4.0], [1.0, 1.0 / 3]]))


@pytest.mark.parametrize(
    "distance, expected",
    [
        # squared distances to (0, 4) and (1, 1/3)
        ("sqeuclidean", [[16.0, 1 + 1 / 9], [1.0, 1 + 64 / 9], [17.0, 1 / 9]]),
        ("euclidean", [[4.0, math.sqrt(10 / 9)], [1.0, math.sqrt(73 / 9)], [math.sqrt(17), 1 / 3]]),
    ],
)
def test_prototypical_logits_hand_values(distance, expected):
    net = PrototypicalNetwork(nn.Identity(), distance)
    logits = net(SUPPORT, LABELS, QUERY, 2)
    assert torch.allclose(logits, -torch.tensor(expected), atol=1e-5)


def test_prototypical_cosine_logits_hand_values():
    net = PrototypicalNetwork(nn.Identity(), "cosine")
    logits = net(SUPPORT, LABELS, QUERY[1:], 2)
    # (0,3) vs (0,4): cos 1; vs (1,1/3): cos (1/3*3)/(3*sqrt(10/9)) = 1/sqrt(10).
    # (1,0) vs (0,4): cos 0; vs (1,1/3): 1/sqrt(10/9) = 3/sqrt(10).
    expected = [[0.0, 1 / math.sqrt(10) - 1], [-1.0, 3 / math.sqrt(10) - 1]]
    assert torch.allclose(logits, torch.tensor(expected), atol=1e-6)


def loop_reference(embed, support, labels, query, n_way, distance):
    """Independent float64 formulation: Python loop over classes and pairs."""
    z_s, z_q = embed(support.double()), embed(query.double())
    prototypes = torch.stack([z_s[labels == c].mean(0) for c in range(n_way)])
    rows = []
    for q in z_q:
        if distance == "cosine":
            rows.append([-(1 - F.cosine_similarity(q, p, dim=0)) for p in prototypes])
        else:
            squared = [((q - p) ** 2).sum() for p in prototypes]
            rows.append([-(s if distance == "sqeuclidean" else s.sqrt()) for s in squared])
    return torch.tensor([[v.item() for v in row] for row in rows], dtype=torch.float64)


@pytest.mark.parametrize("distance", ["sqeuclidean", "euclidean", "cosine"])
def test_prototypical_matches_float64_loop_with_unequal_shots(distance):
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 7))
    labels = torch.tensor([3, 0, 2, 2, 1, 4, 0, 3, 3, 2, 1, 4, 4, 4, 0])  # shots 3, 2, 3, 3, 4
    support, query = torch.randn(15, 3, 4), torch.randn(9, 3, 4)
    logits = PrototypicalNetwork(encoder, distance)(support, labels, query, 5)
    assert logits.shape == (9, 5) and logits.dtype == torch.float32
    expected = loop_reference(encoder.double(), support, labels, query, 5, distance)
    assert torch.allclose(logits.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("distance", ["sqeuclidean", "euclidean", "cosine"])
def test_prototypical_gradcheck(distance):
    encoder = nn.Linear(3, 4).double()
    net = PrototypicalNetwork(encoder, distance)
    labels = torch.tensor([1, 0, 2, 0, 1])
    support = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    query = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, q: net(s, labels, q, 3), (support, query))


def test_prototypical_bfloat16_embeddings():
    encoder = nn.Linear(6, 5)
    support, query = torch.randn(6, 6), torch.randn(4, 6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    full = PrototypicalNetwork(encoder)(support, labels, query, 3)
    half = PrototypicalNetwork(encoder.bfloat16())(support.bfloat16(), labels, query.bfloat16(), 3)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), full, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda net: net(SUPPORT, torch.tensor([1, 1, 0, 3]), QUERY, 2), ValueError,
         r"support_labels must lie in \[0, n_way=2\), got values in \[0, 3\]"),
        (lambda net: net(SUPPORT, torch.tensor([1, -1, 0, 1]), QUERY, 2), ValueError,
         r"got values in \[-1, 1\]"),
        (lambda net: net(SUPPORT, LABELS, QUERY, 3), ValueError,
         r"every class in \[0, n_way=3\) needs a support example; none for \[2\]"),
        (lambda net: net(SUPPORT, LABELS[:3], QUERY, 2), ValueError,
         r"support_labels must have shape \(4,\)"),
        (lambda net: net(SUPPORT, LABELS.float(), QUERY, 2), TypeError, "integer dtype"),
        (lambda net: net(SUPPORT, LABELS, QUERY, 0), ValueError,
         "n_way must be a positive int"),
        (lambda net: net(SUPPORT, LABELS, QUERY, 2.0), TypeError, "n_way must be an int"),
        (lambda net: net(SUPPORT, LABELS, torch.ones(3, 5), 2), ValueError,
         "share the sample shape"),
        (lambda net: PrototypicalNetwork(nn.Identity(), "manhattan"), ValueError,
         r"distance must be one of \('sqeuclidean', 'euclidean', 'cosine'\)"),
        (lambda net: class_prototypes(SUPPORT[:, 0], LABELS, 2), TypeError, r"shape \(N, D\)"),
    ],
)
def test_prototypical_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(PrototypicalNetwork(nn.Identity()))


# ---------------------------------------------------------------- episodic sampler
# Classes 5 and 7 have 5 samples each, 9 and 11 have 4.
DATASET_LABELS = [5, 7, 9, 5, 7, 9, 5, 7, 9, 5, 7, 9, 5, 11, 11, 11, 11, 7]


def check_episode(indices, n_way, k_shot, n_query):
    labels = torch.tensor(DATASET_LABELS)[torch.tensor(indices)]
    assert len(indices) == n_way * (k_shot + n_query) and len(set(indices)) == len(indices)
    support = labels[: n_way * k_shot].view(n_way, k_shot)
    query = labels[n_way * k_shot:].view(n_way, n_query)
    # Block j of the support and of the query hold the same class; the n_way classes differ.
    assert (support == support[:, :1]).all() and (query == support[:, :1]).all()
    assert len(set(support[:, 0].tolist())) == n_way
    return tuple(support[:, 0].tolist())


def test_episodic_sampler_layout_and_length():
    sampler = EpisodicSampler(DATASET_LABELS, n_way=3, k_shot=1, n_query=3, episodes=40,
                              generator=torch.Generator().manual_seed(1))
    episodes = list(sampler)
    assert len(sampler) == len(episodes) == 40
    classes = [check_episode(e, 3, 1, 3) for e in episodes]
    assert set(c for episode in classes for c in episode) == {5, 7, 9, 11}
    used = set(i for e in episodes for i in e)
    assert used == set(range(len(DATASET_LABELS)))  # every sample gets drawn at some point


def test_episodic_sampler_reproducibility():
    def episodes(generator=None):
        return list(EpisodicSampler(torch.tensor(DATASET_LABELS), 2, 2, 2, 5, generator=generator))

    assert episodes(torch.Generator().manual_seed(3)) == episodes(torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    first = episodes()
    torch.manual_seed(4)
    assert episodes() == first
    assert episodes() != first


def test_episodic_sampler_with_dataloader_and_prototypical_network():
    # Class c's samples are clustered around the point (3c, 0): prototypes classify them.
    labels = torch.arange(6).repeat_interleave(8)
    features = torch.stack([3.0 * labels, torch.zeros(48)], dim=1) + 0.1 * torch.randn(48, 2)
    sampler = EpisodicSampler(labels, n_way=4, k_shot=2, n_query=3, episodes=3)
    loader = DataLoader(TensorDataset(features, labels), batch_sampler=sampler)
    net = PrototypicalNetwork(nn.Identity())
    for x, y in loader:
        support, support_labels, query, query_labels = sampler.split_episode(x)
        assert torch.equal(support_labels, torch.arange(4).repeat_interleave(2))
        assert torch.equal(y[:8].view(4, 2)[:, 0].repeat_interleave(3), y[8:])
        logits = net(support, support_labels, query, 4)
        assert torch.equal(logits.argmax(1), query_labels)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_way=2, k_shot=4, n_query=1), ValueError,
         r"at least k_shot \+ n_query = 5 samples; classes \[9, 11\] have only \[4, 4\]"),
        (dict(n_way=5, k_shot=1, n_query=1), ValueError,
         r"n_way=5 exceeds the number of classes .*\(4\)"),
        (dict(n_way=2, k_shot=0, n_query=1), ValueError, "k_shot must be a positive int"),
        (dict(n_way=2, k_shot=1, n_query=1, episodes=1.5), TypeError, "episodes must be an int"),
        (dict(n_way=2, k_shot=1, n_query=1, generator=0), TypeError,
         "generator must be a torch.Generator"),
        (dict(labels=[0.5, 1.0], n_way=2, k_shot=1, n_query=1), ValueError, "sequence of integers"),
        (dict(labels=[[0, 1]], n_way=2, k_shot=1, n_query=1), ValueError, r"got shape \(1, 2\)"),
    ],
)
def test_episodic_sampler_bad_input(kwargs, error, match):
    kwargs = {"labels": DATASET_LABELS, "episodes": 2, **kwargs}
    with pytest.raises(error, match=match):
        EpisodicSampler(**kwargs)


def test_split_episode_rejects_wrong_size():
    sampler = EpisodicSampler(DATASET_LABELS, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="batch must hold one episode, 4 samples along dim 0"):
        sampler.split_episode(torch.zeros(5, 2))


# ---------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("distance", ["sqeuclidean", "euclidean", "cosine"])
def test_prototypical_on_cuda_matches_cpu(distance):
    encoder = nn.Linear(8, 6)
    labels = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    support, query = torch.randn(7, 8), torch.randn(5, 8)
    cpu = PrototypicalNetwork(encoder, distance)(support, labels, query, 3)
    net = PrototypicalNetwork(encoder, distance).cuda()
    gpu = net(support.cuda(), labels.cuda(), query.cuda(), 3)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_prototypical_compiles_fullgraph():
    """No host sync in the label checks: the whole forward is one graph, matching eager."""
    torch._dynamo.reset()
    net = PrototypicalNetwork(nn.Linear(2, 3))
    compiled = torch.compile(net, fullgraph=True)
    torch.testing.assert_close(compiled(SUPPORT, LABELS, QUERY, 2), net(SUPPORT, LABELS, QUERY, 2))
