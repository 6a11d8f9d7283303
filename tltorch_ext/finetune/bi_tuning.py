"""Bi-Tuning: contrastive learning on both the projection and the classifier side, with per-class
queues of momentum-encoded keys (docs/api_finetune.md)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import positive_int, real_number
from ..distributed import all_gather_batch
from ._common import GlobalAvgPool, check_module, features_dim_of, model_device, parameter_groups

__all__ = ["Classifier", "BiTuning", "Bituning"]


class Classifier(nn.Module):
    """Backbone, linear head and projection head for Bi-Tuning.

    h = pool_layer(backbone(x)) (global average pooling by default), y = head(h) (weights drawn
    from N(0, 0.01²), bias 0). In training, forward → (y, z, hn) with z = projector(h) / ‖·‖ and
    hn = [h, 1] / ‖[h, 1]‖ (the 1 pairs with the head's bias); in evaluation → y. The feature size
    is ``features_dim`` if given, else ``backbone.out_features``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        projection_dim: int = 128,
        finetune: bool = True,
        pool_layer: nn.Module | None = None,
        *,
        features_dim: int | None = None,
    ):
        super().__init__()
        self.backbone = check_module(backbone, "backbone")
        self.num_classes = positive_int("num_classes", num_classes)
        self.projection_dim = positive_int("projection_dim", projection_dim)
        self.features_dim = features_dim_of(backbone, features_dim)
        self.pool_layer = (
            GlobalAvgPool() if pool_layer is None else check_module(pool_layer, "pool_layer")
        )
        self.head = nn.Linear(self.features_dim, num_classes)
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)
        self.projector = nn.Linear(self.features_dim, projection_dim)
        self.finetune = bool(finetune)

    def forward(self, x: torch.Tensor):
        h = self.pool_layer(self.backbone(x))
        y = self.head(h)
        if not self.training:
            return y
        z = F.normalize(self.projector(h), dim=1)
        hn = F.normalize(torch.cat([h, h.new_ones(h.shape[0], 1)], dim=1), dim=1)
        return y, z, hn

    def get_parameters(self, base_lr: float = 1.0) -> list[dict]:
        """Optimizer groups: backbone at 0.1·base_lr when ``finetune`` (else base_lr), head and
        projector at base_lr."""
        return parameter_groups(
            [
                (self.backbone, 0.1 * base_lr if self.finetune else base_lr),
                (self.head, base_lr),
                (self.projector, base_lr),
            ]
        )


def _own_class_first(similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(b, C, K) similarities to every class queue → (b, C·K) with the sample's class first, then
    the other classes in increasing order."""
    batch, num_classes, queue_size = similarity.shape
    others = torch.arange(num_classes - 1, device=labels.device).expand(batch, -1)
    others = others + (others >= labels.unsqueeze(1)).long()  # skip the own class
    order = torch.cat([labels.unsqueeze(1), others], dim=1)
    return similarity.gather(1, order.unsqueeze(2).expand(-1, -1, queue_size)).flatten(1)


def _contrastive_log_probabilities(anchors, positives, queue, labels, temperature):
    """log_softmax over [anchor·positive, anchor·(own class queue), anchor·(other queues)] / T."""
    current = (anchors * positives).sum(1, keepdim=True)
    # a copy: autograd keeps the queue for the anchors' gradient, and the queue changes in place
    queued = torch.einsum("bd,ckd->bck", anchors, queue.to(anchors.dtype, copy=True))
    logits = torch.cat([current, _own_class_first(queued, labels)], dim=1)
    return F.log_softmax(logits / temperature, dim=1)


def _training_outputs(outputs, name: str):
    if not (isinstance(outputs, tuple) and len(outputs) == 3):
        raise RuntimeError(f"{name} must be in training mode and return (y, z, hn)")
    return outputs


class BiTuning(nn.Module):
    """Bi-Tuning training step around a query encoder (a bi_tuning :class:`Classifier`).

    The key encoder starts as a copy of ``encoder_q`` (``encoder_k`` is overwritten with its state;
    None makes a deep copy), receives no gradient and follows θ_k ← m θ_k + (1 − m) θ_q before
    each step. Two per-class queues of K unit keys live in buffers: ``queue_h`` (C, K, D + 1) of
    classifier-side features hn and ``queue_z`` (C, K, P) of projections z, with write positions
    ``queue_ptr`` (C,); checkpoints and ``.to(device)`` carry them.

    forward(im_q, im_k, labels) → (y_q, logits_z, logits_y, labels_c):
    y_q (b, C) the query logits; logits_z (b, 1 + C·K) = log_softmax over
    [z_q·z_k, z_q·(K queued z of the sample's class), z_q·(queued z of the other classes, in
    class order)] / T; logits_y (b, 1 + C·K) the same layout with anchor w_y = [W_y | b_y] /
    ‖[W_y | b_y]‖ (the sample's head row, used as a fixed anchor: the gradient reaches hn, the
    head learns from the cross-entropy) scored against hn_q and the queued hn; labels_c (b, 1 + C·K)
    = 1/(K + 1) on the first K + 1 entries, 0 elsewhere. The logits are computed in float32. Then
    the keys of the batch are written into their class queues (a class with more than K samples in
    the batch keeps its last K); under torch.distributed the keys of every rank are gathered first,
    so the queues stay identical on all ranks. Only defined in training mode.
    """

    def __init__(
        self,
        encoder_q: Classifier,
        encoder_k: Classifier | None,
        num_classes: int,
        K: int = 40,
        m: float = 0.999,
        T: float = 0.07,
    ):
        super().__init__()
        check_module(encoder_q, "encoder_q")
        for attribute in ("head", "features_dim", "projection_dim"):
            if not hasattr(encoder_q, attribute):
                raise TypeError(
                    f"encoder_q must be a bi_tuning.Classifier (it has no {attribute!r})"
                )
        if not isinstance(num_classes, int) or num_classes != encoder_q.head.out_features:
            raise ValueError(
                f"num_classes must equal the encoder's number of classes "
                f"{encoder_q.head.out_features}, got {num_classes!r}"
            )
        K = positive_int("K", K)
        m = real_number("m", m, 0.0, 1.0)
        T = real_number("T", T, positive=True)
        if encoder_k is None:
            encoder_k = copy.deepcopy(encoder_q)
        else:
            check_module(encoder_k, "encoder_k")
            try:
                encoder_k.load_state_dict(encoder_q.state_dict())
            except RuntimeError as error:
                raise ValueError(f"encoder_k must have encoder_q's architecture: {error}") from None
        for param in encoder_k.parameters():
            param.requires_grad_(False)
        self.encoder_q, self.encoder_k = encoder_q, encoder_k
        self.num_classes, self.K, self.m, self.T = num_classes, K, m, T
        device = model_device(encoder_q)

        def random_keys(dim):
            return F.normalize(torch.randn(num_classes, K, dim, device=device), dim=2)

        self.register_buffer("queue_h", random_keys(encoder_q.features_dim + 1))
        self.register_buffer("queue_z", random_keys(encoder_q.projection_dim))
        self.register_buffer("queue_ptr", torch.zeros(num_classes, dtype=torch.long, device=device))

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.lerp_(param_q.detach(), 1.0 - self.m)

    @torch.no_grad()
    def _enqueue(self, h: torch.Tensor, z: torch.Tensor, labels: torch.Tensor) -> None:
        one_hot = F.one_hot(labels, self.num_classes)
        # rank: how many earlier samples of the batch share the sample's class
        rank = (one_hot.cumsum(0) - 1).gather(1, labels.unsqueeze(1)).squeeze(1)
        counts = one_hot.sum(0)
        kept = rank >= counts[labels] - self.K  # later samples would overwrite earlier ones
        slot = (self.queue_ptr[labels] + rank) % self.K
        index = (labels[kept], slot[kept])
        self.queue_h.index_put_(index, h[kept].to(self.queue_h.dtype))
        self.queue_z.index_put_(index, z[kept].to(self.queue_z.dtype))
        self.queue_ptr.copy_((self.queue_ptr + counts) % self.K)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, labels: torch.Tensor):
        if not self.training:
            raise RuntimeError("BiTuning.forward is a training step; evaluate encoder_q directly")
        integer = isinstance(labels, torch.Tensor) and labels.dtype in (torch.int32, torch.int64)
        if not integer or labels.dim() != 1:
            raise ValueError("labels must be a 1-D int32/int64 tensor (b,)")
        if labels.shape[0] != im_q.shape[0] or im_k.shape[0] != im_q.shape[0]:
            raise ValueError(
                f"im_q, im_k and labels must have the same batch size, got {im_q.shape[0]}, "
                f"{im_k.shape[0]} and {labels.shape[0]}"
            )
        labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        y_q, z_q, h_q = _training_outputs(self.encoder_q(im_q), "encoder_q")
        with torch.no_grad():
            self._momentum_update_key_encoder()
            _, z_k, h_k = _training_outputs(self.encoder_k(im_k), "encoder_k")
        head = self.encoder_q.head
        bias = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
        rows = torch.cat([head.weight, bias.unsqueeze(1)], dim=1).detach().float()
        # float32 even under autocast: a softmax over 1 + C·K entries at T = 0.07 is sensitive
        with torch.autocast(im_q.device.type, enabled=False):
            logits_z = _contrastive_log_probabilities(
                z_q.float(), z_k.float(), self.queue_z, labels, self.T
            )
            logits_y = _contrastive_log_probabilities(
                F.normalize(rows, dim=1)[labels], h_q.float(), self.queue_h, labels, self.T
            )
        labels_c = torch.zeros_like(logits_z)
        labels_c[:, : self.K + 1] = 1.0 / (self.K + 1)
        # Under DDP every rank enqueues the whole group's keys, so the queues stay identical.
        self._enqueue(*(all_gather_batch(t) for t in (h_k, z_k, labels)))
        return y_q, logits_z, logits_y, labels_c


Bituning = BiTuning
