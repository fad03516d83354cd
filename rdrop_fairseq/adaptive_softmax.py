"""Full-vocabulary log-probabilities of fairseq's ``AdaptiveSoftmax``, and the R-Drop
KL between sub-models computed from them in bounded memory.

``AdaptiveSoftmax.get_log_prob`` fills its result in place (``copy_``, ``add_`` on a
log-softmax output), so autograd cannot go through it.  :func:`full_log_probs` gives
the same values out of place, from the module's own head and tail layers, in the
module's current mode (as ``get_log_prob``: the tails' dropout is active in training,
the input dropout of ``AdaptiveSoftmax.forward`` is not applied).

:func:`adaptive_rdrop_kl` walks over the tokens in chunks.  Each chunk's
``(copies * chunk, V)`` log-probabilities are made, used for the KL and dropped; with
activation checkpointing they are made again in backward instead of being kept, so
the extra memory is a few ``copies * chunk * V`` buffers whatever the batch size.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .rdrop_loss import rdrop_loss

# Default chunk: about 2^24 probabilities (64 MB in fp32) over all copies of a chunk;
# 31 tokens of 2 copies at WikiText-103's 267,744 types.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def full_log_probs(adaptive_softmax, hidden: Tensor) -> Tensor:
    """``(n, V)`` fp32 log-probabilities over the whole vocabulary for ``(n, d)`` hidden states."""
    head = F.log_softmax(adaptive_softmax.head(hidden), dim=-1, dtype=torch.float32)
    shortlist = adaptive_softmax.cutoff[0]
    parts = [head[:, :shortlist]]
    for i, tail in enumerate(adaptive_softmax.tail):
        cluster_prior = head[:, shortlist + i].unsqueeze(-1)
        parts.append(F.log_softmax(tail(hidden), dim=-1, dtype=torch.float32) + cluster_prior)
    return torch.cat(parts, dim=-1)


def kl_chunk_tokens(num_tokens: int, vocab_size: int, copies: int, chunk_tokens: int = 0) -> int:
    """Tokens per chunk: ``chunk_tokens`` if positive, else about 2^24 / (copies * V)."""
    if chunk_tokens <= 0:
        chunk_tokens = max(1, DEFAULT_CHUNK_ELEMENTS // (copies * vocab_size))
    return max(1, min(chunk_tokens, num_tokens))


def adaptive_rdrop_kl(
    adaptive_softmax,
    hidden: Tensor,
    keep: Tensor,
    copies: int,
    alpha: float,
    chunk_tokens: int = 0,
) -> Tuple[Tensor, Tensor]:
    """R-Drop's KL term between the copies' full-vocabulary distributions.

    Args:
        hidden: ``(copies * B, T, d)`` decoder features, the copies interleaved
            (copy ``k`` of sample ``b`` in row ``b * copies + k``).
        keep: ``(B * T,)`` bool, the target tokens to include (not padding).
        alpha, copies, chunk_tokens: as for :func:`~rdrop_fairseq.rdrop_loss.rdrop_loss`.

    Returns:
        ``(alpha * kl, kl)`` summed over the kept tokens; only the first has a gradient.
    """
    dim = hidden.size(-1)
    # (tokens, copies, d): one token's copies adjacent, so a chunk's rows stay interleaved
    features = hidden.view(-1, copies, hidden.size(1), dim).transpose(1, 2).reshape(-1, copies, dim)[keep]
    num_tokens = features.size(0)
    step = kl_chunk_tokens(num_tokens, adaptive_softmax.vocab_size, copies, chunk_tokens)

    def chunk_kl(chunk: Tensor) -> Tuple[Tensor, Tensor]:
        lprobs = full_log_probs(adaptive_softmax, chunk.reshape(-1, dim))
        # (tokens * copies, 1, V): the interleaved layout with one position per sample
        weighted, _, _, kl = rdrop_loss(lprobs.unsqueeze(1), None, copies, alpha, chunk_tokens=chunk.size(0))
        return weighted, kl

    weighted_sum = features.new_zeros((), dtype=torch.float32)
    kl_sum = weighted_sum.clone()
    for start in range(0, num_tokens, step):
        chunk = features[start : start + step]
        weighted, kl = checkpoint(chunk_kl, chunk, use_reentrant=False)
        weighted_sum = weighted_sum + weighted
        kl_sum += kl
    return weighted_sum, kl_sum
