import itertools

import pytest
import torch
import torch.nn.functional as F

from rdrop_fairseq.rdrop_loss import rdrop_loss, rdrop_loss_from_logits
from reference import reference_loss

PAD = 1
# the two entry points: log-probabilities made by log-softmax, or the logits themselves
ENTRIES = ["lprobs", "logits"]


def loss_of(entry, logits, *args, **kwargs):
    if entry == "lprobs":
        return rdrop_loss(F.log_softmax(logits, dim=-1), *args, **kwargs)
    return rdrop_loss_from_logits(logits, *args, **kwargs)


def make_case(copies=2, tokens=13, vocab=11, dtype=torch.float64, seed=0, pad_every=4):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(copies * tokens, vocab, generator=gen, dtype=dtype) * 2
    target = torch.randint(2, vocab, (tokens,), generator=gen)
    target[::pad_every] = PAD
    return logits, target


def both(logits, target, copies, alpha, epsilon, chunk_tokens=0, entry="lprobs"):
    leaf_ref = logits.detach().clone().requires_grad_()
    leaf_new = logits.detach().clone().requires_grad_()
    ref = reference_loss(leaf_ref, target, copies, alpha, epsilon, PAD)
    new = loss_of(entry, leaf_new, target, copies, alpha, epsilon, PAD, chunk_tokens)
    ref[0].backward()
    new[0].backward()
    return ref, new, leaf_ref.grad, leaf_new.grad


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("alpha,epsilon", [(5.0, 0.1), (1.0, 0.0), (0.3, 0.2), (0.0, 0.1)])
def test_value_and_gradient_match_reference(copies, alpha, epsilon, entry):
    logits, target = make_case(copies)
    ref, new, grad_ref, grad_new = both(logits, target, copies, alpha, epsilon, entry=entry)
    compared = 4 if alpha else 3  # at alpha 0 the KL is not computed
    for r, n in zip(ref[:compared], new[:compared]):
        torch.testing.assert_close(n.double(), r.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_new, grad_ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("entry", ENTRIES)
def test_padding_tokens_contribute_nothing(entry):
    logits, target = make_case(pad_every=3)
    _, new, _, grad = both(logits, target, 2, 5.0, 0.1, entry=entry)
    pad_rows = target.eq(PAD).repeat(2)
    assert grad[pad_rows].abs().max() == 0
    assert grad[~pad_rows].abs().max() > 0
    # scrambling the logits at padded positions changes nothing
    scrambled = logits.clone()
    scrambled[pad_rows] = torch.randn_like(scrambled[pad_rows]) * 10
    _, again, _, _ = both(scrambled, target, 2, 5.0, 0.1, entry=entry)
    torch.testing.assert_close(again[0], new[0])


@pytest.mark.parametrize("entry", ENTRIES)
def test_alpha_zero_is_label_smoothed_nll_of_every_copy(entry):
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    logits, target = make_case()
    lprobs = F.log_softmax(logits, dim=-1)
    loss, smoothed, nll, kl = loss_of(entry, logits, target, 2, 0.0, 0.1, PAD)
    stock = sum(
        label_smoothed_nll_loss(half, target, 0.1, ignore_index=PAD)[0] for half in lprobs.chunk(2)
    )
    torch.testing.assert_close(loss, stock, rtol=1e-6, atol=1e-6)
    assert kl == 0  # the KL is not even computed


@pytest.mark.parametrize("entry", ENTRIES)
def test_kl_is_symmetric_and_zero_for_identical_copies(entry):
    logits, target = make_case()
    swapped = torch.cat(logits.chunk(2)[::-1])
    kl = loss_of(entry, logits, target, 2, 1.0, 0.0, PAD)[3]
    kl_swapped = loss_of(entry, swapped, target, 2, 1.0, 0.0, PAD)[3]
    torch.testing.assert_close(kl, kl_swapped)
    same = torch.cat([logits[: len(logits) // 2]] * 2)
    assert loss_of(entry, same, target, 2, 1.0, 0.0, PAD)[3] == 0


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("chunk_tokens", [1, 4, 5, 1000])
def test_chunked_equals_unchunked(chunk_tokens, entry):
    logits, target = make_case(tokens=17)
    _, whole, _, grad_whole = both(logits, target, 2, 5.0, 0.1, chunk_tokens=0, entry=entry)
    _, chunked, _, grad_chunked = both(logits, target, 2, 5.0, 0.1, chunk_tokens=chunk_tokens, entry=entry)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad_whole, grad_chunked)


def test_gradcheck_float64():
    logits, target = make_case(tokens=5, vocab=7)
    lprobs_leaf = F.log_softmax(logits, -1).detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda lp: rdrop_loss(lp, target, 2, 3.0, 0.1, PAD)[0], (lprobs_leaf,), eps=1e-6, atol=1e-5
    )
    logits_leaf = logits.detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: rdrop_loss_from_logits(z, target, 2, 3.0, 0.1, PAD)[0], (logits_leaf,), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_kl_only_without_target(entry):
    logits, target = make_case(pad_every=100)
    loss, smoothed, nll, kl = loss_of(entry, logits, None, 2, 2.0)
    assert smoothed == 0 and nll == 0
    torch.testing.assert_close(loss, 2.0 * kl)
    ref_kl = reference_loss(logits, target, 2, 1.0, 0.0, pad=-1)[3]
    torch.testing.assert_close(kl, ref_kl, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("entry", ENTRIES)
def test_bfloat16_matches_float32(entry):
    logits, target = make_case(tokens=64, vocab=50, dtype=torch.float32)
    lp32 = (F.log_softmax(logits, -1) if entry == "lprobs" else logits).requires_grad_()
    lp16 = lp32.detach().bfloat16().requires_grad_()
    rounded = lp16.detach().float().requires_grad_()
    apply = rdrop_loss if entry == "lprobs" else rdrop_loss_from_logits
    out32, out16, out_rounded = (apply(x, target, 2, 5.0, 0.1, PAD) for x in (lp32, lp16, rounded))
    for out in (out32, out16, out_rounded):
        out[0].backward()
    assert all(torch.isfinite(t) for t in out16)
    assert lp16.grad.dtype == torch.bfloat16
    # bf16 inputs are computed in fp32: the same values in fp32 give the same loss, and the
    # gradient differs only by its rounding to bf16
    for a, b in zip(out16, out_rounded):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lp16.grad.float(), rounded.grad, rtol=2**-8, atol=1e-6)
    # against the unrounded fp32 input: bf16 keeps ~3 significant digits of its input, so
    # the gaps x_i - x_j (|x| up to ~8) carry errors up to ~2e-2
    torch.testing.assert_close(out16[0], out32[0], rtol=2e-2, atol=0.0)
    torch.testing.assert_close(out16[3], out32[3], rtol=0.1, atol=1e-2)
    torch.testing.assert_close(lp16.grad.float(), lp32.grad, rtol=0.05, atol=2e-2)


@pytest.mark.parametrize("entry", ENTRIES)
def test_masked_vocabulary_entries_give_no_nan(entry):
    logits, target = make_case(dtype=torch.float32)
    logits[:, 0] = float("-inf")  # masked in every copy
    leaf = (F.log_softmax(logits, -1) if entry == "lprobs" else logits).requires_grad_()
    apply = rdrop_loss if entry == "lprobs" else rdrop_loss_from_logits
    loss, _, _, kl = apply(leaf, target, 2, 5.0, 0.0, PAD)
    loss.backward()
    assert torch.isfinite(kl) and torch.isfinite(loss)
    assert torch.isfinite(leaf.grad).all()
    unmasked = F.log_softmax(logits[:, 1:], -1)
    kl_unmasked = rdrop_loss(unmasked, target - 1, 2, 5.0, 0.0, PAD - 1)[3]
    torch.testing.assert_close(kl, kl_unmasked)


def masked_reference(scores, target, copies, alpha, epsilon, pad, from_logits, gap_limit=None):
    """Eq. 4 for ``(copies * N, V)`` scores that may hold -inf, written plainly: padded
    tokens are dropped before anything is computed on them, and KL(P_i || P_j) sums
    p_i (log p_i - log p_j) over the entries where p_i > 0 only (0 log(0/0) = 0).  With
    ``gap_limit``, a log p_j of -inf there counts as log p_i - gap_limit (values only)."""
    vocab = scores.size(-1)
    keep = target.ne(pad)
    kept = scores.view(copies, -1, vocab)[:, keep]
    lprobs = F.log_softmax(kept, dim=-1) if from_logits else kept
    eps_i = epsilon / (vocab - 1)
    nll = -lprobs.gather(-1, target[keep].expand(copies, -1).unsqueeze(-1)).sum()
    smoothed = (1 - epsilon - eps_i) * nll
    if epsilon:  # +inf where a kept score is -inf
        smoothed = smoothed - eps_i * lprobs.sum()
    kl = 0.0
    for i, j in itertools.permutations(range(copies), 2):
        support = lprobs[i] > float("-inf")
        lp_i, lp_j = lprobs[i][support], lprobs[j][support]
        if gap_limit is not None:
            lp_j = torch.where(lp_j == float("-inf"), lp_i - gap_limit, lp_j)
        kl = kl + (lp_i.exp() * (lp_i - lp_j)).sum()
    kl = kl / (copies * (copies - 1))
    return smoothed + alpha * kl, smoothed, nll, kl


def test_masked_reference_is_the_plain_reference_on_finite_scores():
    logits, target = make_case(copies=3)
    plain = reference_loss(logits, target, 3, 5.0, 0.1, PAD)
    for r, m in zip(plain, masked_reference(logits, target, 3, 5.0, 0.1, PAD, from_logits=True)):
        torch.testing.assert_close(m, r, rtol=1e-12, atol=1e-12)


def scores_of(entry, logits):
    """What the entry point is handed: the logits, or log-probabilities made of them."""
    return F.log_softmax(logits, dim=-1) if entry == "lprobs" else logits.clone()


def run_leaf(entry, scores, target, copies, alpha, epsilon, chunk_tokens=0):
    leaf = scores.detach().clone().requires_grad_()
    apply = rdrop_loss if entry == "lprobs" else rdrop_loss_from_logits
    out = apply(leaf, target, copies, alpha, epsilon, PAD, chunk_tokens)
    out[0].backward()
    return out, leaf.grad


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("masked", ["whole_row", "some_entries"])
@pytest.mark.parametrize("layout,chunk_tokens", [("copy_major", 0), ("copy_major", 2), ("interleaved", 3)])
def test_minus_infinity_at_padded_tokens_changes_nothing(entry, epsilon, masked, layout, chunk_tokens):
    """A padded token's scores may be -inf (all of them, or some, the target id PAD among
    them): the loss and its gradient are those of any finite scores there."""
    copies, batch, length = 2, 3, 5
    logits, target = make_case(copies, tokens=batch * length, pad_every=3)
    finite = scores_of(entry, logits)
    pad_rows = target.eq(PAD).repeat(copies)
    with_inf = finite.clone()
    if masked == "whole_row":
        with_inf[pad_rows] = float("-inf")
    else:
        with_inf[pad_rows.nonzero(), torch.tensor([0, PAD, 6])] = float("-inf")
    if layout == "interleaved":
        finite, with_inf = (interleaved(s, copies, batch) for s in (finite, with_inf))
        target = target.view(batch, length)
    (ref, ref_grad), (new, new_grad) = (
        run_leaf(entry, s, target, copies, 5.0, epsilon, chunk_tokens) for s in (finite, with_inf)
    )
    assert all(torch.isfinite(t) for t in new) and torch.isfinite(new_grad).all()
    for r, n in zip(ref, new):
        torch.testing.assert_close(n, r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new_grad, ref_grad, rtol=1e-12, atol=1e-12)
    if layout == "interleaved":
        pad_rows = interleaved(pad_rows.view(-1, 1), copies, batch).view(-1)
    assert new_grad.view(len(pad_rows), -1)[pad_rows].abs().max() == 0
    assert new_grad.view(len(pad_rows), -1)[~pad_rows].abs().max() > 0


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("chunk_tokens", [0, 4])
def test_minus_infinity_at_non_target_entries_of_every_copy(entry, copies, epsilon, chunk_tokens):
    """A model that masks vocabulary entries with -inf (the pad symbol everywhere, and some
    others per token) in every copy: where both copies give p = 0 the KL has nothing, so
    the KL and NLL stay finite; the smoothing term sums log p over the whole vocabulary and
    is +inf where an entry is masked, as fairseq's label_smoothed_nll_loss has it."""
    logits, target = make_case(copies, tokens=17, vocab=13)
    gen = torch.Generator().manual_seed(5)
    mask = torch.rand(target.numel(), logits.size(-1), generator=gen) < 0.3
    mask[:, PAD] = True  # at padded tokens, whose target is PAD, the target's score is -inf too
    keep = target.ne(PAD)
    mask[keep.nonzero().squeeze(-1), target[keep]] = False
    logits = logits.masked_fill(mask.repeat(copies, 1), float("-inf"))
    scores = scores_of(entry, logits)
    (new, grad) = run_leaf(entry, scores, target, copies, 5.0, epsilon, chunk_tokens)
    leaf = scores.detach().clone().requires_grad_()
    ref = masked_reference(leaf, target, copies, 5.0, epsilon, PAD, from_logits=entry == "logits")
    ref[0].backward()
    assert torch.isfinite(new[2]) and torch.isfinite(new[3]) and new[3] > 0
    assert torch.isfinite(new[0]) == (epsilon == 0) and not torch.isnan(new[0])
    for r, n in zip(ref, new):
        torch.testing.assert_close(n, r, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-10, atol=1e-12)
    assert grad[target.eq(PAD).repeat(copies)].abs().max() == 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_rejects_rows_that_do_not_split_into_copies(entry):
    logits, target = make_case()
    with pytest.raises(ValueError, match="copies"):
        loss_of(entry, logits[:-1], target, 2, 1.0)


def saved_elements(fn, *inputs):
    """Elements of every tensor autograd keeps for backward while ``fn`` runs."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*inputs)[0].sum().backward()
    return saved


def test_logits_entry_saves_only_its_input_and_one_value_per_row():
    logits, target = make_case(copies=2, tokens=40, vocab=300, dtype=torch.float32)
    leaf = logits.requires_grad_()
    before = leaf.detach().clone()
    saved = saved_elements(lambda z: rdrop_loss_from_logits(z, target, 2, 5.0, 0.1, PAD), leaf)
    assert sorted(saved, reverse=True)[:2] == [logits.numel(), len(logits)]
    assert sum(saved) < logits.numel() + 3 * len(logits)
    assert torch.equal(leaf.detach(), before)
    # the log-softmax route keeps a second (copies * N, V) tensor: log-softmax's output
    via_lprobs = saved_elements(lambda z: rdrop_loss(F.log_softmax(z, -1), target, 2, 5.0, 0.1, PAD), leaf)
    assert sorted(via_lprobs, reverse=True)[:2] == [logits.numel(), logits.numel()]


def interleaved(copy_major, copies, batch):
    """``(copies * B * T, V)`` copy after copy -> ``(copies * B, T, V)`` with sample b's copies adjacent."""
    vocab = copy_major.size(-1)
    return copy_major.view(copies, batch, -1, vocab).transpose(0, 1).reshape(copies * batch, -1, vocab)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("chunk_tokens", [0, 2, 7])
def test_interleaved_layout_equals_copy_major(entry, copies, chunk_tokens):
    batch, length = 3, 5
    logits, target = make_case(copies, tokens=batch * length)
    ref, _, grad_ref, _ = both(logits, target, copies, 5.0, 0.1, entry=entry)
    leaf = interleaved(logits, copies, batch).detach().requires_grad_()
    new = loss_of(entry, leaf, target.view(batch, length), copies, 5.0, 0.1, PAD, chunk_tokens)
    new[0].backward()
    for r, n in zip(ref, new):
        torch.testing.assert_close(n, r, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(leaf.grad, interleaved(grad_ref, copies, batch), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("entry", ENTRIES)
def test_interleaved_layout_takes_a_strided_view(entry):
    """``--ignore-prefix-size`` hands over ``scores[:, prefix:]``, which is not contiguous."""
    copies, batch, length = 2, 3, 6
    logits, target = make_case(copies, tokens=batch * length)
    full = interleaved(logits, copies, batch)
    trimmed = full[:, 2:]
    assert not trimmed.is_contiguous()
    leaf = full.detach().requires_grad_()
    new = loss_of(entry, leaf[:, 2:], target.view(batch, length)[:, 2:], copies, 5.0, 0.1, PAD, 4)
    new[0].backward()
    dense = trimmed.detach().contiguous().requires_grad_()
    ref = loss_of(entry, dense, target.view(batch, length)[:, 2:].contiguous(), copies, 5.0, 0.1, PAD)
    ref[0].backward()
    torch.testing.assert_close(new[0], ref[0])
    torch.testing.assert_close(leaf.grad[:, 2:], dense.grad)
    assert leaf.grad[:, :2].abs().max() == 0


@pytest.mark.parametrize("outputs", [1, 2])
def test_regression_loss_matches_a_plain_reference(outputs):
    from rdrop_fairseq.rdrop_loss import rdrop_regression_loss

    gen = torch.Generator().manual_seed(3)
    copies, batch, alpha = 3, 5, 0.7
    predictions = torch.randn(copies * batch, outputs, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(batch, outputs, generator=gen, dtype=torch.float64)
    loss, mse, consistency = rdrop_regression_loss(predictions, target.squeeze(-1), copies, alpha)
    loss.backward()
    y = predictions.detach().clone().requires_grad_()
    ref_mse = ref_consistency = 0.0
    for b in range(batch):
        for c in range(outputs):
            for k in range(copies):
                ref_mse = ref_mse + (y[b * copies + k, c] - target[b, c]) ** 2
            for i in range(copies):
                for j in range(copies):
                    if i != j:
                        gap = y[b * copies + i, c] - y[b * copies + j, c]
                        ref_consistency = ref_consistency + gap**2 / (copies * (copies - 1))
    (ref_mse + alpha * ref_consistency).backward()
    torch.testing.assert_close(mse, ref_mse)
    torch.testing.assert_close(consistency, ref_consistency)
    torch.testing.assert_close(predictions.grad, y.grad)
    with pytest.raises(ValueError, match="copies"):
        rdrop_regression_loss(predictions[:-1], target, copies, alpha)


def cuda_scores(dtype=torch.float16):
    """What kernel_for reads of a CUDA tensor, on a machine without CUDA."""
    from types import SimpleNamespace
    return SimpleNamespace(is_cuda=True, dtype=dtype, device=torch.device("cuda", 0))


@pytest.mark.parametrize("version, chosen", [(None, "torch"), ((3, 2, 0), "torch"), ((3, 3, 1), "triton"),
                                             ((3, 9, 0), "triton")])
def test_auto_takes_the_fused_kernels_only_from_a_triton_they_were_checked_with(monkeypatch, version, chosen):
    from rdrop_fairseq import rdrop_loss as module
    monkeypatch.delenv("RDROP_KERNEL", raising=False)
    monkeypatch.setattr(module, "_triton_version", lambda: version)
    assert module.kernel_for(cuda_scores()) == chosen
    assert module.kernel_for(cuda_scores(torch.float64)) == "torch"


def test_auto_leaves_more_copies_than_the_kernels_unroll_to_torch(monkeypatch):
    from rdrop_fairseq import rdrop_loss as module
    monkeypatch.setattr(module, "_triton_version", lambda: (3, 6, 0))
    monkeypatch.delenv("RDROP_KERNEL", raising=False)
    assert [module.kernel_for(cuda_scores(), copies) for copies in (2, 8, 9)] == ["triton", "triton", "torch"]
    monkeypatch.setenv("RDROP_KERNEL", "triton")  # forced, as asked
    assert module.kernel_for(cuda_scores(), 9) == "triton"


def test_auto_keeps_torch_on_rocm_where_the_kernels_were_not_checked(monkeypatch):
    from rdrop_fairseq import rdrop_loss as module
    monkeypatch.setattr(module, "_triton_version", lambda: (3, 6, 0))
    monkeypatch.delenv("RDROP_KERNEL", raising=False)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert module.kernel_for(cuda_scores()) == "torch"
    monkeypatch.setenv("RDROP_KERNEL", "triton")  # forced, as asked
    assert module.kernel_for(cuda_scores()) == "triton"


def test_forcing_triton_older_than_the_checked_one_names_both_versions(monkeypatch):
    from rdrop_fairseq import rdrop_loss as module
    monkeypatch.setenv("RDROP_KERNEL", "triton")
    monkeypatch.setattr(module, "_triton_version", lambda: (3, 1, 0))
    with pytest.raises(RuntimeError, match=r"RDROP_KERNEL=triton needs Triton >= 3\.3.*Triton 3\.1\.0"):
        module.kernel_for(cuda_scores())
    monkeypatch.setattr(module, "_triton_version", lambda: None)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        module.kernel_for(cuda_scores())


@pytest.mark.parametrize("triton_version, numpy_version, refused", [
    ((3, 6, 0), (2, 4, 0), True), ((3, 6, 0), (2, 3, 5), False), ((3, 7, 1), (2, 4, 6), False)])
def test_forcing_the_interpreter_where_it_cannot_run_is_refused(monkeypatch, triton_version, numpy_version, refused):
    from rdrop_fairseq import rdrop_loss as module
    monkeypatch.setenv("RDROP_KERNEL", "triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, "_triton_version", lambda: triton_version)
    monkeypatch.setattr(module, "_numpy_version", lambda: numpy_version)
    scores = torch.zeros(4, 10)
    if refused:
        with pytest.raises(RuntimeError, match=r"Triton 3\.7 fails with numpy >= 2\.4.*Triton 3\.6\.0 with numpy 2\.4"):
            module.kernel_for(scores)
    else:
        assert module.kernel_for(scores) == "triton"
    assert module.kernel_for(cuda_scores()) == "triton"  # compiled, not interpreted


def test_triton_and_numpy_versions_are_read_as_release_numbers():
    from rdrop_fairseq import rdrop_loss as module
    assert module.version_numbers("3.6.0+git1a2b3c") == (3, 6, 0) and module.version_numbers("2.4.0rc1") == (2, 4, 0)
    assert module.version_numbers("3.3.1") >= module.MIN_TRITON > module.version_numbers("3.2.0")
    installed = module._triton_version()
    assert installed is None or len(installed) >= 2


@pytest.mark.parametrize("entry", ENTRIES)
def test_autocast_does_not_lower_the_precision_of_the_sums(monkeypatch, entry):
    # fairseq's --amp runs the criterion under autocast, which would run vecdot in half precision
    monkeypatch.setenv("RDROP_KERNEL", "torch")
    logits, target = make_case(tokens=64, vocab=500, dtype=torch.float32, seed=3)
    logits[64:] = logits[:64] + 0.01 * torch.randn_like(logits[:64])  # copies that nearly agree
    plain = loss_of(entry, logits, target, 2, 5.0, 0.1, PAD)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = loss_of(entry, logits, target, 2, 5.0, 0.1, PAD)
    for p, a in zip(plain, autocast):
        torch.testing.assert_close(a, p, rtol=1e-6, atol=0)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("bad", [11, -3])
def test_a_target_outside_the_vocabulary_is_an_error(monkeypatch, entry, bad):
    monkeypatch.setenv("RDROP_KERNEL", "torch")
    logits, target = make_case()
    target[5] = bad  # a negative id would otherwise be read as id 0
    with pytest.raises(RuntimeError, match=r"outside the vocabulary \[0, 11\) and is not the ignore_index 1"):
        loss_of(entry, logits, target, 2, 5.0, 0.1, PAD)
    target[5] = -100
    assert torch.isfinite(loss_of(entry, logits, target, 2, 5.0, 0.1, -100)[0])


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("ignore_index", [-100, 11, 1000])
def test_an_ignore_index_outside_the_vocabulary_pads_as_one_inside_it(monkeypatch, entry, ignore_index):
    monkeypatch.setenv("RDROP_KERNEL", "torch")
    logits, target = make_case()
    expected, expected_grad = run_leaf(entry, scores_of(entry, logits), target, 2, 5.0, 0.1)  # PAD is in it
    leaf = scores_of(entry, logits).detach().requires_grad_()
    apply = rdrop_loss if entry == "lprobs" else rdrop_loss_from_logits
    got = apply(leaf, target.masked_fill(target.eq(PAD), ignore_index), 2, 5.0, 0.1, ignore_index)
    got[0].backward()
    for got_term, expected_term in zip(got, expected):
        torch.testing.assert_close(got_term, expected_term, rtol=0, atol=0)
    torch.testing.assert_close(leaf.grad, expected_grad, rtol=0, atol=0)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("with_target", [True, False])
def test_gradcheck_float64_interleaved_and_chunked(entry, copies, with_target):
    # without a target there is no NLL, and so no smoothing term either, whatever epsilon says
    batch, length = 2, 3
    logits, target = make_case(copies, tokens=batch * length, vocab=5, pad_every=4)
    leaf = interleaved(scores_of(entry, logits), copies, batch).detach().requires_grad_()
    target = target.view(batch, length) if with_target else None
    apply = rdrop_loss if entry == "lprobs" else rdrop_loss_from_logits
    assert torch.autograd.gradcheck(
        lambda x: apply(x, target, copies, 3.0, 0.1, PAD, chunk_tokens=2)[0], (leaf,), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_only_the_loss_carries_a_gradient(entry):
    logits, target = make_case()
    loss, smoothed, nll, kl = loss_of(entry, logits.requires_grad_(), target, 2, 5.0, 0.1, PAD)
    assert loss.requires_grad
    assert not (smoothed.requires_grad or nll.requires_grad or kl.requires_grad)


@pytest.mark.parametrize("entry", ENTRIES)
def test_scores_targets_and_copies_that_do_not_fit_are_refused(entry):
    logits, target = make_case()
    with pytest.raises(ValueError, match=r"scores must be \(copies \* N, V\) or \(copies \* B, T, V\), got shape \(286,\)"):
        loss_of(entry, logits.flatten(), target, 2, 1.0)
    with pytest.raises(ValueError, match=r"got shape \(1, 26, 1, 11\)"):
        loss_of(entry, logits.view(1, 26, 1, 11), target, 2, 1.0)
    with pytest.raises(ValueError, match=r"target must be \(13,\), one entry per token of one copy .* got shape \(12,\)"):
        loss_of(entry, logits, target[:-1], 2, 1.0)
    with pytest.raises(ValueError, match="cannot be split into 0 copies"):
        loss_of(entry, logits, target, 0, 1.0)


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_target_of_the_right_size_in_another_shape_is_refused(entry):
    logits, target = make_case(tokens=12)
    batch = logits.view(2 * 3, 4, 11)  # (copies * B, T, V) with B = 3 and T = 4
    with pytest.raises(ValueError, match=r"target must be \(3, 4\), .* got shape \(4, 3\)"):
        loss_of(entry, batch, target.view(4, 3), 2, 1.0)  # (T, B) would pair tokens with other rows' scores
    with pytest.raises(ValueError, match=r"target must be \(3, 4\), .* got shape \(12,\)"):
        loss_of(entry, batch, target, 2, 1.0)
    with pytest.raises(ValueError, match=r"target must be \(12,\), .* got shape \(3, 4\)"):
        loss_of(entry, logits, target.view(3, 4), 2, 1.0)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("copies", [2, 3])
def test_minus_infinity_in_one_copy_only_caps_the_gap(entry, copies):
    """Where one copy puts no mass on an entry that another copy gives mass, KL(P_i || P_j) is
    infinite: each such gap counts as _LOG_GAP_LIMIT, so that the step stays usable."""
    from rdrop_fairseq.rdrop_loss import _LOG_GAP_LIMIT

    logits, target = make_case(copies, tokens=9, vocab=13)
    target = torch.where(target.eq(PAD), target, target.clamp(min=4))
    logits.view(copies, 9, 13)[1, :, 2:4] = float("-inf")  # entries 2 and 3 in the second copy only
    scores = scores_of(entry, logits)
    new, grad = run_leaf(entry, scores, target, copies, 5.0, 0.0)
    ref = masked_reference(scores, target, copies, 5.0, 0.0, PAD, from_logits=entry == "logits",
                           gap_limit=_LOG_GAP_LIMIT)
    assert ref[3] > 1.0 and torch.isfinite(grad).all()
    for r, n in zip(ref, new):
        torch.testing.assert_close(n, r, rtol=1e-10, atol=1e-10)
