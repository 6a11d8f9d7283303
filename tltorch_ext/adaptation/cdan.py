"""Conditional domain-adversarial training (CDAN, Long et al., 2018): the domain discriminator sees
the features conditioned on the classifier's prediction, through a multilinear map, so that it
aligns the joint distribution of features and predictions rather than the features alone."""
import math

import torch
from torch import nn

from .._tensors import check_floating, check_nonempty_batch, positive_int, stat_dtype
from .dann import DomainAdversarialLoss

__all__ = ["MultiLinearMap", "RandomizedMultiLinearMap", "ConditionalDomainAdversarialLoss"]


def _check_pair(f: torch.Tensor, g: torch.Tensor, f_name="f", g_name="g") -> None:
    """f (N, d_f) and g (N, C): floating, 2-D, one row per sample each, on one device."""
    check_floating(f_name, f, ndim=2)
    check_floating(g_name, g, ndim=2)
    if f.shape[0] != g.shape[0]:
        raise ValueError(
            f"{f_name} and {g_name} must hold the same number of samples, got shapes "
            f"{tuple(f.shape)} and {tuple(g.shape)}"
        )
    if f.device != g.device:
        raise ValueError(f"{g_name} is on {g.device} but {f_name} is on {f.device}")


class MultiLinearMap(nn.Module):
    """The multilinear map T⊗(f, g) = f ⊗ g, flattened: for each sample i,

        T⊗(f, g)[i, a·C + c] = f[i, a] · g[i, c],      a < d_f, c < C,

    the Kronecker (outer) product of the feature vector f_i (d_f) and the prediction g_i (C), a
    vector of d_f · C values. A discriminator on it sees every product of a feature with a class
    probability, which captures how features and predictions vary together (CDAN's conditioning).

    ``forward(f, g)``: f (N, d_f), g (N, C) floating tensors on one device → (N, d_f · C), in the
    promoted dtype of f and g. No parameters.
    """

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        _check_pair(f, g)
        return (f.unsqueeze(2) * g.unsqueeze(1)).flatten(1)


class RandomizedMultiLinearMap(nn.Module):
    """The randomized multilinear map of CDAN, for when d_f · C is too large:

        T⊙(f, g) = (R_f f) ⊙ (R_g g) / √d,

    with fixed random matrices R_f (d × d_f) and R_g (d × C) whose entries are drawn once from the
    standard normal distribution, and ⊙ the element-wise product. Its inner products estimate those
    of :class:`MultiLinearMap` without bias: E ⟨T⊙(f, g), T⊙(f', g')⟩ = ⟨f, f'⟩ ⟨g, g'⟩ =
    ⟨f ⊗ g, f' ⊗ g'⟩, with a variance that falls as 1/d.

    Args:
        features_dim: d_f.
        num_classes: C.
        output_dim: d, the dimension of the map's output.
        generator: an optional ``torch.Generator`` that draws R_f and R_g (CPU).

    R_f and R_g are the buffers ``Rf`` and ``Rg`` (float32, saved in ``state_dict``, moved by
    ``.to()``); they are never trained. ``forward(f, g)``: f (N, d_f), g (N, C) → (N, d), in the
    promoted dtype of f and g (the matrices are cast to it).
    """

    def __init__(self, features_dim: int, num_classes: int, output_dim: int = 1024,
                 generator=None):
        super().__init__()
        self.features_dim = positive_int("features_dim", features_dim)
        self.num_classes = positive_int("num_classes", num_classes)
        self.output_dim = positive_int("output_dim", output_dim)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
        self.register_buffer(
            "Rf", torch.randn(self.output_dim, self.features_dim, generator=generator)
        )
        self.register_buffer(
            "Rg", torch.randn(self.output_dim, self.num_classes, generator=generator)
        )

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        _check_pair(f, g)
        if f.shape[1] != self.features_dim or g.shape[1] != self.num_classes:
            raise ValueError(
                f"f must have shape (N, {self.features_dim}) and g (N, {self.num_classes}), got "
                f"{tuple(f.shape)} and {tuple(g.shape)}"
            )
        if f.device != self.Rf.device:
            raise ValueError(
                f"f is on {f.device} but the map's matrices are on {self.Rf.device}; move the "
                f"module with .to()"
            )
        dtype = torch.promote_types(f.dtype, g.dtype)
        projected_f = f.to(dtype) @ self.Rf.to(dtype).T
        projected_g = g.to(dtype) @ self.Rg.to(dtype).T
        return projected_f * projected_g * (1.0 / math.sqrt(self.output_dim))

    def extra_repr(self) -> str:
        return (f"features_dim={self.features_dim}, num_classes={self.num_classes}, "
                f"output_dim={self.output_dim}")


class ConditionalDomainAdversarialLoss(nn.Module):
    """CDAN's domain loss: DANN's adversarial loss on the features conditioned on the predictions.

    With p = softmax(g) the classifier's prediction (taken as a constant, ``detach``-ed, as in the
    authors' code: the reversed gradient reaches the network through the features f only), each
    sample becomes h = T(f, p), with T the :class:`MultiLinearMap` f ⊗ p (d_f · C values) or, with
    ``randomized``, the :class:`RandomizedMultiLinearMap` (R_f f) ⊙ (R_g p) / √d (d =
    ``randomized_dim`` values). The discriminator D sees GRL(h) and is trained, as in
    :class:`DomainAdversarialLoss`, with binary cross-entropy ℓ_i (source = 1, target = 0).

    Entropy conditioning (CDAN+E) weights each sample by how certain its prediction is,

        w_i = 1 + exp(−H(p_i)),      H(p) = −Σ_c p_c log p_c,

    normalised within each domain to mean 1, w̃_i = N_s w_i / Σ_{j∈s} w_j (and likewise on the
    target); without it w̃ = 1. The weights are constants (no gradient). Then

        'mean': ½ (Σ_{i∈s} w̃_i ℓ_i / N_s + Σ_{j∈t} w̃_j ℓ_j / N_t)
              = ½ (Σ_s w ℓ / Σ_s w + Σ_t w ℓ / Σ_t w),
        'sum':  ½ (Σ_{i∈s} w̃_i ℓ_i + Σ_{j∈t} w̃_j ℓ_j),
        'none': ½ [w̃_s ℓ_s; w̃_t ℓ_t], N_s + N_t values.

    Args:
        discriminator: module from h (N, d_f · C), or (N, ``randomized_dim``) when randomized, to
            one logit per sample, (N, 1) or (N,): for example
            ``DomainDiscriminator(d_f * C, 1024)``.
        entropy_conditioning: weight the samples by 1 + exp(−H(p)) (CDAN+E).
        randomized: use the randomized multilinear map (needs ``num_classes`` and
            ``features_dim``), whose fixed matrices, drawn from torch's global generator at
            construction, are buffers of ``self.map`` (saved in ``state_dict``).
        num_classes, features_dim: C and d_f. Required when randomized; otherwise optional, and
            checked against the inputs when given.
        randomized_dim: d, the output dimension of the randomized map.
        reduction: 'none' | 'mean' | 'sum'.
        grl: the gradient reversal module; by default, as in :class:`DomainAdversarialLoss`,
            ``WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=1.0, max_iters=1000,
            auto_step=True)``.

    ``forward(g_s, f_s, g_t, f_t)``: classifier logits g (N, C) and features f (N, d_f) of the
    source and target batches. After each call ``domain_discriminator_accuracy`` holds the
    discriminator's accuracy in percent, as for DANN.
    """

    def __init__(self, discriminator: nn.Module, entropy_conditioning=False, randomized=False,
                 num_classes=None, features_dim=None, randomized_dim=1024, reduction="mean",
                 grl=None):
        super().__init__()
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be an nn.Module, got {type(discriminator)}")
        self.entropy_conditioning = bool(entropy_conditioning)
        self.randomized = bool(randomized)
        self.num_classes = None if num_classes is None else positive_int("num_classes",
                                                                         num_classes)
        self.features_dim = None if features_dim is None else positive_int("features_dim",
                                                                           features_dim)
        self.randomized_dim = positive_int("randomized_dim", randomized_dim)
        if self.randomized:
            if self.num_classes is None or self.features_dim is None:
                raise ValueError(
                    "randomized=True needs num_classes and features_dim (the shapes of the "
                    f"random matrices), got num_classes={num_classes!r}, "
                    f"features_dim={features_dim!r}"
                )
            self.map = RandomizedMultiLinearMap(self.features_dim, self.num_classes,
                                                self.randomized_dim)
        else:
            self.map = MultiLinearMap()
        # The adversarial part (GRL, discriminator, BCE, reductions, accuracy) is DANN's.
        self.adversarial = DomainAdversarialLoss(discriminator, reduction=reduction, grl=grl)

    @property
    def reduction(self) -> str:
        return self.adversarial.reduction

    @property
    def domain_discriminator(self) -> nn.Module:
        return self.adversarial.domain_discriminator

    @property
    def grl(self):
        return self.adversarial.grl

    @property
    def domain_discriminator_accuracy(self):
        return self.adversarial.domain_discriminator_accuracy

    def _check(self, g_s, f_s, g_t, f_t) -> None:
        for domain, g, f in (("s", g_s, f_s), ("t", g_t, f_t)):
            _check_pair(f, g, f"f_{domain}", f"g_{domain}")
            check_nonempty_batch(f"f_{domain}", f)
        if g_s.shape[1] != g_t.shape[1] or f_s.shape[1] != f_t.shape[1]:
            raise ValueError(
                f"source and target must share the number of classes and the feature dimension, "
                f"got g_s {tuple(g_s.shape)}, g_t {tuple(g_t.shape)}, f_s {tuple(f_s.shape)}, "
                f"f_t {tuple(f_t.shape)}"
            )
        if f_s.device != f_t.device:
            raise ValueError(f"f_t is on {f_t.device} but f_s is on {f_s.device}")
        for name, expected, got in (("num_classes", self.num_classes, g_s.shape[1]),
                                    ("features_dim", self.features_dim, f_s.shape[1])):
            if expected is not None and got != expected:
                raise ValueError(f"the inputs have {name} = {got}, the loss was built with "
                                 f"{name}={expected}")

    def forward(self, g_s: torch.Tensor, f_s: torch.Tensor, g_t: torch.Tensor,
                f_t: torch.Tensor) -> torch.Tensor:
        # Checked before the GRL runs: a warm-start GRL steps its schedule on every call.
        self._check(g_s, f_s, g_t, f_t)
        g = torch.cat([g_s, g_t]).detach()
        f = torch.cat([f_s, f_t])
        log_p = torch.log_softmax(g.to(stat_dtype(g.dtype)), dim=1)
        p = log_p.exp()
        h = self.map(f, p.to(f.dtype))
        n_s = f_s.shape[0]
        w_s = w_t = None
        if self.entropy_conditioning:
            entropy = -(p * log_p).sum(dim=1)
            w_s, w_t = (1.0 + torch.exp(-entropy)).split([n_s, f_t.shape[0]])
            w_s, w_t = w_s / w_s.mean(), w_t / w_t.mean()
        return self.adversarial(h[:n_s], h[n_s:], w_s, w_t)

    def extra_repr(self) -> str:
        return (f"entropy_conditioning={self.entropy_conditioning}, randomized={self.randomized}, "
                f"reduction={self.reduction!r}")
