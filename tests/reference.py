"""Plainly written references for the tests."""
import itertools

import torch
import torch.nn.functional as F


def reference_loss(logits, target, copies, alpha, epsilon, pad):
    """Eq. 4 written plainly: per copy fairseq's label-smoothed NLL, plus
    alpha / (m (m - 1)) * sum over ordered pairs of KL(P_i || P_j), over non-pad tokens.

    ``logits`` is ``(copies * B, T, V)`` with sample ``b``'s copies in rows ``b * copies``
    to ``b * copies + copies - 1`` and ``target`` ``(B, T)``; or ``(copies * N, V)`` copy
    after copy with ``target`` ``(N,)``."""
    vocab = logits.size(-1)
    if logits.dim() == 3:
        per_sample = logits.reshape(-1, copies, logits.size(1), vocab)
        logits = per_sample.transpose(0, 1).reshape(-1, vocab)
    lprobs = F.log_softmax(logits, dim=-1).view(copies, -1, vocab)
    target = target.reshape(-1)
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


def assert_close_to_scale(actual, expected, rel=1e-4, msg=""):
    """``actual`` equals ``expected`` up to ``rel`` times the largest magnitude in ``expected``.

    Either may be a list of tensors (e.g. a model's parameter gradients), taken as one
    tensor.  Two fp32 routes through a model (other summation orders, another
    log-softmax) differ by rounding errors that scale with the magnitude of the whole
    gradient, not with each element's: an element near zero (a bias whose exact gradient
    is 0) can be off by more than any fixed absolute tolerance on a loaded machine.  An
    error in the computation (a wrong factor, a token or a copy left out) moves elements
    by a sizeable part of that scale."""
    if isinstance(actual, (list, tuple)):
        assert len(actual) == len(expected), msg
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert a.shape == e.shape, (msg, i, a.shape, e.shape)
        actual = torch.cat([a.detach().flatten() for a in actual])
        expected = torch.cat([e.detach().flatten() for e in expected])
    assert actual.shape == expected.shape, (msg, actual.shape, expected.shape)
    scale = expected.detach().abs().max().item()
    error = (actual.detach() - expected.detach()).abs().max().item()
    assert scale > 0, f"{msg}: the expected values are all zero"
    assert error <= rel * scale, f"{msg}: max error {error:.3g} > {rel} x scale {scale:.3g}"
