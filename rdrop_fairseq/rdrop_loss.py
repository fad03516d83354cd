"""The R-Drop objective (Liang et al., 2021, Eq. 4) as one autograd Function.

Pure torch, no fairseq.  For ``m`` sub-model copies of the same ``N`` target tokens
with log-probabilities ``x_1 .. x_m`` it computes, over the tokens that are not
``ignore_index``::

    loss = sum_k smoothed_nll(x_k)  +  alpha * kl
    kl   = sum_tokens 1/(m(m-1)) sum_{i != j} KL(P_i || P_j)

At m = 2 the regulariser is alpha/2 (KL(P1||P2) + KL(P2||P1)), the paper's Eq. 4.
The symmetric pair term is written as (p_i - p_j)(x_i - x_j), which is exact, needs
no division and stays finite where both copies put zero mass on a token.

Two entry points share one Function: :func:`rdrop_loss` takes log-probabilities,
:func:`rdrop_loss_from_logits` takes the unnormalised scores and folds the
log-softmax in, so that no normalised ``(copies * N, V)`` tensor is ever stored and
the gradient reaches the scores in one pass instead of passing through log-softmax's
backward.  Either way the Function saves only its input (kept alive anyway by the
layer that made it) and, from logits, one log-normaliser per row.  Forward and
backward walk over the tokens in chunks, so their temporaries are bounded by
``chunk_tokens * V`` floats, and backward writes the whole gradient (the NLL,
smoothing and KL parts together) into a single buffer of the input's size.

On CUDA the same Function's work is done by two fused Triton kernels
(:mod:`rdrop_fairseq.kernels.rdrop_loss_triton`): one pass over the scores for the loss,
one for the gradient.  :func:`kernel_for` picks the implementation (``RDROP_KERNEL``);
the torch Function here is the CPU path and the reference the kernels are tested against.
"""
import functools
import importlib.metadata
import importlib.util
import os
import re
from typing import Optional, Tuple

import torch
from torch import Tensor

# A pair difference x_i - x_j that is NaN (both -inf) or infinite is replaced by a
# finite value; where it multiplies a zero probability difference it then gives 0.
_LOG_GAP_LIMIT = 1.0e4
# Default chunk, in probabilities per copy: on a CPU small enough for the temporaries to
# stay in cache (2 MB in fp32: measured fastest with benchmarks/step_cost.py), on a GPU
# large enough for full kernels (16 MB).
DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 22}


def chunk_rows(num_tokens: int, vocab_size: int, chunk_tokens: int = 0, device_type: str = "cpu") -> int:
    """Tokens per chunk: ``chunk_tokens`` if positive, else about 2^19 / V on a CPU, 2^22 / V on a GPU."""
    if chunk_tokens > 0:
        return min(chunk_tokens, max(num_tokens, 1))
    elements = DEFAULT_CHUNK_ELEMENTS.get(device_type, DEFAULT_CHUNK_ELEMENTS["cuda"])
    return max(1, min(max(num_tokens, 1), elements // max(vocab_size, 1)))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed in fp32; fp32 and fp64 in their own precision."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pair_gap(x_i: Tensor, x_j: Tensor) -> Tensor:
    gap = x_i - x_j
    return gap.nan_to_num_(nan=0.0, posinf=_LOG_GAP_LIMIT, neginf=-_LOG_GAP_LIMIT)


def _copies_view(scores: Tensor, copies: int) -> Tensor:
    """``scores`` as ``(groups, copies, T, V)``; see :func:`rdrop_loss` for the two layouts."""
    vocab = scores.size(-1)
    if scores.dim() == 3:
        return scores.view(scores.size(0) // copies, copies, scores.size(1), vocab)
    return scores.view(1, copies, -1, vocab)


def _target_index(target: Tensor, keep: Tensor, copies: int) -> Tensor:
    """``(groups, copies, length, 1)`` gather indices of the targets; an ignored token's (its
    ``ignore_index`` may lie outside the vocabulary, as PyTorch's -100) points at entry 0."""
    return torch.where(keep, target, 0).unsqueeze(1).unsqueeze(-1).expand(-1, copies, -1, 1)


def _blocks(groups: int, length: int, step: int):
    """``(group slice, position slice)`` pairs that cover ``groups x length`` tokens, about ``step`` at a time."""
    if length >= step:
        for g in range(groups):
            for t in range(0, length, step):
                yield slice(g, g + 1), slice(t, t + step)
    else:
        per = max(1, step // max(length, 1))
        for g in range(0, groups, per):
            yield slice(g, g + per), slice(None)


class RDropLossFunction(torch.autograd.Function):
    """See :func:`rdrop_loss`.  Returns (loss, smoothed_nll, nll, kl); only loss has a gradient."""

    @staticmethod
    def forward(ctx, scores, target, copies, alpha, epsilon, ignore_index, chunk_tokens, from_logits):
        # Computed in fp32 by design: autocast (fairseq's --amp) would run vecdot in half precision.
        with torch.autocast(scores.device.type, enabled=False):
            return RDropLossFunction._forward(ctx, scores, target, copies, alpha, epsilon, ignore_index,
                                              chunk_tokens, from_logits)

    @staticmethod
    def _forward(ctx, scores, target, copies, alpha, epsilon, ignore_index, chunk_tokens, from_logits):
        vocab = scores.size(-1)
        x_all = _copies_view(scores, copies)
        groups, _, length, _ = x_all.shape
        target = target.reshape(groups, length) if target is not None else None
        keep = _keep_mask(target, ignore_index, (groups, length), scores.device)
        eps_i = epsilon / (vocab - 1) if vocab > 1 else 0.0
        dtype = _compute_dtype(scores.dtype)
        smoothed = scores.new_zeros((), dtype=dtype)
        nll = smoothed.clone()
        kl = smoothed.clone()
        log_norm = scores.new_empty((groups, copies, length, 1), dtype=dtype) if from_logits else None
        step = chunk_rows(groups * length, vocab, chunk_tokens, scores.device.type)
        for gs, ts in _blocks(groups, length, step):
            x = x_all[gs, :, ts].to(dtype)
            if from_logits:
                log_norm[gs, :, ts] = torch.logsumexp(x, -1, keepdim=True)
                x = x - log_norm[gs, :, ts]
            # Padded tokens are dropped by selecting, not by multiplying with the keep mask:
            # their scores may be -inf (a masked vocabulary, a row of -inf from logits gives
            # NaN log-probabilities), and inf * 0 is NaN.  The selects act on one value per
            # token and copy, never on the (tokens, V) scores.
            k = keep[gs, ts]
            if target is not None:
                idx = _target_index(target[gs, ts], k, copies)
                tok_nll = -x.gather(-1, idx).squeeze(-1)
                nll += torch.where(k.unsqueeze(1), tok_nll, 0.0).sum()
                if eps_i:
                    smoothed += eps_i * torch.where(k.unsqueeze(1), -x.sum(-1), 0.0).sum()
            if alpha != 0 and copies > 1:
                p = x.exp()
                pair_sum = x.new_zeros(k.shape)
                for i in range(copies):
                    for j in range(i + 1, copies):
                        # where both copies have p = 0 (x = -inf) the gap is NaN and made 0
                        pair_sum += torch.linalg.vecdot(p[:, i] - p[:, j], _pair_gap(x[:, i], x[:, j]))
                kl += torch.where(k, pair_sum, 0.0).sum()
        kl = kl / (copies * (copies - 1)) if copies > 1 else kl
        smoothed = smoothed + (1.0 - epsilon - eps_i) * nll
        loss = smoothed + alpha * kl
        ctx.save_for_backward(scores, target, keep, log_norm)
        ctx.hparams = (copies, alpha, epsilon, chunk_tokens)
        ctx.mark_non_differentiable(smoothed, nll, kl)
        return loss, smoothed, nll, kl

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        refuse_double_backward()
        scores, target, keep, log_norm = ctx.saved_tensors
        copies, alpha, epsilon, chunk_tokens = ctx.hparams
        from_logits = log_norm is not None
        vocab = scores.size(-1)
        x_all = _copies_view(scores, copies)
        groups, _, length, _ = x_all.shape
        grad = scores.new_empty(scores.shape)
        grad_all = _copies_view(grad, copies)
        dtype = _compute_dtype(scores.dtype)
        go = grad_loss.to(dtype)
        eps_i = epsilon / (vocab - 1) if vocab > 1 else 0.0
        kl_scale = go * (alpha / (copies * (copies - 1))) if copies > 1 else 0.0
        target_grad = -(1.0 - epsilon - eps_i) * go
        step = chunk_rows(groups * length, vocab, chunk_tokens, scores.device.type)
        write_direct = grad.dtype == dtype
        for gs, ts in _blocks(groups, length, step):
            x = x_all[gs, :, ts].to(dtype)
            if from_logits:
                x = x - log_norm[gs, :, ts]
            g = grad_all[gs, :, ts] if write_direct else torch.empty_like(x)
            g.fill_(-eps_i * go if target is not None else 0.0)
            p = x.exp() if from_logits or (alpha != 0 and copies > 1) else None
            if alpha != 0 and copies > 1:
                for i in range(copies):
                    for j in range(i + 1, copies):
                        gap = _pair_gap(x[:, i], x[:, j]).mul_(kl_scale)
                        dp = (p[:, i] - p[:, j]).mul_(kl_scale)
                        g[:, i].addcmul_(p[:, i], gap).add_(dp)
                        g[:, j].addcmul_(p[:, j], gap, value=-1.0).sub_(dp)
            if target is not None:
                idx = _target_index(target[gs, ts], keep[gs, ts], copies)
                g.scatter_add_(-1, idx, target_grad.expand(idx.shape).to(g.dtype))
            if from_logits:  # through log-softmax: g - p * sum(g)
                g.addcmul_(p, g.sum(-1, keepdim=True), value=-1.0)
            # a select, not a product: a padded token's row may hold NaN here (all -inf logits)
            g.masked_fill_(~keep[gs, ts].unsqueeze(1).unsqueeze(-1), 0.0)
            if not write_direct:
                grad_all[gs, :, ts] = g
        return grad, None, None, None, None, None, None, None


def refuse_double_backward():
    """The gradient is written by hand, with no graph of its own: under ``create_graph=True`` (when
    autograd runs a backward with grad mode on) a second derivative would silently come out as zero."""
    if torch.is_grad_enabled():
        raise RuntimeError("the R-Drop loss is differentiable once: its backward cannot build a graph "
                           "(create_graph=True, double backward)")


def _check_targets(target: Tensor, vocab: int, ignore_index: Optional[int]) -> None:
    """A target outside the vocabulary fails here (asynchronously on a GPU, like an out-of-range gather)
    instead of reading another token's scores."""
    valid = (target >= 0) & (target < vocab)
    if ignore_index is not None:
        valid |= target == ignore_index
    torch._assert_async(valid.all(), f"R-Drop loss: a target id is outside the vocabulary [0, {vocab}) "
                                     f"and is not the ignore_index {ignore_index}")


def _keep_mask(target, ignore_index, shape, device):
    if target is None or ignore_index is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return target.ne(ignore_index)


def rdrop_loss(
    lprobs: Tensor,
    target: Optional[Tensor],
    copies: int,
    alpha: float,
    epsilon: float = 0.0,
    ignore_index: Optional[int] = None,
    chunk_tokens: int = 0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """R-Drop loss summed over tokens.

    Args:
        lprobs: log-probabilities in one of two layouts:
            ``(copies * B, T, V)``, the copies of sample ``b`` in rows ``b * copies`` to
            ``b * copies + copies - 1`` (the batch repeated with ``repeat_interleave``, as
            :class:`~rdrop_fairseq.sub_models.SubModelPasses` makes it); or
            ``(copies * N, V)``, copy after copy: row ``k * N + t`` is copy ``k`` of token ``t``.
        target: ``(B, T)`` (or ``(N,)``) token ids shared by all copies, or None for the KL term alone.
        copies: number of sub-models m (>= 1).
        alpha: weight of the KL term.
        epsilon: label smoothing, as fairseq's ``label_smoothed_nll_loss``.
        ignore_index: target id to leave out of every term (padding).
        chunk_tokens: tokens per chunk, 0 for about 2^19 / V on a CPU, 2^22 / V on a GPU.

    Returns:
        ``(loss, smoothed_nll, nll, kl)``: loss = smoothed_nll + alpha * kl, with the NLL
        terms summed over all copies and kl the mean over ordered pairs of copies of
        KL(P_i || P_j), summed over tokens.  Only ``loss`` carries a gradient.
    """
    return _apply(lprobs, target, copies, alpha, epsilon, ignore_index, chunk_tokens, from_logits=False)


def rdrop_loss_from_logits(
    logits: Tensor,
    target: Optional[Tensor],
    copies: int,
    alpha: float,
    epsilon: float = 0.0,
    ignore_index: Optional[int] = None,
    chunk_tokens: int = 0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`rdrop_loss` of ``log_softmax(logits.float(), -1)``, without storing it.

    ``logits`` is in a layout of :func:`rdrop_loss`'s ``lprobs``;
    half-precision logits are normalised in fp32, as fairseq's own log-softmax does,
    and receive their gradient in their own dtype.
    """
    return _apply(logits, target, copies, alpha, epsilon, ignore_index, chunk_tokens, from_logits=True)


KERNEL_ENV = "RDROP_KERNEL"
KERNEL_CHOICES = ("auto", "triton", "torch")
# The oldest Triton the fused kernels were checked with (benchmarks/triton_versions.sh): run by its
# interpreter against the torch Function, and compiled for sm_80 and sm_90 (it came with torch 2.7).
MIN_TRITON = (3, 3)
# Triton's interpreter before 3.7 cannot run a loop over a runtime bound with numpy 2.4 or later.
MIN_TRITON_INTERPRETER_NUMPY_2_4 = (3, 7)
# The kernels unroll every ordered pair of copies.  Compiled for sm_80 and sm_90 (benchmarks/kernel_resources.py
# --copies), their vocabulary loop has no register spills up to 4 copies with Triton 3.6 and 3.9; from 5 or 6
# it has a few stack loads and stores a block (Triton 3.9: 3 to 4, at m = 6 and 7), and with Triton 3.6
# hundreds in backward at m = 7 and 8.  Whether such a kernel still beats the torch Function has not been
# timed on a GPU (the last table of benchmarks/gpu-report.sh), so the cap stays where spills grow with m.
MAX_FUSED_COPIES = 8


def kernel_for(scores: Tensor, copies: int = 2) -> str:
    """``"triton"`` or ``"torch"``: the implementation that computes the loss of ``scores``.

    ``RDROP_KERNEL`` decides: ``torch`` is the chunked Function in this module, ``triton``
    the fused kernels of :mod:`rdrop_fairseq.kernels.rdrop_loss_triton` (on a machine
    without CUDA they run under Triton's interpreter), ``auto`` (the default) the fused
    kernels for fp32/bf16/fp16 CUDA tensors of up to 8 copies when Triton >= 3.3 is
    installed, else torch.  On ROCm builds of torch (whose GPU tensors are "cuda" too)
    ``auto`` keeps torch: the kernels have been compiled and checked for NVIDIA targets
    only, and ``triton`` runs them there on request.
    """
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"{KERNEL_ENV}={choice!r}: expected one of {', '.join(KERNEL_CHOICES)}")
    version = _triton_version()
    if choice == "auto":
        fused = (scores.is_cuda and torch.version.hip is None
                 and scores.dtype in (torch.float32, torch.bfloat16, torch.float16)
                 and copies <= MAX_FUSED_COPIES and version is not None and version >= MIN_TRITON)
        return "triton" if fused else "torch"
    if choice == "triton":
        if version is None:
            raise RuntimeError(f"{KERNEL_ENV}=triton but Triton is not installed: pip install 'rdrop-fairseq[triton]'")
        if version < MIN_TRITON:
            raise RuntimeError(f"{KERNEL_ENV}=triton needs Triton >= {_dotted(MIN_TRITON)}, the oldest its kernels "
                               f"were checked with; this is Triton {_dotted(version)}: upgrade it, or use "
                               f"{KERNEL_ENV}=torch")
        if scores.dtype == torch.float64:
            raise ValueError(f"{KERNEL_ENV}=triton computes in fp32; fp64 scores need {KERNEL_ENV}=torch")
        if not scores.is_cuda and torch.cuda.is_available():
            raise ValueError(f"{KERNEL_ENV}=triton needs CUDA tensors where CUDA is present (Triton's interpreter, "
                             f"for CPU tensors, is only chosen on machines without it); these are on "
                             f"{scores.device}: use {KERNEL_ENV}=auto or torch")
        if not scores.is_cuda and version < MIN_TRITON_INTERPRETER_NUMPY_2_4 and _numpy_version() >= (2, 4):
            raise RuntimeError(f"{KERNEL_ENV}=triton on a CPU runs Triton's interpreter, which before Triton "
                               f"{_dotted(MIN_TRITON_INTERPRETER_NUMPY_2_4)} fails with numpy >= 2.4; this is "
                               f"Triton {_dotted(version)} with numpy {_dotted(_numpy_version())}: upgrade Triton, "
                               f"or use {KERNEL_ENV}=torch")
    return choice


@functools.lru_cache(maxsize=None)
def _triton_version() -> Optional[Tuple[int, ...]]:
    """The installed Triton's release numbers, or None without Triton. Read from its metadata, not by
    importing it: without CUDA the kernels' module must choose Triton's interpreter before Triton is
    first imported."""
    if importlib.util.find_spec("triton") is None:
        return None
    for distribution in ("triton", "pytorch-triton", "pytorch-triton-rocm"):
        try:
            return version_numbers(importlib.metadata.version(distribution))
        except importlib.metadata.PackageNotFoundError:
            continue
    return (999,)  # a build without metadata says nothing of its age: taken to be recent


@functools.lru_cache(maxsize=None)
def _numpy_version() -> Tuple[int, ...]:
    return version_numbers(importlib.metadata.version("numpy"))


def version_numbers(version: str) -> Tuple[int, ...]:
    """``"3.6.0+git1a2b"`` -> ``(3, 6, 0)``."""
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


def _dotted(release: Tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def _apply(scores, target, copies, alpha, epsilon, ignore_index, chunk_tokens, from_logits):
    if scores.dim() not in (2, 3):
        raise ValueError(f"scores must be (copies * N, V) or (copies * B, T, V), got shape {tuple(scores.shape)}")
    if copies < 1 or scores.size(0) % copies:
        raise ValueError(f"{scores.size(0)} rows cannot be split into {copies} copies")
    one_copy = (scores.size(0) // copies,) + tuple(scores.shape[1:-1])
    if target is not None and tuple(target.shape) != one_copy:  # a (T, B) target of the right size is refused too
        raise ValueError(f"target must be {one_copy}, one entry per token of one copy "
                         f"(scores {tuple(scores.shape)}, {copies} copies), got shape {tuple(target.shape)}")
    if ignore_index is not None:
        ignore_index = int(ignore_index)  # the kernels take a Python int (a numpy or 0-dim tensor index would fail)
    if target is not None:
        _check_targets(target, scores.size(-1), ignore_index)
    if kernel_for(scores, copies) == "triton":
        from .kernels.rdrop_loss_triton import TritonRDropLossFunction

        return TritonRDropLossFunction.apply(
            scores, target, copies, float(alpha), float(epsilon), ignore_index, from_logits
        )
    return RDropLossFunction.apply(
        scores, target, copies, float(alpha), float(epsilon), ignore_index, chunk_tokens, from_logits
    )


def rdrop_regression_loss(predictions: Tensor, target: Tensor, copies: int, alpha: float) -> Tuple[Tensor, Tensor, Tensor]:
    """R-Drop for a regression head (GLUE's STS-B), as the paper's authors made it.

    ``predictions`` is ``(copies * B, C)`` (or ``(copies * B,)`` for C = 1) in the interleaved
    layout of :func:`rdrop_loss`, ``target`` is ``(B, C)`` (or ``(B,)``).  Returns
    ``(loss, mse, consistency)``: ``mse`` sums ``(y_k - t)^2`` over samples, outputs and
    copies, ``consistency`` sums over samples and outputs the mean over ordered pairs of
    copies of ``(y_i - y_j)^2`` (the squared distance takes the place of the KL between two
    point predictions), and ``loss = mse + alpha * consistency``.  Computed in fp32 (fp64
    stays fp64).
    """
    rows = predictions.size(0) if predictions.dim() else 0
    if copies < 2 or rows % copies or predictions.numel() != copies * target.numel():
        raise ValueError(f"{predictions.numel()} predictions do not hold {copies} copies of {target.numel()} targets")
    dtype = _compute_dtype(predictions.dtype)
    y = predictions.reshape(rows // copies, copies, -1).to(dtype)  # (B, copies, C)
    mse = (y - target.reshape(rows // copies, 1, -1).to(dtype)).pow(2).sum()
    pair_gaps = y.unsqueeze(2) - y.unsqueeze(1)
    consistency = pair_gaps.pow(2).sum() / (copies * (copies - 1))
    return mse + alpha * consistency, mse, consistency
