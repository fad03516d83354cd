"""Plainly written references for the tests."""
import itertools

import torch.nn.functional as F


def reference_loss(logits, target, copies, alpha, epsilon, pad):
    """Eq. 4 written plainly: per copy fairseq's label-smoothed NLL, plus
    alpha / (m (m - 1)) * sum over ordered pairs of KL(P_i || P_j), over non-pad tokens."""
    vocab = logits.size(-1)
    lprobs = F.log_softmax(logits, dim=-1).view(copies, -1, vocab)
    keep = target.ne(pad)
    eps_i = epsilon / (vocab - 1)
    smoothed = nll = 0.0
    for k in range(copies):
        tok_nll = -lprobs[k].gather(-1, target.unsqueeze(-1)).squeeze(-1)[keep].sum()
        tok_smooth = -lprobs[k].sum(-1)[keep].sum()
        smoothed = smoothed + (1 - epsilon - eps_i) * tok_nll + eps_i * tok_smooth
        nll = nll + tok_nll
    kl = 0.0
    for i, j in itertools.permutations(range(copies), 2):
        pair = F.kl_div(lprobs[j], lprobs[i], log_target=True, reduction="none").sum(-1)
        kl = kl + pair[keep].sum()
    kl = kl / (copies * (copies - 1))
    return smoothed + alpha * kl, smoothed, nll, kl
