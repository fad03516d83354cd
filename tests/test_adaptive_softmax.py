"""Full-vocabulary adaptive-softmax log-probabilities and the chunked R-Drop KL."""
import pytest
import torch
import torch.nn.functional as F
from fairseq.modules import AdaptiveSoftmax
from torch.utils._python_dispatch import TorchDispatchMode

from rdrop_fairseq.adaptive_softmax import adaptive_rdrop_kl, full_log_probs
from reference import assert_close_to_scale

VOCAB, DIM, COPIES = 300, 16, 2


@pytest.fixture
def adaptive_softmax():
    torch.manual_seed(0)
    module = AdaptiveSoftmax(VOCAB, DIM, [100, 200], dropout=0.0)
    return module.eval()


def plain_full_log_probs(module, hidden):
    """log of p(cluster) * p(word | cluster), written with probabilities."""
    head = F.softmax(module.head(hidden), dim=-1)
    shortlist = module.cutoff[0]
    probs = [head[:, :shortlist]]
    for i, tail in enumerate(module.tail):
        probs.append(head[:, shortlist + i, None] * F.softmax(tail(hidden), dim=-1))
    return torch.cat(probs, dim=-1).log()


def plain_kl(lprobs, keep, length):
    """1/2 (KL(P1||P2) + KL(P2||P1)) summed over the kept tokens; ``lprobs`` holds
    ``(2 * B, length)`` positions, sample b's copies in rows 2b and 2b + 1."""
    per_sample = lprobs.view(-1, 2, length, lprobs.size(-1))
    lp1, lp2 = per_sample[:, 0].reshape(-1, lprobs.size(-1)), per_sample[:, 1].reshape(-1, lprobs.size(-1))
    sym = F.kl_div(lp2, lp1, log_target=True, reduction="none") + F.kl_div(lp1, lp2, log_target=True, reduction="none")
    return 0.5 * (sym.sum(-1) * keep).sum()


def hidden_states(batch=4, length=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(COPIES * batch, length, DIM, generator=gen, requires_grad=True)


def test_equals_fairseq_get_log_prob(adaptive_softmax):
    hidden = hidden_states().detach()
    with torch.no_grad():
        expected = adaptive_softmax.get_log_prob(hidden, None)
        got = full_log_probs(adaptive_softmax, hidden.view(-1, DIM)).view_as(expected)
    assert_close_to_scale(got, expected, rel=1e-6)
    torch.testing.assert_close(got.logsumexp(-1), torch.zeros(got.shape[:-1]), rtol=0, atol=1e-5)


def test_gradients_flow_and_match_plain_computation(adaptive_softmax):
    hidden = hidden_states()
    target = torch.randint(0, VOCAB, (hidden.size(0) * hidden.size(1),))
    flat = hidden.view(-1, DIM)
    weights = [p for p in adaptive_softmax.parameters()]
    got = torch.autograd.grad(F.nll_loss(full_log_probs(adaptive_softmax, flat), target), [hidden, *weights])
    ref = torch.autograd.grad(F.nll_loss(plain_full_log_probs(adaptive_softmax, flat), target), [hidden, *weights])
    assert all(g.abs().sum() > 0 for g in got)
    assert_close_to_scale(got, ref, rel=1e-4)  # the reference works with probabilities


@pytest.mark.parametrize("chunk_tokens", [1, 7, 0])
def test_chunked_kl_equals_unchunked_and_plain(adaptive_softmax, chunk_tokens):
    adaptive_softmax.train()  # the tail dropout is 0 here, so still deterministic
    hidden = hidden_states()
    keep = torch.rand(hidden.size(0) // COPIES * hidden.size(1), generator=torch.Generator().manual_seed(2)) > 0.2
    params = [hidden, *adaptive_softmax.parameters()]

    weighted, kl = adaptive_rdrop_kl(adaptive_softmax, hidden, keep, COPIES, 2.0, chunk_tokens)
    got = torch.autograd.grad(weighted, params)
    whole, whole_kl = adaptive_rdrop_kl(adaptive_softmax, hidden, keep, COPIES, 2.0, keep.numel())
    whole_grads = torch.autograd.grad(whole, params)
    plain = 2.0 * plain_kl(plain_full_log_probs(adaptive_softmax, hidden.view(-1, DIM)), keep.float(), hidden.size(1))
    plain_grads = torch.autograd.grad(plain, params)

    assert kl > 0 and not kl.requires_grad
    torch.testing.assert_close(weighted, 2.0 * kl)
    torch.testing.assert_close(kl, whole_kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted, plain, rtol=1e-4, atol=1e-5)
    assert_close_to_scale(got, whole_grads, rel=1e-5, msg="chunked vs whole")
    assert_close_to_scale(got, plain_grads, rel=1e-4, msg="chunked vs plain")


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any operator returns, forward and backward."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def largest_tensor_of_kl_step(module, hidden, keep, chunk_tokens):
    with LargestOutput() as mode:
        weighted, _ = adaptive_rdrop_kl(module, hidden, keep, COPIES, 1.0, chunk_tokens)
        weighted.backward()
    return mode.numel


def test_memory_is_bounded_by_the_chunk(adaptive_softmax):
    adaptive_softmax.train()
    hidden = hidden_states(batch=4, length=10)
    keep = torch.ones(40, dtype=torch.bool)
    chunk = 4
    largest_param = max(p.numel() for p in adaptive_softmax.parameters())
    assert largest_param < COPIES * chunk * VOCAB < COPIES * keep.numel() * VOCAB

    assert largest_tensor_of_kl_step(adaptive_softmax, hidden, keep, chunk) <= COPIES * chunk * VOCAB
    # The same probe sees the full tokens x V tensor when there is one chunk.
    assert largest_tensor_of_kl_step(adaptive_softmax, hidden, keep, 40) >= COPIES * 40 * VOCAB
