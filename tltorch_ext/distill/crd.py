"""Contrastive representation distillation (Tian, Krishnan and Isola, 2020), docs/api_distill.md.

The student's and the teacher's penultimate features are projected to a shared unit sphere
(`Embed`). Each network keeps a memory bank of one unit vector per training example
(`ContrastMemory`); a sample's embedding from one network is scored against the other network's
bank row of the same example (the positive) and against nce_k rows of other examples (the noise),
and the NCE loss (`ContrastLoss`) asks the model to tell the positive from the noise. `CRDLoss`
wires the pieces and sums the student-anchored and the teacher-anchored terms.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import positive_int, real_number

__all__ = ["CRDLoss", "ContrastLoss", "ContrastMemory", "Embed"]


def _accumulation_dtype(*dtypes):
    """float32 for half inputs, float64 if any input is float64."""
    acc = torch.float32
    for dtype in dtypes:
        acc = torch.promote_types(acc, dtype)
    return acc


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (floored at 1e-12), in float32 at least, in x's dtype."""
    return F.normalize(x.to(_accumulation_dtype(x.dtype)), dim=1, eps=1e-12).to(x.dtype)


def _check_features(name, x, dim):
    """x must be a floating tensor (B, dim), or (B, ...) whose trailing dims flatten to dim."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() != dim:
        raise ValueError(f"{name} must have shape (B, {dim}) (or (B, ...) flattening to {dim} "
                         f"features) with B >= 1, got {tuple(x.shape)}")


class Embed(nn.Module):
    r"""Linear projection followed by L2 normalization: e = (W x + b) / ‖W x + b‖₂.

    Inputs (B, dim_in), or (B, ...) such as pooled maps (B, C, 1, 1), are flattened to
    (B, dim_in) first. The output (B, dim_out) has unit rows; the norm is taken in float32 for
    half-precision inputs.
    """

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        positive_int("dim_in", dim_in)
        positive_int("dim_out", dim_out)
        self.dim_in = dim_in
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features("x", x, self.dim_in)
        return _l2_normalize(self.linear(x.flatten(1)))


class ContrastMemory(nn.Module):
    r"""Two memory banks of unit vectors and the NCE scores of CRD.

    Buffers ``memory_s`` and ``memory_t`` (n_data × feat_dim) hold one unit vector per training
    example for the student and the teacher, initialized uniformly in [−1, 1] and normalized.
    For a batch with example indices ``idx`` (B,), the contrast indices k = ``contrast_idx``
    (B, nce_k + 1) put the positive idx[i] in column 0 and the noise examples after it; when not
    given, the noise is drawn uniformly (with replacement) from [0, n_data) by torch's generator on
    the banks' device. With v the other network's bank, the scores of an anchor embedding e are

        x_ij = exp(e_i · v[k_ij] / nce_t) / Z,

    one batched gather (index_select) and one torch.bmm for all B × (nce_k + 1) rows. Z (one per
    anchor side, in the buffer ``normalizer`` = [Z_student_anchor, Z_teacher_anchor]) is estimated
    once, from the first batch, as mean_ij exp(e_i · v[k_ij] / nce_t) × n_data, so that the scores
    of a uniformly drawn example sum to about one over the n_data examples; it is kept thereafter.

    In training mode, after scoring, the rows of the batch move toward the new embeddings:
    v[idx_i] ← normalize(nce_m · v[idx_i] + (1 − nce_m) · e_i), in place and without autograd
    (if ``idx`` repeats an example, one of its updates is kept). Evaluation mode leaves the banks
    as they are.

    Shape:
        forward(e_s, e_t, idx, contrast_idx=None): e_s, e_t (B, feat_dim) unit rows, idx (B,)
        int64/int32 in [0, n_data), contrast_idx likewise: (B, nce_k) noise examples only (the
        positives idx are put first), or (B, nce_k + 1) with the positives first, all on the banks'
        device → (x_s, x_t), each (B, nce_k + 1): x_s anchors the student embedding in the teacher
        bank, x_t the teacher embedding in the student bank.
    """

    def __init__(self, feat_dim: int, n_data: int, nce_k: int = 16384, nce_t: float = 0.07,
                 nce_m: float = 0.5):
        super().__init__()
        for name, value in (("feat_dim", feat_dim), ("n_data", n_data), ("nce_k", nce_k)):
            positive_int(name, value)
        self.feat_dim, self.n_data, self.nce_k = feat_dim, n_data, nce_k
        self.nce_t = real_number("nce_t", nce_t, positive=True)
        self.nce_m = real_number("nce_m", nce_m, 0.0, 1.0)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, _l2_normalize(torch.rand(n_data, feat_dim) * 2 - 1))
        # Non-positive means "not estimated yet" (Z itself is always > 0).
        self.register_buffer("normalizer", torch.full((2,), -1.0))

    def extra_repr(self) -> str:
        return (f"feat_dim={self.feat_dim}, n_data={self.n_data}, nce_k={self.nce_k}, "
                f"nce_t={self.nce_t}, nce_m={self.nce_m}")

    def forward(self, e_s, e_t, idx, contrast_idx=None):
        device = self.memory_s.device
        for name, e in (("e_s", e_s), ("e_t", e_t)):
            _check_features(name, e, self.feat_dim)
            if e.dim() != 2 or e.device != device:
                raise ValueError(f"{name} must have shape (B, {self.feat_dim}) on the memory's "
                                 f"device {device}, got {tuple(e.shape)} on {e.device}")
        batch = e_s.shape[0]
        if e_t.shape[0] != batch:
            raise ValueError(f"e_s and e_t must have the same batch size, got {batch} and "
                             f"{e_t.shape[0]}")
        idx = self._checked_index("idx", idx, (batch,))
        if contrast_idx is None:
            noise = torch.randint(self.n_data, (batch, self.nce_k), device=device)
            contrast_idx = torch.cat([idx.unsqueeze(1), noise], dim=1)
        elif getattr(contrast_idx, "shape", None) == (batch, self.nce_k):
            noise = self._checked_index("contrast_idx", contrast_idx, (batch, self.nce_k))
            contrast_idx = torch.cat([idx.unsqueeze(1), noise], dim=1)
        else:
            contrast_idx = self._checked_index(
                "contrast_idx", contrast_idx, (batch, self.nce_k + 1),
                also=f"(B, nce_k) = {(batch, self.nce_k)} noise indices or ")
            if not torch.equal(contrast_idx[:, 0], idx):
                raise ValueError("a (B, nce_k + 1) contrast_idx must hold the positives first: "
                                 "contrast_idx[:, 0] must equal idx")
        x_s = self._scores(e_s, self.memory_t, contrast_idx, side=0)
        x_t = self._scores(e_t, self.memory_s, contrast_idx, side=1)
        if self.training:
            self._momentum_update(self.memory_s, idx, e_s)
            self._momentum_update(self.memory_t, idx, e_t)
        return x_s, x_t

    def _checked_index(self, name, index, shape, also=""):
        if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an int64 or int32 tensor, got "
                            f"{getattr(index, 'dtype', type(index).__name__)}")
        if tuple(index.shape) != shape:
            raise ValueError(f"{name} must have shape {also}{shape}, got {tuple(index.shape)}")
        if index.device != self.memory_s.device:
            raise ValueError(f"{name} must be on the memory's device {self.memory_s.device}, "
                             f"got {index.device}")
        if bool(((index < 0) | (index >= self.n_data)).any()):
            raise ValueError(f"{name} values must lie in [0, n_data={self.n_data}), got "
                             f"min {int(index.min())}, max {int(index.max())}")
        return index.long()

    def _scores(self, anchor, bank, contrast_idx, side):
        batch, n_contrast = contrast_idx.shape
        acc = _accumulation_dtype(anchor.dtype, bank.dtype)
        rows = bank.index_select(0, contrast_idx.reshape(-1)).view(batch, n_contrast, -1)
        logits = torch.bmm(rows.to(acc), anchor.to(acc).unsqueeze(2)).squeeze(2) / self.nce_t
        with torch.no_grad():
            # log(mean exp(logits) · n_data) through logsumexp: no overflow at small nce_t.
            log_z_batch = (torch.logsumexp(logits.flatten(), 0) - math.log(logits.numel())
                           + math.log(self.n_data))
            z = self.normalizer[side]
            self.normalizer[side] = torch.where(z > 0, z, log_z_batch.exp().to(z.dtype))
            log_z = self.normalizer[side].log().to(acc)
        return torch.exp(logits - log_z)

    @torch.no_grad()
    def _momentum_update(self, bank, idx, embedding):
        rows = bank.index_select(0, idx) * self.nce_m
        rows += (1 - self.nce_m) * embedding.detach().to(bank.dtype)
        bank.index_copy_(0, idx, _l2_normalize(rows))


class ContrastLoss(nn.Module):
    r"""The NCE loss of CRD on scores x (B, K + 1) whose column 0 is the positive.

    Noise examples are drawn uniformly, Pn = 1 / n_data, and there are m = K of them per positive.
    The posterior that a score came from the data rather than the noise is
    P(positive) = x / (x + m·Pn) and P(noise) = m·Pn / (x + m·Pn), and the loss is

        −(1/B) [Σ_i log P(positive | x_i0) + Σ_i Σ_{j≥1} log P(noise | x_ij)],

    evaluated as −softplus(log(m·Pn) − log x) and −softplus(log x − log(m·Pn)) so that large or
    tiny scores stay finite. Accumulates in float32 (float64 for float64 x); returns x's dtype.
    """

    def __init__(self, n_data: int):
        super().__init__()
        positive_int("n_data", n_data)
        self.n_data = n_data

    def extra_repr(self) -> str:
        return f"n_data={self.n_data}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] < 2:
            raise ValueError(f"x must have shape (B, K + 1) with B >= 1 and K >= 1, got "
                             f"{tuple(x.shape)}")
        acc = _accumulation_dtype(x.dtype)
        batch, n_noise = x.shape[0], x.shape[1] - 1
        log_x = x.to(acc).clamp_min(torch.finfo(acc).tiny).log()
        log_noise_mass = math.log(n_noise / self.n_data)  # log(m · Pn)
        log_p_pos = -F.softplus(log_noise_mass - log_x[:, 0])
        log_p_noise = -F.softplus(log_x[:, 1:] - log_noise_mass)
        return (-(log_p_pos.sum() + log_p_noise.sum()) / batch).to(x.dtype)


class CRDLoss(nn.Module):
    r"""Contrastive representation distillation loss.

    f_s (B, s_dim) and f_t (B, t_dim) (or (B, ...) flattening to those sizes) are the student's and
    the teacher's features of training examples ``idx`` (B,). Each is embedded on the unit sphere
    of dimension feat_dim (`Embed`), scored against the other network's memory bank
    (`ContrastMemory`, nce_k noise examples, temperature nce_t, bank momentum nce_m), and the loss
    is the sum of the two NCE terms (`ContrastLoss`):

        L = NCE(student embedding vs teacher bank) + NCE(teacher embedding vs student bank).

    Gradients reach the student features and both embeddings (and the teacher features if they
    require grad). ``n_data`` (the number of training examples, the bank size) is required.
    ``contrast_idx`` fixes the noise examples instead of drawing them: (B, nce_k) noise indices,
    or (B, nce_k + 1) with the positive (idx) first, as RepDistiller's data sets yield it. The
    banks and the normalization constants are buffers, saved in the state_dict. The loss has f_s's
    dtype.
    """

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int = 128, nce_k: int = 16384,
                 nce_t: float = 0.07, nce_m: float = 0.5, n_data: int | None = None):
        super().__init__()
        if n_data is None:
            raise ValueError("n_data (the number of training examples) is required")
        self.s_dim, self.t_dim = s_dim, t_dim
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.contrast = ContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)
        self.criterion = ContrastLoss(n_data)

    def forward(self, f_s, f_t, idx, contrast_idx=None):
        _check_features("f_s", f_s, self.s_dim)
        _check_features("f_t", f_t, self.t_dim)
        if f_s.shape[0] != f_t.shape[0]:
            raise ValueError(f"f_s and f_t must have the same batch size, got {f_s.shape[0]} and "
                             f"{f_t.shape[0]}")
        x_s, x_t = self.contrast(self.embed_s(f_s), self.embed_t(f_t), idx, contrast_idx)
        return (self.criterion(x_s) + self.criterion(x_t)).to(f_s.dtype)
