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
"""
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


class RDropLossFunction(torch.autograd.Function):
    """See :func:`rdrop_loss`.  Returns (loss, smoothed_nll, nll, kl); only loss has a gradient."""

    @staticmethod
    def forward(ctx, scores, target, copies, alpha, epsilon, ignore_index, chunk_tokens, from_logits):
        vocab = scores.size(-1)
        x_all = scores.view(copies, -1, vocab)
        num_tokens = x_all.size(1)
        keep = _keep_mask(target, ignore_index, num_tokens, scores.device)
        eps_i = epsilon / (vocab - 1) if vocab > 1 else 0.0
        dtype = _compute_dtype(scores.dtype)
        smoothed = scores.new_zeros((), dtype=dtype)
        nll = smoothed.clone()
        kl = smoothed.clone()
        log_norm = scores.new_empty((copies, num_tokens, 1), dtype=dtype) if from_logits else None
        step = chunk_rows(num_tokens, vocab, chunk_tokens, scores.device.type)
        for start in range(0, num_tokens, step):
            rows = slice(start, start + step)
            x = x_all[:, rows].to(dtype)
            if from_logits:
                log_norm[:, rows] = torch.logsumexp(x, -1, keepdim=True)
                x = x - log_norm[:, rows]
            k = keep[rows].to(x.dtype)
            if target is not None:
                idx = target[rows].clamp(min=0).view(1, -1, 1).expand(copies, -1, 1)
                tok_nll = -x.gather(-1, idx).squeeze(-1)
                nll += (tok_nll * k).sum()
                if eps_i:
                    smoothed += eps_i * (-x.sum(-1) * k).sum()
            if alpha != 0 and copies > 1:
                p = x.exp()
                pair_sum = x.new_zeros(x.size(1))
                for i in range(copies):
                    for j in range(i + 1, copies):
                        pair_sum += torch.linalg.vecdot(p[i] - p[j], _pair_gap(x[i], x[j]))
                kl += (pair_sum * k).sum()
        kl = kl / (copies * (copies - 1)) if copies > 1 else kl
        smoothed = smoothed + (1.0 - epsilon - eps_i) * nll
        loss = smoothed + alpha * kl
        ctx.save_for_backward(scores, target, keep, log_norm)
        ctx.hparams = (copies, alpha, epsilon, chunk_tokens)
        ctx.mark_non_differentiable(smoothed, nll, kl)
        return loss, smoothed, nll, kl

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        scores, target, keep, log_norm = ctx.saved_tensors
        copies, alpha, epsilon, chunk_tokens = ctx.hparams
        from_logits = log_norm is not None
        vocab = scores.size(-1)
        x_all = scores.view(copies, -1, vocab)
        num_tokens = x_all.size(1)
        grad = torch.empty_like(scores)
        grad_all = grad.view(copies, -1, vocab)
        dtype = _compute_dtype(scores.dtype)
        go = grad_loss.to(dtype)
        eps_i = epsilon / (vocab - 1) if vocab > 1 else 0.0
        kl_scale = go * (alpha / (copies * (copies - 1))) if copies > 1 else 0.0
        target_grad = -(1.0 - epsilon - eps_i) * go
        step = chunk_rows(num_tokens, vocab, chunk_tokens, scores.device.type)
        write_direct = grad.dtype == dtype
        for start in range(0, num_tokens, step):
            rows = slice(start, start + step)
            x = x_all[:, rows].to(dtype)
            if from_logits:
                x = x - log_norm[:, rows]
            g = grad_all[:, rows] if write_direct else torch.empty_like(x)
            g.fill_(-eps_i * go if target is not None else 0.0)
            p = x.exp() if from_logits or (alpha != 0 and copies > 1) else None
            if alpha != 0 and copies > 1:
                for i in range(copies):
                    for j in range(i + 1, copies):
                        gap = _pair_gap(x[i], x[j]).mul_(kl_scale)
                        dp = (p[i] - p[j]).mul_(kl_scale)
                        g[i].addcmul_(p[i], gap).add_(dp)
                        g[j].addcmul_(p[j], gap, value=-1.0).sub_(dp)
            if target is not None:
                idx = target[rows].clamp(min=0).view(1, -1, 1).expand(copies, -1, 1)
                g.scatter_add_(-1, idx, target_grad.expand(idx.shape).to(g.dtype))
            if from_logits:  # through log-softmax: g - p * sum(g)
                g.addcmul_(p, g.sum(-1, keepdim=True), value=-1.0)
            g.masked_fill_(~keep[rows].view(1, -1, 1), 0.0)
            if not write_direct:
                grad_all[:, rows].copy_(g)
        return grad, None, None, None, None, None, None, None


def _keep_mask(target, ignore_index, num_tokens, device):
    if target is None or ignore_index is None:
        return torch.ones(num_tokens, dtype=torch.bool, device=device)
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
        lprobs: ``(copies * N, V)`` log-probabilities; row ``k * N + t`` is copy ``k``
            of token ``t`` (the batch concatenated with itself ``copies`` times).
        target: ``(N,)`` token ids shared by all copies, or None for the KL term alone.
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

    ``logits`` is ``(copies * N, V)`` in the layout of :func:`rdrop_loss`'s ``lprobs``;
    half-precision logits are normalised in fp32, as fairseq's own log-softmax does,
    and receive their gradient in their own dtype.
    """
    return _apply(logits, target, copies, alpha, epsilon, ignore_index, chunk_tokens, from_logits=True)


def _apply(scores, target, copies, alpha, epsilon, ignore_index, chunk_tokens, from_logits):
    if copies < 1 or scores.size(0) % copies:
        raise ValueError(f"{scores.size(0)} rows cannot be split into {copies} copies")
    if target is not None and target.numel() * copies != scores.size(0):
        raise ValueError("target must have one entry per token of one copy")
    return RDropLossFunction.apply(
        scores, target, copies, float(alpha), float(epsilon), ignore_index, chunk_tokens, from_logits
    )
