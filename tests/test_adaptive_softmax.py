"""Full-vocabulary adaptive-softmax log-probabilities and the chunked R-Drop loss."""
import pytest
import torch
import torch.nn.functional as F
from fairseq.modules import AdaptiveSoftmax
from torch.utils._python_dispatch import TorchDispatchMode

from rdrop_fairseq.adaptive_softmax import DEFAULT_CHUNK_ELEMENTS, adaptive_rdrop_loss, chunk_tokens_for, full_log_probs
from reference import assert_close_to_scale

VOCAB, DIM, COPIES, PAD = 300, 16, 2, 1


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


def plain_loss(lprobs, target, alpha, pad, cutoff):
    """NLL of both copies + alpha/2 (KL(P1||P2) + KL(P2||P1)), over the non-pad targets;
    ``lprobs`` holds ``(2 * B, T)`` positions, sample b's copies in rows 2b and 2b + 1.  As in
    fairseq's adaptive_loss, the word at index ``pad`` of a tail cluster counts by its cluster."""
    per_sample = lprobs.view(-1, 2, target.size(1), lprobs.size(-1))
    target = target.reshape(-1)
    nll = 0.0
    for copy in (per_sample[:, 0], per_sample[:, 1]):
        probs = copy.reshape(-1, lprobs.size(-1)).exp()
        for lp_row, p_row, word in zip(copy.reshape(-1, lprobs.size(-1)), probs, target.tolist()):
            clusters = [(a, b) for a, b in zip(cutoff[:-1], cutoff[1:]) if word == a + pad < b]
            if word != pad:
                nll = nll - (p_row[clusters[0][0]:clusters[0][1]].sum().log() if clusters else lp_row[word])
    lp1, lp2 = per_sample[:, 0].reshape(-1, lprobs.size(-1)), per_sample[:, 1].reshape(-1, lprobs.size(-1))
    sym = F.kl_div(lp2, lp1, log_target=True, reduction="none") + F.kl_div(lp1, lp2, log_target=True, reduction="none")
    kl = 0.5 * (sym.sum(-1) * target.ne(pad)).sum()
    return nll + alpha * kl, nll, kl


def targets(batch=4, length=10, seed=2):
    """Random targets with about 20% padding, and the words at index PAD of both tail clusters."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, VOCAB, (batch, length), generator=gen)
    target[torch.rand(batch, length, generator=gen) < 0.2] = PAD
    target[0, :3] = torch.tensor([100 + PAD, 200 + PAD, 200 + PAD])
    return target


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
def test_chunked_loss_equals_unchunked_and_plain(adaptive_softmax, chunk_tokens):
    adaptive_softmax.train()  # its dropout is 0 here, so still deterministic
    hidden, target = hidden_states(), targets()
    params = [hidden, *adaptive_softmax.parameters()]

    loss, nll, kl = adaptive_rdrop_loss(adaptive_softmax, hidden, target, COPIES, 2.0, PAD, chunk_tokens)
    got = torch.autograd.grad(loss, params)
    whole = adaptive_rdrop_loss(adaptive_softmax, hidden, target, COPIES, 2.0, PAD, target.numel())
    whole_grads = torch.autograd.grad(whole[0], params)
    plain = plain_loss(plain_full_log_probs(adaptive_softmax, hidden.view(-1, DIM)), target, 2.0, PAD,
                       adaptive_softmax.cutoff)
    plain_grads = torch.autograd.grad(plain[0], params)

    assert kl > 0 and not kl.requires_grad and not nll.requires_grad
    assert loss.dtype == nll.dtype == kl.dtype == torch.float32
    torch.testing.assert_close(loss, nll + 2.0 * kl)
    for got_term, whole_term in zip((loss, nll, kl), whole):
        torch.testing.assert_close(got_term, whole_term, rtol=1e-5, atol=1e-5)
    for got_term, plain_term in zip((loss, nll, kl), plain):
        torch.testing.assert_close(got_term, plain_term, rtol=1e-4, atol=1e-4)
    assert_close_to_scale(got, whole_grads, rel=1e-5, msg="chunked vs whole")
    assert_close_to_scale(got, plain_grads, rel=1e-4, msg="chunked vs plain")


def test_half_precision_scores_are_normalised_in_fp32(adaptive_softmax):
    """A half-precision module's head and tail scores go through log-softmax in fp32, not in fp16."""
    module = adaptive_softmax.half()
    hidden = hidden_states().detach().half().view(-1, DIM)
    with torch.no_grad():
        got = full_log_probs(module, hidden)
        head = F.log_softmax(module.head(hidden).float(), dim=-1)
        shortlist = module.cutoff[0]
        expected = torch.cat([head[:, :shortlist]] + [
            F.log_softmax(tail(hidden).float(), dim=-1) + head[:, shortlist + i, None]
            for i, tail in enumerate(module.tail)
        ], dim=-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def small_adaptive_softmax(dropout):
    """Vocabulary 12, shortlist 4, tails [4, 5), [5, 8), [8, 12) in float64: a one-word tail, too small
    to hold an index PAD, and two whose word at index PAD counts only by its cluster (6 and 9)."""
    torch.manual_seed(0)
    return AdaptiveSoftmax(12, 8, [4, 5, 8], dropout=dropout, factor=2.0).double().train()


SMALL_TARGET = torch.tensor([[4, 5, 6, PAD, 9], [PAD, 0, 11, 7, 5]])


def test_a_tail_too_small_for_the_pad_index_counts_all_its_words(adaptive_softmax):
    module = small_adaptive_softmax(dropout=0.0)
    hidden = torch.randn(COPIES * 2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss, nll, kl = adaptive_rdrop_loss(module, hidden, SMALL_TARGET, COPIES, 2.0, PAD, chunk_tokens=3)
    plain = plain_loss(plain_full_log_probs(module, hidden.view(-1, 8)), SMALL_TARGET, 2.0, PAD, module.cutoff)
    for got_term, plain_term in zip((loss, nll, kl), plain):
        torch.testing.assert_close(got_term, plain_term.to(got_term.dtype), rtol=1e-6, atol=1e-6)


def test_gradcheck_with_dropout_on_input_and_tails():
    """float64 finite differences against the gradient of the loss, with respect to the features and
    every weight of the head and the tails, input and tail dropout drawn alike in every evaluation."""
    module = small_adaptive_softmax(dropout=0.3)
    names, weights = zip(*module.named_parameters())
    hidden = torch.randn(COPIES * 2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                         requires_grad=True)

    def loss_of(hidden, *weights):
        torch.manual_seed(5)
        # the module's own parameters, or the perturbed ones gradcheck passes
        return torch.func.functional_call(module, dict(zip(names, weights)), (hidden,))

    module.forward = lambda hidden: adaptive_rdrop_loss(module, hidden, SMALL_TARGET, COPIES, 2.0, PAD,
                                                        chunk_tokens=3)[0]
    assert torch.autograd.gradcheck(loss_of, (hidden, *weights), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_default_chunk_holds_about_2_to_the_24_probabilities():
    for vocab, copies in ((300, 2), (300, 3), (267_744, 2), (267_744, 4)):
        tokens = chunk_tokens_for(10**9, vocab, copies)
        assert tokens * copies * vocab <= DEFAULT_CHUNK_ELEMENTS < (tokens + 1) * copies * vocab
    assert chunk_tokens_for(10**9, 2 * DEFAULT_CHUNK_ELEMENTS, 2) == 1  # one token even above the budget
    assert chunk_tokens_for(5, 300, 2) == chunk_tokens_for(5, 300, 2, chunk_tokens=9) == 5
    assert chunk_tokens_for(10**9, 300, 2, chunk_tokens=9) == 9


def test_an_all_padding_batch_gives_zero_loss_and_zero_gradients(adaptive_softmax):
    hidden, target = hidden_states(), torch.full((4, 10), PAD)
    params = [hidden, *adaptive_softmax.parameters()]
    loss, nll, kl = adaptive_rdrop_loss(adaptive_softmax, hidden, target, COPIES, 2.0, PAD)
    assert loss.item() == nll.item() == kl.item() == 0.0
    grads = torch.autograd.grad(loss, params)  # no "does not require grad" from an empty sum
    assert all(grad is not None and not grad.any() for grad in grads)


def test_gradient_is_that_of_the_returned_loss_with_dropout(adaptive_softmax):
    """With input and tail dropout active, backward recomputes each chunk under the masks its
    forward drew: the gradient's directional derivative matches central differences of the
    loss drawn under the same seed."""
    for module in adaptive_softmax.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    adaptive_softmax.dropout_module.p = 0.3
    adaptive_softmax.train()
    hidden, target = hidden_states().double(), targets()
    adaptive_softmax.double()
    direction = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def loss_at(h):
        torch.manual_seed(5)
        return adaptive_rdrop_loss(adaptive_softmax, h, target, COPIES, 2.0, PAD, chunk_tokens=3)[0]

    (grad,) = torch.autograd.grad(loss_at(hidden), [hidden])
    step = 3e-2
    with torch.no_grad():
        central = (loss_at(hidden + step * direction) - loss_at(hidden - step * direction)) / (2 * step)
    torch.testing.assert_close((grad * direction).sum().float(), central.float(), rtol=2e-3, atol=1e-3)


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


def largest_tensor_of_loss_step(module, hidden, target, chunk_tokens):
    with LargestOutput() as mode:
        loss, _, _ = adaptive_rdrop_loss(module, hidden, target, COPIES, 1.0, PAD, chunk_tokens)
        loss.backward()
    return mode.numel


def test_memory_is_bounded_by_the_chunk(adaptive_softmax):
    adaptive_softmax.train()
    hidden = hidden_states(batch=4, length=10)
    target = targets(batch=4, length=10).clamp(min=PAD + 1)  # all 40 tokens kept
    chunk = 4
    largest_param = max(p.numel() for p in adaptive_softmax.parameters())
    assert largest_param < COPIES * chunk * VOCAB < COPIES * target.numel() * VOCAB

    assert largest_tensor_of_loss_step(adaptive_softmax, hidden, target, chunk) <= COPIES * chunk * VOCAB
    # The same probe sees the full tokens x V tensor when there is one chunk.
    assert largest_tensor_of_loss_step(adaptive_softmax, hidden, target, 40) >= COPIES * 40 * VOCAB
