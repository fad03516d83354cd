"""The fused Triton kernels against the torch Function: compiled on a CUDA machine, under
Triton's interpreter on a CPU (as in CI)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # without CUDA, conftest chose the interpreter
pytest.importorskip("triton")

from rdrop_fairseq import rdrop_loss as rdrop_loss_module  # noqa: E402
from rdrop_fairseq.kernels.rdrop_loss_triton import TritonRDropLossFunction  # noqa: E402
from rdrop_fairseq.rdrop_loss import RDropLossFunction, rdrop_loss_from_logits  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's masked lanes
PAD = 1
BLOCK = 32  # small, so that every row spans several blocks
# The scores here reach about 10, where fp32 log-probabilities are rounded to about 1e-6,
# and the KL gradient scales that by alpha = 5: the torch Function in fp32 is up to 1.2e-5
# away from its fp64 values on these cases.
GRAD_TOL = dict(rtol=1e-5, atol=1e-5)


def make_case(copies=2, batch=2, length=3, vocab=70, dtype=torch.float32, seed=0, layout="interleaved"):
    gen = torch.Generator().manual_seed(seed)
    shape = (copies * batch, length, vocab) if layout == "interleaved" else (copies * batch * length, vocab)
    logits = (torch.randn(shape, generator=gen) * 3).to(dtype)
    target = torch.randint(2, vocab, (batch, length), generator=gen)
    target[0, 1] = PAD
    return logits.to(DEVICE), target.to(DEVICE)


def run(function, scores, target, copies, alpha, epsilon, from_logits, ignore_index=PAD, grad_output=1.0):
    # the torch Function takes chunk_tokens before from_logits; the kernels take a block size after it
    last = (0, from_logits) if function is RDropLossFunction else (from_logits, BLOCK)
    leaf = scores.detach().clone().requires_grad_()
    out = function.apply(leaf, target, copies, alpha, epsilon, ignore_index, *last)
    out[0].backward(torch.tensor(grad_output, dtype=out[0].dtype, device=out[0].device))
    return out, leaf.grad


def reference(scores, target, copies, alpha, epsilon, from_logits, ignore_index=PAD, grad_output=1.0):
    """The torch Function in fp64 on the same (rounded) input values."""
    return run(RDropLossFunction, scores.double(), target, copies, alpha, epsilon, from_logits,
               ignore_index=ignore_index, grad_output=grad_output)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_value_and_gradient_match_the_torch_function(copies, epsilon, from_logits):
    logits, target = make_case(copies, seed=copies)
    scores = logits if from_logits else F.log_softmax(logits, -1)
    # an incoming gradient other than 1, as fairseq's --fp16 loss scale gives
    (ref, ref_grad), (new, new_grad) = (
        reference(scores, target, copies, 5.0, epsilon, from_logits, grad_output=3.7),
        run(TritonRDropLossFunction, scores, target, copies, 5.0, epsilon, from_logits, grad_output=3.7),
    )
    for r, n in zip(ref, new):
        torch.testing.assert_close(n.double(), r, rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(new_grad.double(), ref_grad, **GRAD_TOL)
    assert new_grad.view(2, copies, 3, -1)[0, :, 1].abs().max() == 0  # the padded token
    assert new_grad.view(2, copies, 3, -1)[0, :, 0].abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_accumulated_in_fp32(dtype):
    logits, target = make_case(dtype=dtype, vocab=45)
    (ref, ref_grad), (new, new_grad) = (
        reference(logits, target, 2, 5.0, 0.1, True),
        run(TritonRDropLossFunction, logits, target, 2, 5.0, 0.1, True),
    )
    assert new_grad.dtype == dtype
    for r, n in zip(ref, new):
        torch.testing.assert_close(n.double(), r, rtol=2e-6, atol=2e-5)
    # the gradient differs from the fp64 one only by its rounding to the half type
    resolution = torch.finfo(dtype).eps
    torch.testing.assert_close(new_grad.double(), ref_grad, rtol=resolution, atol=resolution * 1e-2)


def test_copy_major_layout_and_no_target():
    logits, target = make_case(copies=3, layout="copy_major", vocab=33)
    for tgt, alpha in ((target, 1.0), (None, 2.0)):
        (ref, ref_grad), (new, new_grad) = (
            reference(logits, tgt, 3, alpha, 0.0, True),
            run(TritonRDropLossFunction, logits, tgt, 3, alpha, 0.0, True),
        )
        for r, n in zip(ref, new):
            torch.testing.assert_close(n.double(), r, rtol=2e-6, atol=2e-5)
        torch.testing.assert_close(new_grad.double(), ref_grad, **GRAD_TOL)


def test_strided_view_after_a_prefix_is_trimmed():
    logits, target = make_case(length=5)
    full = logits.detach().requires_grad_()
    new = TritonRDropLossFunction.apply(full[:, 2:], target[:, 2:], 2, 5.0, 0.1, PAD, True, BLOCK)
    new[0].backward()
    ref, ref_grad = reference(logits[:, 2:].contiguous(), target[:, 2:].contiguous(), 2, 5.0, 0.1, True)
    torch.testing.assert_close(new[0].double(), ref[0], rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(full.grad[:, 2:].double(), ref_grad, **GRAD_TOL)
    assert full.grad[:, :2].abs().max() == 0


@pytest.mark.parametrize("copies", [2, 3])
def test_minus_infinity_logits_give_no_nan(copies):
    logits, target = make_case(copies, vocab=40)
    logits[..., 0] = float("-inf")  # masked in every copy
    logits[..., 37] = float("-inf")
    (ref, ref_grad), (new, new_grad) = (
        reference(logits, target, copies, 5.0, 0.0, True),
        run(TritonRDropLossFunction, logits, target, copies, 5.0, 0.0, True),
    )
    assert all(torch.isfinite(t) for t in new) and torch.isfinite(new_grad).all()
    for r, n in zip(ref, new):
        torch.testing.assert_close(n.double(), r, rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(new_grad.double(), ref_grad, **GRAD_TOL)


def test_every_token_padded_gives_zero():
    logits, target = make_case()
    target.fill_(PAD)
    new, grad = run(TritonRDropLossFunction, logits, target, 2, 5.0, 0.1, True)
    assert all(t == 0 for t in new) and grad.abs().max() == 0


def test_rdrop_kernel_switch(monkeypatch):
    logits, target = make_case()
    seen = []
    original = TritonRDropLossFunction.apply
    monkeypatch.setattr(TritonRDropLossFunction, "apply", lambda *a: seen.append(1) or original(*a))
    for choice, fused in (("triton", True), ("torch", False), ("auto", DEVICE == "cuda")):
        monkeypatch.setenv("RDROP_KERNEL", choice)
        seen.clear()
        rdrop_loss_from_logits(logits, target, 2, 5.0, 0.1, PAD)
        assert bool(seen) == fused, choice
    monkeypatch.setenv("RDROP_KERNEL", "cuda")
    with pytest.raises(ValueError, match="RDROP_KERNEL"):
        rdrop_loss_from_logits(logits, target, 2, 5.0, 0.1, PAD)
    monkeypatch.setenv("RDROP_KERNEL", "triton")
    with pytest.raises(ValueError, match="fp64"):
        rdrop_loss_module.kernel_for(logits.double())


@pytest.mark.parametrize("padding", [np.int64(PAD), torch.tensor(PAD)], ids=["numpy", "tensor"])
def test_an_index_type_other_than_int_pads_as_the_int_does(monkeypatch, padding):
    logits, target = make_case()
    monkeypatch.setenv("RDROP_KERNEL", "triton")
    expected = rdrop_loss_from_logits(logits, target, 2, 5.0, 0.1, PAD)
    got = rdrop_loss_from_logits(logits, target, 2, 5.0, 0.1, padding)
    for got_term, expected_term in zip(got, expected):
        torch.testing.assert_close(got_term, expected_term, rtol=0, atol=0)


@pytest.mark.parametrize("ignore_index", [-100, 1000])
def test_an_ignore_index_outside_the_vocabulary_pads_as_one_inside_it(ignore_index):
    logits, target = make_case()
    outside = target.masked_fill(target.eq(PAD), ignore_index)
    (expected, expected_grad), (got, got_grad) = (
        run(TritonRDropLossFunction, logits, target, 2, 5.0, 0.1, True),
        run(TritonRDropLossFunction, logits, outside, 2, 5.0, 0.1, True, ignore_index=ignore_index),
    )
    for got_term, expected_term in zip(got, expected):
        torch.testing.assert_close(got_term, expected_term, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=0)


def test_cpu_tensors_are_refused_where_cuda_is_present(monkeypatch):
    logits, target = make_case()
    monkeypatch.setenv("RDROP_KERNEL", "triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        rdrop_loss_module.kernel_for(logits.cpu())


def run_without_triton_interpret(script, **env):
    """``python -c script`` in a fresh process that has not chosen Triton's interpreter."""
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **env}
    return subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter is chosen only without CUDA")
def test_forcing_triton_without_cuda_chooses_the_interpreter_itself(tmp_path):
    """A fresh process with RDROP_KERNEL=triton and no TRITON_INTERPRET: looking for Triton
    must not import it before the kernels' module has chosen the interpreter."""
    script = (
        "import torch\n"
        "from rdrop_fairseq import rdrop_loss as m\n"
        "logits = torch.randn(4, 3, 70, generator=torch.Generator().manual_seed(0))\n"
        "target = torch.randint(2, 70, (2, 3), generator=torch.Generator().manual_seed(1))\n"
        "fused = m.rdrop_loss_from_logits(logits, target, 2, 5.0, 0.1, 1)[0].item()\n"
        "import os, sys\n"
        "assert 'rdrop_fairseq.kernels.rdrop_loss_triton' in sys.modules\n"
        "os.environ['RDROP_KERNEL'] = 'torch'\n"
        "reference = m.rdrop_loss_from_logits(logits, target, 2, 5.0, 0.1, 1)[0].item()\n"
        "print(fused, reference, os.environ['TRITON_INTERPRET'])\n"
    )
    proc = run_without_triton_interpret(script, RDROP_KERNEL="triton")
    assert proc.returncode == 0, proc.stderr[-2000:]
    fused, reference, interpret = proc.stdout.split()[-3:]
    assert interpret == "1" and float(fused) == pytest.approx(float(reference), rel=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="compiled kernels at full size need CUDA")
@pytest.mark.parametrize("vocab,tokens", [(32_000, 512), (267_744, 64)])
def test_full_size_vocabularies_on_cuda(vocab, tokens):
    logits, target = make_case(batch=tokens // 8, length=8, vocab=vocab, dtype=torch.bfloat16)
    leaf = logits.detach().clone().requires_grad_()
    new = TritonRDropLossFunction.apply(leaf, target, 2, 5.0, 0.1, PAD, True, 0)
    new[0].backward()
    ref, ref_grad = run(RDropLossFunction, logits.float(), target, 2, 5.0, 0.1, True)
    for r, n in zip(ref, new):
        torch.testing.assert_close(n, r, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(leaf.grad.float(), ref_grad, rtol=2**-7, atol=1e-6)


@pytest.mark.skipif(DEVICE != "cuda", reason="the launch configuration of many copies is the compiled kernels'")
@pytest.mark.parametrize("copies", [4, 5, 8])
def test_many_copies_compiled_with_their_own_block(copies):
    # 5 to 8 copies take half the tile (benchmarks/kernel_resources.py); the default block, not BLOCK
    logits, target = make_case(copies, batch=4, length=8, vocab=32_000, dtype=torch.bfloat16, seed=copies)
    leaf = logits.detach().clone().requires_grad_()
    new = TritonRDropLossFunction.apply(leaf, target, copies, 5.0, 0.1, PAD, True, 0)
    new[0].backward()
    ref, ref_grad = run(RDropLossFunction, logits.float(), target, copies, 5.0, 0.1, True)
    for r, n in zip(ref, new):
        torch.testing.assert_close(n, r, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(leaf.grad.float(), ref_grad, rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 200.0, -3000.0])
def test_kl_keeps_its_precision_when_the_copies_differ_by_a_constant(offset):
    # A constant added to a copy's logits leaves its distribution unchanged, and so the KL;
    # a kernel that subtracts the two log-normalisers at the end loses the KL to cancellation.
    logits, target = make_case(vocab=300, seed=5)
    logits = logits * 0.1
    logits.view(2, 2, 3, -1)[:, 1] += offset
    (ref, ref_grad), (new, new_grad) = (
        reference(logits, target, 2, 5.0, 0.1, True),
        run(TritonRDropLossFunction, logits, target, 2, 5.0, 0.1, True),
    )
    for r, n in zip(ref, new):  # loss, smoothed NLL, NLL, KL
        torch.testing.assert_close(n.double(), r, rtol=1e-6, atol=0)
    torch.testing.assert_close(new_grad.double(), ref_grad, **GRAD_TOL)


@pytest.mark.parametrize("offset", [0.0, 20.0, -3000.0, 3000.0])
@pytest.mark.parametrize("masked", [[5], list(range(BLOCK)), list(range(40 - BLOCK, 40)),
                                    [c for c in range(40) if c != 7]], ids=["one", "first-block", "last-block", "all-but-one"])
@pytest.mark.parametrize("copies", [2, 3])  # 3: the kernels pad the copies to 4 rows, one of them empty
def test_minus_infinity_in_one_copy_only_is_capped_as_in_the_torch_function(copies, masked, offset):
    # masked: one column, the whole first block (the second copy has no finite score, so no centre,
    # until the next block), the last block, all but one column (the second copy is one-hot)
    logits, target = make_case(copies, vocab=40)
    free = torch.tensor([c for c in range(2, 40) if c not in masked], device=target.device)
    target = torch.where(target == PAD, target, free[target % len(free)])  # the NLL stays finite
    logits.view(2, copies, 3, -1)[:, 1] += offset
    logits.view(2, copies, 3, -1)[:, 1, :, masked] = float("-inf")  # the other copies keep a finite score there
    (ref, ref_grad), (new, new_grad) = (
        reference(logits, target, copies, 5.0, 0.0, True),
        run(TritonRDropLossFunction, logits, target, copies, 5.0, 0.0, True),
    )
    assert all(torch.isfinite(t) for t in new) and torch.isfinite(new_grad).all()
    assert ref[3] > 1.0  # the cap of 1e4 times the first copy's probability there
    # the log-normalisers shift no capped gap: the KL is the torch Function's, and the gradient
    # that of the kernels' own loss, so each copy's row sums to 0 (a constant added to its logits
    # changes nothing)
    torch.testing.assert_close(new[3].double(), ref[3], rtol=1e-6, atol=0)
    # gradients of up to 1e4 times a probability: the fp32 torch Function is 1.4e-4 of the largest away
    torch.testing.assert_close(new_grad.double(), ref_grad, rtol=1e-4, atol=1e-4 * ref_grad.abs().max().item())
    row_sums = new_grad.double().sum(-1)
    assert row_sums.abs().max() < 1e-3 * new_grad.abs().max(), row_sums


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter is chosen only without CUDA")
def test_triton_imported_for_the_compiler_before_the_kernels_is_a_clear_error():
    """Setting TRITON_INTERPRET=1 after Triton was imported leaves its library compiled-only, and
    every kernel launch would fail deep in the interpreter: the kernels' module says why instead."""
    script = (
        "import os, triton\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "import rdrop_fairseq.kernels.rdrop_loss_triton\n"
    )
    proc = run_without_triton_interpret(script)
    assert proc.returncode != 0
    assert "set TRITON_INTERPRET=1 at start-up" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize("from_logits", [True, False])
def test_finite_gaps_beyond_the_cap_are_kept(from_logits):
    # Only infinite gaps (-inf in one copy) are capped, as in the torch Function: a finite gap of 2e4
    # between the copies is a finite KL and gradient, not the cap's.
    logits, target = make_case(vocab=40, seed=7)
    logits.view(2, 2, 3, -1)[:, 1, :, 5] = -2e4
    scores = logits if from_logits else F.log_softmax(logits.double(), -1).float()
    (ref, ref_grad), (new, new_grad) = (
        reference(scores, target, 2, 5.0, 0.1, from_logits),
        run(TritonRDropLossFunction, scores, target, 2, 5.0, 0.1, from_logits),
    )
    assert ref[3] > 500
    for r, n in zip(ref, new):
        torch.testing.assert_close(n.double(), r, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(new_grad.double(), ref_grad, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("function", [TritonRDropLossFunction, RDropLossFunction])
def test_double_backward_is_refused_not_silently_wrong(function):
    logits, target = make_case()
    leaf = logits.clone().requires_grad_()
    last = (0, True) if function is RDropLossFunction else (True, BLOCK)
    loss = function.apply(leaf, target, 2, 5.0, 0.1, PAD, *last)[0]
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, leaf, create_graph=True)
    assert torch.isfinite(torch.autograd.grad(loss, leaf)[0]).all()


@pytest.mark.skipif(DEVICE == "cuda", reason="on CUDA the check is a device-side assert, which ends the process's "
                                            "CUDA context and every test after it")
@pytest.mark.parametrize("bad", [70, 1000, -2])
def test_a_target_outside_the_vocabulary_is_an_error(monkeypatch, bad):
    monkeypatch.setenv("RDROP_KERNEL", "triton")
    logits, target = make_case()
    target[1, 2] = bad
    with pytest.raises(RuntimeError, match=r"outside the vocabulary \[0, 70\) and is not the ignore_index 1"):
        rdrop_loss_from_logits(logits, target, 2, 5.0, 0.1, PAD)
