"""The R-Drop loss of :mod:`rdrop_fairseq.rdrop_loss` as two fused Triton kernels (and a third for tokens
whose scores hold -inf).

One program per target token handles all ``m`` copies of it, walking over the vocabulary
in blocks:

* forward: an online log-sum-exp per copy, with the scores centred on the copy's running
  max ``c`` (``y = z - c``); the target score and the sum of the scores (label smoothing);
  and for every ordered pair of copies ``A_ij = sum_v exp(y_i) (y_i - y_j)``, moved and
  rescaled whenever a running max moves.  At the end, with ``S = sum_v exp(y)``,
  ``KL(P_i || P_j) = A_ij / S_i - log S_i + log S_j``.  No two log-normalisers are
  subtracted, so a constant offset between the copies' logits (which changes nothing)
  costs no precision.  The three terms still cancel where the copies nearly agree: the
  KL's error is about 1e-7 per token, which is a large part of the KL of copies that
  differ by 1e-3 (the logged ``kl_loss``).  The gradient's terms are made from the
  differences themselves, but from logits its log-softmax chain subtracts ``p`` times the KL
  row sum, which carries that error: about ``s * 1e-7 * p`` per score (``s`` below), far
  under the NLL's part; with the KL alone (no target) and copies that differ by 1e-5 it was
  2% of the largest gradient, against 0.2% for the torch Function in fp32.  It keeps ``c``,
  ``log S`` and one KL row sum per (token, copy) for backward.
* backward: writes the whole gradient of a token in one pass: with ``x = y - log S``,
  ``p = exp(x)`` and ``s = alpha / (m (m - 1))``, the KL part for log-probabilities is
  ``s sum_{j != i} [p_i (x_i - x_j) + p_i - p_j]``, the smoothed NLL part is ``-eps_i``
  everywhere and ``-(1 - eps - eps_i)`` at the target, and from logits the log-softmax
  chain subtracts ``p_i`` times the row sum of that, which is known in closed form
  (``s * sum_j KL(P_i || P_j)`` plus the NLL part's constant), so no extra pass is needed.

Inputs are fp32, bf16 or fp16, loaded and accumulated in fp32; the gradient is written in
the input's dtype into one buffer of the input's size.  On a machine without CUDA the
kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests
check them against the torch Function.

Where one copy alone has -inf (its P is 0 where another's is not) the KL is infinite, and
both this and the torch Function cap the infinite gap at 1e4 (finite gaps are kept, however
large).  The log-normalisers do not shift a capped gap; the forward pass's centres did, so a
token whose scores hold -inf has its KL made again by a third kernel, which also sums the mass
that each cap carries (``_rdrop_capped_kl_kernel``): the KL is the torch Function's, and the
backward pass's closed-form row sum the row sum of its own gradient.  Every other token's program
there reads one number and ends.

A target outside the vocabulary is an error (``rdrop_loss._check_targets``), and the loss is
differentiable once: a backward with ``create_graph=True`` is refused.
"""
import contextlib
import os
import sys

import torch

from ..rdrop_loss import refuse_double_backward


def _triton_imported_for_the_compiler() -> bool:
    """Triton builds its library functions (tl.max, ...) for the interpreter or the compiler when it is
    first imported; TRITON_INTERPRET=1 set later changes only the functions built after it."""
    if "triton" not in sys.modules:
        return False
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction
    return not isinstance(standard.max, InterpretedFunction)


if not torch.cuda.is_available():
    if _triton_imported_for_the_compiler():
        raise RuntimeError(
            "RDROP_KERNEL=triton without CUDA runs the kernels under Triton's interpreter, which must be "
            "chosen before Triton is imported: set TRITON_INTERPRET=1 at start-up, or use RDROP_KERNEL=torch"
        )
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# Same role as rdrop_loss._LOG_GAP_LIMIT: a NaN or infinite score gap becomes finite.
LOG_GAP_LIMIT = tl.constexpr(1.0e4)


@triton.jit
def _gap(a, b):
    gap = a - b
    gap = tl.where(gap != gap, 0.0, gap)
    gap = tl.where(gap == float("inf"), LOG_GAP_LIMIT, gap)
    return tl.where(gap == float("-inf"), -LOG_GAP_LIMIT, gap)


@triton.jit
def _row(tile, rows, i: tl.constexpr, fill):
    """Row ``i`` of a (COPIES_PAD, BLOCK) tile."""
    return tl.max(tl.where(rows[:, None] == i, tile, fill), 0)


@triton.jit
def _token_base(token, length, stride_group, stride_pos):
    group = token // length
    return group * stride_group + (token - group * length) * stride_pos


@triton.jit
def _target_and_live_rows(target_ptr, token, ignore_index, rows, row_ok, HAS_TARGET: tl.constexpr):
    """The token's target (-1 without one) and which copy rows carry loss (none for padding)."""
    if HAS_TARGET:
        tgt = tl.load(target_ptr + token).to(tl.int64)
        live = row_ok & ((rows.to(tl.int64) * 0 + tgt) != ignore_index)
    else:
        tgt = tl.full((), -1, tl.int64)
        live = row_ok
    return tgt, live


@triton.jit
def _rdrop_forward_kernel(
    scores_ptr, target_ptr, centre_ptr, log_sum_ptr, kl_row_ptr, token_terms_ptr,
    num_tokens, length, stride_group, stride_copy, stride_pos, vocab, ignore_index,
    COPIES: tl.constexpr, COPIES_PAD: tl.constexpr, BLOCK: tl.constexpr,
    HAS_TARGET: tl.constexpr, FROM_LOGITS: tl.constexpr, WITH_KL: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, COPIES_PAD)
    row_ok = rows < COPIES
    cols = tl.arange(0, BLOCK)
    base = _token_base(token, length, stride_group, stride_pos) + rows.to(tl.int64) * stride_copy
    tgt, live = _target_and_live_rows(target_ptr, token, ignore_index, rows, row_ok, HAS_TARGET)
    end = vocab * tl.max(live.to(tl.int32), 0)

    run_max = tl.full((COPIES_PAD,), float("-inf"), tl.float32)
    centre = tl.zeros((COPIES_PAD,), tl.float32)
    run_sum = tl.zeros((COPIES_PAD,), tl.float32)
    score_sum = tl.zeros((COPIES_PAD,), tl.float32)
    pair_acc = tl.zeros((COPIES_PAD, COPIES_PAD), tl.float32)
    for start in range(0, end, BLOCK):
        col = start + cols
        ok = row_ok[:, None] & (col < vocab)[None, :]
        z = tl.load(scores_ptr + base[:, None] + col[None, :], mask=ok, other=float("-inf")).to(tl.float32)
        if FROM_LOGITS:
            new_max = tl.maximum(run_max, tl.max(z, 1))
            new_centre = tl.where(new_max == float("-inf"), 0.0, new_max)
            rescale = tl.exp(run_max - new_centre)
            # What is summed so far moves with the centre: each score by the change of its own
            # centre, each pair gap by the change of the two centres.
            moved = centre - new_centre
            score_sum += start * moved
            if WITH_KL:
                # A copy whose scores were all -inf so far had no centre: the gaps to it are the cap,
                # which its first finite max must not shift by that max's level.
                pair_moved = tl.where(run_max == float("-inf"), 0.0, moved)
                pair_acc = (pair_acc + run_sum[:, None] * (pair_moved[:, None] - pair_moved[None, :])) \
                    * rescale[:, None]
            centre = new_centre
            z = z - centre[:, None]
            e = tl.exp(z)
            run_sum = run_sum * rescale + tl.sum(e, 1)
            run_max = new_max
        else:
            e = tl.exp(z)
        score_sum += tl.sum(tl.where(ok, z, 0.0), 1)
        if WITH_KL:
            for i in tl.static_range(COPIES):
                z_i = _row(z, rows, i, float("-inf"))
                e_i = _row(e, rows, i, 0.0)
                for j in tl.static_range(COPIES):
                    if i != j:
                        term = tl.sum(tl.where(e_i > 0, e_i * _gap(z_i, _row(z, rows, j, float("-inf"))), 0.0))
                        pair_acc += tl.where((rows[:, None] == i) & (rows[None, :] == j), term, 0.0)

    # log_sum = lse - centre: everything below is relative to the centres, so that no two
    # large log-normalisers are subtracted.
    if FROM_LOGITS:
        log_sum = tl.log(run_sum)
    else:
        log_sum = tl.zeros((COPIES_PAD,), tl.float32)
        run_sum = tl.full((COPIES_PAD,), 1.0, tl.float32)
    log_sum = tl.where(live, log_sum, 0.0)
    centre = tl.where(live, centre, 0.0)
    nll = tl.zeros((COPIES_PAD,), tl.float32)
    if HAS_TARGET:
        # _apply has checked the targets; this keeps a bad one from reading another token's scores
        in_row = tl.where((tgt >= 0) & (tgt < vocab), tgt, 0)
        z_target = tl.load(scores_ptr + base + in_row, mask=live, other=0.0).to(tl.float32)
        nll = tl.where(live, log_sum - (z_target - centre), 0.0)
    smooth = tl.where(live, vocab * log_sum - score_sum, 0.0)
    kl_row = tl.zeros((COPIES_PAD,), tl.float32)
    if WITH_KL:
        pair_ok = live[:, None] & row_ok[None, :] & (rows[:, None] != rows[None, :])
        safe_sum = tl.where(row_ok, run_sum, 1.0)
        kl_pair = pair_acc / safe_sum[:, None] - log_sum[:, None] + log_sum[None, :]
        kl_row = tl.sum(tl.where(pair_ok, kl_pair, 0.0), 1)
    tl.store(centre_ptr + token * COPIES + rows, centre, mask=row_ok)
    tl.store(log_sum_ptr + token * COPIES + rows, log_sum, mask=row_ok)
    tl.store(kl_row_ptr + token * COPIES + rows, kl_row, mask=row_ok)
    tl.store(token_terms_ptr + token, tl.sum(nll, 0))
    tl.store(token_terms_ptr + num_tokens + token, tl.sum(smooth, 0))
    tl.store(token_terms_ptr + 2 * num_tokens + token, tl.sum(kl_row, 0))


@triton.jit
def _rdrop_capped_kl_kernel(
    scores_ptr, target_ptr, centre_ptr, log_sum_ptr, kl_row_ptr, token_terms_ptr,
    num_tokens, length, stride_group, stride_copy, stride_pos, vocab, ignore_index,
    COPIES: tl.constexpr, COPIES_PAD: tl.constexpr, BLOCK: tl.constexpr, HAS_TARGET: tl.constexpr,
):
    """The KL of a token whose scores hold -inf, again, around the forward pass's final centres.  A gap to
    -inf is capped, and the log-normalisers shift every gap but the capped ones: with ``C_ij``, the mass of
    copy i where copy j is -inf, ``KL(P_i || P_j) = A_ij / S_i - (log S_i - log S_j) (1 - C_ij / S_i)``,
    the torch Function's value.  The forward pass moved the capped gaps with the centres; a -inf score made
    its copy's sum of scores, and so the token's smoothing term, -inf or NaN: only such tokens read their
    scores here (R-Drop's copies of one model are -inf, if anywhere, at the same places).  A kernel of its
    own: in the forward pass, this work made the common case spill registers."""
    token = tl.program_id(0).to(tl.int64)
    smooth = tl.load(token_terms_ptr + num_tokens + token)
    if (smooth != smooth) | (smooth == float("inf")) | (smooth == float("-inf")):
        rows = tl.arange(0, COPIES_PAD)
        row_ok = rows < COPIES
        cols = tl.arange(0, BLOCK)
        base = _token_base(token, length, stride_group, stride_pos) + rows.to(tl.int64) * stride_copy
        tgt, live = _target_and_live_rows(target_ptr, token, ignore_index, rows, row_ok, HAS_TARGET)
        centre = tl.load(centre_ptr + token * COPIES + rows, mask=row_ok, other=0.0)
        log_sum = tl.load(log_sum_ptr + token * COPIES + rows, mask=row_ok, other=0.0)
        pair_acc = tl.zeros((COPIES_PAD, COPIES_PAD), tl.float32)
        pair_capped = tl.zeros((COPIES_PAD, COPIES_PAD), tl.float32)
        for start in range(0, vocab * tl.max(live.to(tl.int32), 0), BLOCK):
            col = start + cols
            ok = row_ok[:, None] & (col < vocab)[None, :]
            z = tl.load(scores_ptr + base[:, None] + col[None, :], mask=ok, other=float("-inf")).to(tl.float32)
            z = z - centre[:, None]
            e = tl.exp(z)
            for j in tl.static_range(COPIES):
                z_j = _row(z, rows, j, float("-inf"))
                # every copy's gaps to copy j at once, and the mass of each where j is -inf
                terms = tl.sum(tl.where(e > 0, e * _gap(z, z_j[None, :]), 0.0), 1)
                capped = tl.sum(tl.where((z_j == float("-inf"))[None, :], e, 0.0), 1)
                column = (rows[None, :] == j) & (rows[:, None] != j)
                pair_acc += tl.where(column, terms[:, None], 0.0)
                pair_capped += tl.where(column, capped[:, None], 0.0)
        pair_ok = live[:, None] & row_ok[None, :] & (rows[:, None] != rows[None, :])
        safe_sum = tl.where(live, tl.exp(log_sum), 1.0)
        kl_pair = pair_acc / safe_sum[:, None] \
            - (log_sum[:, None] - log_sum[None, :]) * (1.0 - pair_capped / safe_sum[:, None])
        kl_row = tl.sum(tl.where(pair_ok, kl_pair, 0.0), 1)
        tl.store(kl_row_ptr + token * COPIES + rows, kl_row, mask=row_ok)
        tl.store(token_terms_ptr + 2 * num_tokens + token, tl.sum(kl_row, 0))


@triton.jit
def _rdrop_backward_kernel(
    scores_ptr, grad_ptr, target_ptr, centre_ptr, log_sum_ptr, kl_row_ptr, grad_loss_ptr,
    length, stride_group, stride_copy, stride_pos,
    grad_stride_group, grad_stride_copy, grad_stride_pos,
    vocab, ignore_index, kl_weight, eps_other, eps_target,
    COPIES: tl.constexpr, COPIES_PAD: tl.constexpr, BLOCK: tl.constexpr,
    HAS_TARGET: tl.constexpr, FROM_LOGITS: tl.constexpr, WITH_KL: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, COPIES_PAD)
    row_ok = rows < COPIES
    cols = tl.arange(0, BLOCK)
    base = _token_base(token, length, stride_group, stride_pos) + rows.to(tl.int64) * stride_copy
    grad_base = _token_base(token, length, grad_stride_group, grad_stride_pos) + rows.to(tl.int64) * grad_stride_copy
    tgt, live = _target_and_live_rows(target_ptr, token, ignore_index, rows, row_ok, HAS_TARGET)
    grad_loss = tl.load(grad_loss_ptr).to(tl.float32)
    kl_scale = grad_loss * kl_weight
    centre = tl.load(centre_ptr + token * COPIES + rows, mask=row_ok, other=0.0)
    log_sum = tl.load(log_sum_ptr + token * COPIES + rows, mask=row_ok, other=0.0)
    # row sums of the gradient with respect to the log-probabilities
    row_total = tl.zeros((COPIES_PAD,), tl.float32)
    if HAS_TARGET:
        row_total += -grad_loss * (eps_other * vocab + eps_target)
    if WITH_KL:
        row_total += kl_scale * tl.load(kl_row_ptr + token * COPIES + rows, mask=row_ok, other=0.0)

    for start in range(0, vocab, BLOCK):
        col = start + cols
        ok = row_ok[:, None] & (col < vocab)[None, :]
        z = tl.load(scores_ptr + base[:, None] + col[None, :], mask=ok & live[:, None], other=float("-inf")).to(tl.float32)
        x = (z - centre[:, None]) - log_sum[:, None]
        p = tl.exp(x)
        g = tl.zeros((COPIES_PAD, BLOCK), tl.float32)
        if HAS_TARGET:
            g += tl.where(col[None, :] == tgt, -grad_loss * (eps_other + eps_target), -grad_loss * eps_other)
        if WITH_KL:
            for i in tl.static_range(COPIES):
                x_i = _row(x, rows, i, float("-inf"))
                p_i = _row(p, rows, i, 0.0)
                pair_grad = tl.zeros((BLOCK,), tl.float32)
                for j in tl.static_range(COPIES):
                    if i != j:
                        pair_grad += p_i * _gap(x_i, _row(x, rows, j, float("-inf"))) + p_i - _row(p, rows, j, 0.0)
                g += tl.where(rows[:, None] == i, kl_scale * pair_grad[None, :], 0.0)
        if FROM_LOGITS:
            g -= p * row_total[:, None]
        g = tl.where(live[:, None], g, 0.0)
        tl.store(grad_ptr + grad_base[:, None] + col[None, :], g.to(grad_ptr.dtype.element_ty), mask=ok)


def _layout(tensor, copies):
    """``(groups, length, stride_group, stride_copy, stride_pos)`` of the layouts of ``rdrop_loss``."""
    if tensor.dim() == 3:
        row, pos = tensor.stride(0), tensor.stride(1)
        return tensor.size(0) // copies, tensor.size(1), copies * row, row, pos
    tokens = tensor.size(0) // copies
    return 1, tokens, 0, tokens * tensor.stride(0), tensor.stride(0)


def _launch_config(vocab, copies, block_size):
    copies_pad = triton.next_power_of_2(copies)
    # a (COPIES_PAD, BLOCK) tile of 8192 scores fits in registers up to 4 copies; with their pairwise
    # KL temporaries, 5 to 8 copies spilled there (benchmarks/kernel_resources.py) and get half of it
    tile = 8192 if copies_pad <= 4 else 4096
    block = block_size or min(triton.next_power_of_2(vocab), max(256, tile // copies_pad))
    num_warps = 8 if block * copies_pad >= 4096 else 4
    return copies_pad, block, num_warps


def _on_device_of(tensor):
    """Triton launches on the current CUDA device, which need not be the tensor's."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


class TritonRDropLossFunction(torch.autograd.Function):
    """The fused kernels with :class:`rdrop_fairseq.rdrop_loss.RDropLossFunction`'s interface."""

    @staticmethod
    def forward(ctx, scores, target, copies, alpha, epsilon, ignore_index, from_logits, block_size=0):
        if scores.stride(-1) != 1:
            scores = scores.contiguous()
        vocab = scores.size(-1)
        groups, length, stride_group, stride_copy, stride_pos = _layout(scores, copies)
        num_tokens = groups * length
        with_kl = alpha != 0 and copies > 1
        has_target = target is not None
        target_flat = target.reshape(-1).contiguous() if has_target else None
        centre = scores.new_empty((num_tokens, copies), dtype=torch.float32)
        log_sum, kl_row = torch.empty_like(centre), torch.empty_like(centre)
        token_terms = scores.new_empty((3, num_tokens), dtype=torch.float32)
        copies_pad, block, num_warps = _launch_config(vocab, copies, block_size)
        if num_tokens:
            with _on_device_of(scores):
                _rdrop_forward_kernel[(num_tokens,)](
                    scores, target_flat if has_target else centre, centre, log_sum, kl_row, token_terms,
                    num_tokens, length, stride_group, stride_copy, stride_pos, vocab,
                    -1 if ignore_index is None else ignore_index,
                    COPIES=copies, COPIES_PAD=copies_pad, BLOCK=block,
                    HAS_TARGET=has_target, FROM_LOGITS=from_logits, WITH_KL=with_kl, num_warps=num_warps,
                )
                if from_logits and with_kl:
                    _rdrop_capped_kl_kernel[(num_tokens,)](
                        scores, target_flat if has_target else centre, centre, log_sum, kl_row, token_terms,
                        num_tokens, length, stride_group, stride_copy, stride_pos, vocab,
                        -1 if ignore_index is None else ignore_index,
                        COPIES=copies, COPIES_PAD=copies_pad, BLOCK=block, HAS_TARGET=has_target,
                        num_warps=num_warps,
                    )
        eps_other = epsilon / (vocab - 1) if vocab > 1 else 0.0
        nll, smooth_sum, kl = token_terms.sum(1).unbind()
        kl = kl / (copies * (copies - 1)) if copies > 1 else kl.zero_()
        if not has_target:
            nll, smooth_sum = nll.zero_(), smooth_sum.zero_()
        smoothed = (1.0 - epsilon - eps_other) * nll + (eps_other * smooth_sum if eps_other else 0.0)
        loss = smoothed + alpha * kl
        ctx.save_for_backward(scores, target_flat, centre, log_sum, kl_row)
        ctx.hparams = (copies, alpha, epsilon, ignore_index, from_logits, block_size)
        ctx.mark_non_differentiable(smoothed, nll, kl)
        return loss, smoothed, nll, kl

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        refuse_double_backward()
        scores, target_flat, centre, log_sum, kl_row = ctx.saved_tensors
        copies, alpha, epsilon, ignore_index, from_logits, block_size = ctx.hparams
        vocab = scores.size(-1)
        groups, length, stride_group, stride_copy, stride_pos = _layout(scores, copies)
        grad = scores.new_empty(scores.shape)
        _, _, grad_stride_group, grad_stride_copy, grad_stride_pos = _layout(grad, copies)
        has_target = target_flat is not None
        eps_other = epsilon / (vocab - 1) if vocab > 1 else 0.0
        copies_pad, block, num_warps = _launch_config(vocab, copies, block_size)
        if groups * length:
            with _on_device_of(scores):
                _rdrop_backward_kernel[(groups * length,)](
                    scores, grad, target_flat if has_target else centre, centre, log_sum, kl_row,
                    grad_loss.detach().float().contiguous(),
                    length, stride_group, stride_copy, stride_pos,
                    grad_stride_group, grad_stride_copy, grad_stride_pos,
                    vocab, -1 if ignore_index is None else ignore_index,
                    alpha / (copies * (copies - 1)) if copies > 1 else 0.0,
                    eps_other if has_target else 0.0, (1.0 - epsilon - eps_other) if has_target else 0.0,
                    COPIES=copies, COPIES_PAD=copies_pad, BLOCK=block,
                    HAS_TARGET=has_target, FROM_LOGITS=from_logits, WITH_KL=alpha != 0 and copies > 1,
                    num_warps=num_warps,
                )
        return grad, None, None, None, None, None, None, None
