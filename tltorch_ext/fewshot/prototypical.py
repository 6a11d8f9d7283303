"""Prototypical networks (Snell et al., 2017) and an N-way K-shot episode sampler."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from .._tensors import check_floating, positive_int

__all__ = ["PrototypicalNetwork", "EpisodicSampler", "class_prototypes"]

DISTANCES = ("sqeuclidean", "euclidean", "cosine")


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _class_counts(name: str, labels, n: int, n_way: int, device: torch.device) -> torch.Tensor:
    """Check (n,) integer labels in [0, n_way), every class present; return counts (n_way,)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels)}")
    if labels.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,) or labels.device != device:
        raise ValueError(
            f"{name} must have shape ({n},) (one label per support example) on {device}, "
            f"got {tuple(labels.shape)} on {labels.device}"
        )
    # Bins 0 and n_way + 1 count the labels below and above the range, bins 1..n_way the classes;
    # a comparison with every bin keeps the shape static (bincount's is data-dependent).
    bins = torch.arange(n_way + 2, device=labels.device)
    binned = (labels.long().clamp(-1, n_way).unsqueeze(1) + 1 == bins).sum(0)
    if torch.compiler.is_compiling():
        # No host sync in a compiled graph: the checks run on the device and fail with a
        # RuntimeError carrying this message.
        torch._assert_async(
            (binned[0] == 0) & (binned[-1] == 0) & (binned[1:-1] > 0).all(),
            f"{name} must lie in [0, n_way={n_way}) with a support example for every class",
        )
        return binned[1:-1]
    # One host sync for every check.
    below, *counts, above = binned.tolist()
    if below or above:
        lowest, highest = (int(v) for v in torch.aminmax(labels))
        raise ValueError(
            f"{name} must lie in [0, n_way={n_way}), got values in [{lowest}, {highest}]"
        )
    empty = [c for c, count in enumerate(counts) if count == 0]
    if empty:
        raise ValueError(
            f"every class in [0, n_way={n_way}) needs a support example; none for {empty}"
        )
    return binned[1:-1]


def _prototypes(embeddings: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor):
    acc_dtype = torch.promote_types(embeddings.dtype, torch.float32)
    sums = embeddings.new_zeros(len(counts), embeddings.shape[1], dtype=acc_dtype)
    sums.index_add_(0, labels.long(), embeddings.to(acc_dtype))
    return sums / counts.unsqueeze(1).to(acc_dtype)


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class prototypes: the mean embedding of each class, p_c = Σ_{i: y_i = c} z_i / #{i: y_i = c}.

    Args:
        embeddings: (N, D) support embeddings (floating).
        labels: (N,) integer labels in [0, n_way), in any order, any number (≥ 1) per class.
        n_way: number of classes.

    Returns (n_way, D), row c the prototype of class c, accumulated in float32 (float64 for float64
    embeddings) by one index_add over the samples (no loop over classes).
    """
    n_way = positive_int("n_way", n_way)
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings)}")
    if not embeddings.is_floating_point() or embeddings.ndim != 2:
        raise TypeError(
            f"embeddings must be a floating tensor of shape (N, D), got shape "
            f"{tuple(embeddings.shape)} and dtype {embeddings.dtype}"
        )
    counts = _class_counts("labels", labels, embeddings.shape[0], n_way, embeddings.device)
    return _prototypes(embeddings, labels, counts)


class PrototypicalNetwork(nn.Module):
    """Few-shot classifier by distance to class prototypes.

    ``forward(support, support_labels, query, n_way)``: the encoder embeds support and query in one
    pass (embeddings flattened to (N, D)); the prototype p_c of class c is the mean embedding of its
    support examples (:func:`class_prototypes`); the logits are

        logits[q, c] = −d(z_q, p_c),   shape (n_query, n_way), column c = class c,

    with d the squared Euclidean distance ('sqeuclidean', the paper's choice), the Euclidean
    distance ('euclidean') or the cosine distance 1 − cos(z_q, p_c) ('cosine'). A softmax over
    them gives p(y = c | query); cross-entropy against query labels trains the encoder. Distances
    are computed in float32 (float64 for float64 embeddings); the logits come back in the
    embeddings' dtype.

    Args:
        encoder: module mapping a batch of inputs (N, ...) to embeddings (N, ...).
        distance: 'sqeuclidean' | 'euclidean' | 'cosine'.
    """

    def __init__(self, encoder: nn.Module, distance="sqeuclidean"):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder)}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.encoder = encoder
        self.distance = distance

    def _distances(self, queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        if self.distance == "cosine":
            cosine = F.normalize(queries, dim=1) @ F.normalize(prototypes, dim=1).T
            return 1.0 - cosine
        # cdist uses the matrix-product expansion for large inputs and has a zero (not NaN)
        # gradient at zero distance.
        euclidean = torch.cdist(queries, prototypes)
        return euclidean.square() if self.distance == "sqeuclidean" else euclidean

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                n_way: int) -> torch.Tensor:
        n_way = positive_int("n_way", n_way)
        for name, x in (("support", support), ("query", query)):
            if not isinstance(x, torch.Tensor) or x.ndim == 0:
                raise TypeError(f"{name} must be a tensor of shape (N, ...), got {type(x)}")
        if support.shape[1:] != query.shape[1:] or support.device != query.device:
            raise ValueError(
                f"support and query must share the sample shape and device, got "
                f"{tuple(support.shape)} on {support.device} and {tuple(query.shape)} on "
                f"{query.device}"
            )
        n_support = support.shape[0]
        counts = _class_counts("support_labels", support_labels, n_support, n_way, support.device)
        # The inputs may be anything the encoder reads (token ids too); its output must be floating.
        embeddings = check_floating("encoder output", self.encoder(torch.cat([support, query])))
        embeddings = embeddings.flatten(1)
        prototypes = _prototypes(embeddings[:n_support], support_labels, counts)
        queries = embeddings[n_support:].to(prototypes.dtype)
        return (-self._distances(queries, prototypes)).to(embeddings.dtype)

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}"


class EpisodicSampler(Sampler):
    """Batch sampler of N-way K-shot episodes for a standard (map-style) dataset.

    Each episode draws ``n_way`` distinct classes uniformly, then ``k_shot + n_query`` distinct
    samples of each class uniformly, and yields their dataset indices as one list, laid out as

        [k_shot support indices of class 0, ..., of class n_way − 1,
         n_query query indices of class 0, ..., of class n_way − 1]

    where "class j" is the j-th class drawn for this episode (its episode label).
    :meth:`split_episode` cuts a batch in that layout into support and query with episode labels.
    Use it as ``DataLoader(dataset, batch_sampler=sampler)``.

    Args:
        labels: the dataset's label of every sample, a sequence or 1-D tensor of integers (any
            values: each distinct value is a class).
        n_way, k_shot, n_query: classes per episode, support and query samples per class.
        episodes: number of episodes per iteration (``len(sampler)``).
        generator: a ``torch.Generator`` for reproducible episodes; None draws a fresh seed from
            torch's global generator at each iteration (reproducible with ``torch.manual_seed``).
    """

    def __init__(self, labels, n_way: int, k_shot: int, n_query: int, episodes: int,
                 generator=None):
        super().__init__()
        self.n_way = positive_int("n_way", n_way)
        self.k_shot = positive_int("k_shot", k_shot)
        self.n_query = positive_int("n_query", n_query)
        self.episodes = positive_int("episodes", episodes)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
        self.generator = generator
        labels = torch.as_tensor(labels).cpu()
        if labels.ndim != 1 or labels.numel() == 0 or labels.dtype not in _INTEGER_DTYPES:
            raise ValueError(
                f"labels must be a non-empty 1-D sequence of integers, got shape "
                f"{tuple(labels.shape)} and dtype {labels.dtype}"
            )
        classes, class_of_sample, counts = torch.unique(
            labels, return_inverse=True, return_counts=True
        )
        if len(classes) < self.n_way:
            raise ValueError(
                f"n_way={self.n_way} exceeds the number of classes in labels ({len(classes)})"
            )
        per_class = self.k_shot + self.n_query
        too_small = counts < per_class
        if bool(too_small.any()):
            raise ValueError(
                f"every class needs at least k_shot + n_query = {per_class} samples; classes "
                f"{classes[too_small].tolist()} have only {counts[too_small].tolist()}"
            )
        # members[c, :counts[c]] are the dataset indices of class c (sorted by class, then index);
        # the rest of the row is padding that carries zero sampling weight.
        order = torch.argsort(class_of_sample, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(labels)) - starts[class_of_sample[order]]
        self._members = torch.zeros(len(classes), int(counts.max()), dtype=torch.long)
        self._members[class_of_sample[order], slot] = order
        self._valid = (torch.arange(self._members.shape[1]) < counts.unsqueeze(1)).to(torch.float32)

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self):
        generator = self.generator
        if generator is None:
            seed = int(torch.empty((), dtype=torch.int64).random_())
            generator = torch.Generator().manual_seed(seed)
        num_classes = self._members.shape[0]
        for _ in range(self.episodes):
            chosen = torch.randperm(num_classes, generator=generator)[: self.n_way]
            # Uniform draw without replacement among each chosen class's real members.
            slots = torch.multinomial(
                self._valid[chosen], self.k_shot + self.n_query, replacement=False,
                generator=generator,
            )
            indices = self._members[chosen].gather(1, slots)
            support, query = indices[:, : self.k_shot], indices[:, self.k_shot:]
            yield support.flatten().tolist() + query.flatten().tolist()

    def split_episode(self, batch: torch.Tensor):
        """Cut a batch in the episode layout into (support, support_labels, query, query_labels),
        the labels being episode labels in [0, n_way) on the batch's device."""
        n_support = self.n_way * self.k_shot
        expected = n_support + self.n_way * self.n_query
        if not isinstance(batch, torch.Tensor) or batch.ndim == 0 or batch.shape[0] != expected:
            got = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch)
            raise ValueError(
                f"batch must hold one episode, {expected} samples along dim 0, got {got}"
            )
        classes = torch.arange(self.n_way, device=batch.device)
        return (
            batch[:n_support],
            classes.repeat_interleave(self.k_shot),
            batch[n_support:],
            classes.repeat_interleave(self.n_query),
        )
