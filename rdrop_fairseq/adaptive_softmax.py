"""Full-vocabulary log-probabilities of fairseq's ``AdaptiveSoftmax``, and the R-Drop
loss of its sub-models computed from them in bounded memory.

``AdaptiveSoftmax.get_log_prob`` fills its result in place (``copy_``, ``add_`` on a
log-softmax output), so autograd cannot go through it.  :func:`full_log_probs` gives
the same values out of place, from the module's own head and tail layers, in the
module's current mode (the tails' dropout is active in training).

:func:`adaptive_rdrop_loss` takes the NLL and the KL from the same distributions, the
ones ``AdaptiveSoftmax.forward`` trains: the input dropout once per sub-model row,
then per chunk of tokens the ``(copies * chunk, V)`` log-probabilities, used for both
terms and dropped; activation checkpointing makes them again in backward, with the
same tail-dropout masks, instead of keeping them.  The extra memory is a few
``copies * chunk * V`` buffers whatever the batch size, and the sums are fp32 even
for a half-precision model (``AdaptiveLoss`` sums in the model's dtype, where
``copies`` times its NLL overflows fp16 long before its own does), fp64 for an fp64 one.  The NLL is
``AdaptiveLoss``'s to the word: that criterion gives its tail clusters cluster-relative
targets with ``ignore_index=padding_idx``, so the word at that index of every tail
counts only by the probability of its cluster (:func:`cluster_only_nll_excess`).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .rdrop_loss import _compute_dtype, rdrop_loss

# Default chunk: about 2^24 probabilities (64 MB in fp32) over all copies of a chunk;
# 31 tokens of 2 copies at WikiText-103's 267,744 types.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def full_log_probs(adaptive_softmax, hidden: Tensor) -> Tensor:
    """``(n, V)`` log-probabilities over the whole vocabulary for ``(n, d)`` hidden states, in fp32 (fp64 for fp64)."""
    return full_log_probs_and_cluster_priors(adaptive_softmax, hidden)[0]


def full_log_probs_and_cluster_priors(adaptive_softmax, hidden: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`full_log_probs` and the ``(n, tails)`` log-probabilities of the tail clusters."""
    dtype = _compute_dtype(hidden.dtype)
    head = F.log_softmax(adaptive_softmax.head(hidden), dim=-1, dtype=dtype)
    shortlist = adaptive_softmax.cutoff[0]
    parts = [head[:, :shortlist]]
    for i, tail in enumerate(adaptive_softmax.tail):
        cluster_prior = head[:, shortlist + i].unsqueeze(-1)
        parts.append(F.log_softmax(tail(hidden), dim=-1, dtype=dtype) + cluster_prior)
    return torch.cat(parts, dim=-1), head[:, shortlist:]


def chunk_tokens_for(num_tokens: int, vocab_size: int, copies: int, chunk_tokens: int = 0) -> int:
    """Tokens per chunk: ``chunk_tokens`` if positive, else about 2^24 / (copies * V)."""
    if chunk_tokens <= 0:
        chunk_tokens = max(1, DEFAULT_CHUNK_ELEMENTS // (copies * vocab_size))
    return max(1, min(chunk_tokens, num_tokens))


def cluster_only_nll_excess(adaptive_softmax, lprobs: Tensor, cluster_priors: Tensor, target: Tensor,
                            copies: int, ignore_index: int) -> Tensor:
    """The part of the full NLL that ``AdaptiveLoss`` leaves out: ``-log p(word | cluster)``
    of every copy of each target at index ``ignore_index`` of a tail cluster.

    ``lprobs`` and ``cluster_priors`` are :func:`full_log_probs_and_cluster_priors`' for
    ``tokens * copies`` rows, token ``t``'s copies in rows ``t * copies + k``; ``target``
    is ``(tokens,)``.  Masked, not indexed, so that a GPU never waits for the count."""
    row_target = target.repeat_interleave(copies)
    excess = lprobs.new_zeros(())
    for i, start in enumerate(adaptive_softmax.cutoff[:-1]):
        if 0 <= ignore_index < adaptive_softmax.cutoff[i + 1] - start:
            word = start + ignore_index
            in_cluster_lprob = lprobs[:, word] - cluster_priors[:, i]
            excess = excess - torch.where(row_target == word, in_cluster_lprob, 0.0).sum()
    return excess


def adaptive_rdrop_loss(
    adaptive_softmax,
    hidden: Tensor,
    target: Tensor,
    copies: int,
    alpha: float,
    ignore_index: Optional[int] = None,
    chunk_tokens: int = 0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """R-Drop's loss over an adaptive softmax: the NLL of every sub-model plus alpha
    times the KL between their full-vocabulary distributions.

    Args:
        hidden: ``(copies * B, T, d)`` decoder features before the adaptive softmax, the
            copies interleaved (copy ``k`` of sample ``b`` in row ``b * copies + k``).
        target: ``(B, T)`` token ids shared by all copies.
        ignore_index: target id to leave out (padding).
        alpha, copies, chunk_tokens: as for :func:`~rdrop_fairseq.rdrop_loss.rdrop_loss`.

    Returns:
        ``(loss, nll, kl)`` summed over the kept tokens (the NLL also over copies), fp32 (fp64 for fp64);
        ``loss = nll + alpha * kl`` and only it has a gradient.
    """
    dim = hidden.size(-1)
    # contiguous first, as AdaptiveSoftmax.forward, so the input-dropout masks are its own
    hidden = adaptive_softmax.dropout_module(hidden.contiguous())
    # (tokens, copies, d): one token's copies adjacent, so a chunk's rows stay interleaved
    features = hidden.view(-1, copies, hidden.size(1), dim).transpose(1, 2).reshape(-1, copies, dim)
    target = target.reshape(-1)
    weight = 1.0
    if ignore_index is not None:
        keep = target.ne(ignore_index)
        if keep.any():
            features, target = features[keep], target[keep]
        else:
            # an all-padding batch: one padding token's loss times 0 keeps the graph, so every parameter
            # gets its zero gradient, as fairseq's criteria give (a tied head cannot take zero rows)
            features, target, weight = features[:1], target[:1], 0.0
    num_tokens = features.size(0)
    step = chunk_tokens_for(num_tokens, adaptive_softmax.vocab_size, copies, chunk_tokens)

    def chunk_loss(chunk: Tensor, chunk_target: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        lprobs, cluster_priors = full_log_probs_and_cluster_priors(adaptive_softmax, chunk.reshape(-1, dim))
        # (tokens * copies, 1, V): the interleaved layout with one position per sample
        loss, _, nll, kl = rdrop_loss(lprobs.unsqueeze(1), chunk_target.unsqueeze(1), copies, alpha,
                                      chunk_tokens=chunk.size(0))
        if ignore_index is not None:
            excess = cluster_only_nll_excess(adaptive_softmax, lprobs, cluster_priors, chunk_target, copies,
                                             ignore_index)
            loss, nll = loss - excess, nll - excess.detach()
        return loss, nll, kl

    loss_sum = features.new_zeros((), dtype=_compute_dtype(features.dtype))
    nll_sum, kl_sum = loss_sum.clone(), loss_sum.clone()
    for start in range(0, num_tokens, step):
        loss, nll, kl = checkpoint(chunk_loss, features[start : start + step], target[start : start + step],
                                   use_reentrant=False)
        loss_sum = loss_sum + loss
        nll_sum += nll
        kl_sum += kl
    return loss_sum * weight, nll_sum * weight, kl_sum * weight
