"""Numerics of the R-Drop step: bf16, masked (-inf) vocabulary entries, and steps
whose loss is not finite.

fairseq's ``--bf16`` implies ``--tpu`` (fairseq/options.py), so it cannot run on CPU;
bf16 is checked at the level of :func:`rdrop_loss` and of a model step under CPU
autocast instead.
"""
import logging

import pytest
import torch
import torch.nn.functional as F

from fairseq_runs import build_trainer, toy_data, train_args, training_sample
from rdrop_fairseq.rdrop_loss import rdrop_loss

COPIES, TOKENS, VOCAB, PAD = 2, 96, 300, 1
MASKED = 7  # a vocabulary entry no target uses


def sub_model_logits(seed=0, spread=0.3):
    """Logits of two sub-models that differ as dropout makes them differ."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(TOKENS, VOCAB, generator=gen) * 3
    return torch.cat([shared + spread * torch.randn(TOKENS, VOCAB, generator=gen) for _ in range(COPIES)])


def targets(seed=0):
    target = torch.randint(8, VOCAB, (TOKENS,), generator=torch.Generator().manual_seed(seed))
    target[-5:] = PAD
    return target


def loss_and_grad(logits, target, epsilon=0.1, alpha=5.0, dtype=torch.float32):
    logits = logits.detach().to(dtype).requires_grad_()
    loss, _, nll, kl = rdrop_loss(F.log_softmax(logits, -1), target, COPIES, alpha, epsilon, PAD)
    loss.backward()
    return loss.float(), nll.float(), kl.float(), logits.grad.float()


def relative_error(value, reference):
    return ((value - reference).norm() / reference.norm()).item()


# The fp32 reference starts from the same bf16-representable logits, so what is
# compared is the loss computed in bf16 (log-softmax, and the gradient stored in bf16),
# not the rounding of its input.  Measured over 5 seeds: loss <= 2e-4, KL <= 1.1e-3,
# gradient <= 6.3e-3 (relative, L2); bf16 itself resolves 2^-9 = 2e-3.
BF16_LOSS_TOL, BF16_KL_TOL, BF16_GRAD_TOL = 1e-3, 5e-3, 1.5e-2


def test_rdrop_loss_on_bf16_log_probs_stays_finite_and_matches_fp32():
    logits, target = sub_model_logits().bfloat16().float(), targets()
    ref_loss, ref_nll, ref_kl, ref_grad = loss_and_grad(logits, target)
    loss, nll, kl, grad = loss_and_grad(logits, target, dtype=torch.bfloat16)

    assert torch.isfinite(kl) and kl > 0 and torch.isfinite(grad).all()
    assert relative_error(loss, ref_loss) < BF16_LOSS_TOL
    assert relative_error(nll, ref_nll) < BF16_LOSS_TOL
    assert relative_error(kl, ref_kl) < BF16_KL_TOL
    assert relative_error(grad, ref_grad) < BF16_GRAD_TOL


@pytest.fixture(scope="module")
def tiny_trainer_args(tmp_path_factory):
    data = toy_data(tmp_path_factory)
    save_dir = tmp_path_factory.mktemp("precision-ckpt")
    # A non-zero first learning rate, so that an applied step would move the weights.
    return lambda *extra: train_args(data, save_dir, "--warmup-init-lr", "1e-3", *extra)


def model_step(trainer, sample, autocast_dtype=None):
    """Loss, KL and gradients of one R-Drop step, fp32 or under CPU autocast."""
    model, criterion = trainer.model, trainer.criterion
    model.train()
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout masks in both precisions
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss, _, log = criterion(model, sample, update_num=0)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach().float(), torch.as_tensor(log["kl_loss"]).float(), grads


def test_model_step_under_bf16_autocast_matches_fp32(tiny_trainer_args):
    trainer = build_trainer(tiny_trainer_args())
    sample = training_sample(trainer)
    ref_loss, ref_kl, ref_grads = model_step(trainer, sample)
    loss, kl, grads = model_step(trainer, sample, autocast_dtype=torch.bfloat16)

    assert ref_kl > 0 and torch.isfinite(kl) and torch.isfinite(grads).all()
    # Every matmul rounds to bf16 here (fairseq's log-softmax returns fp32).  Measured:
    # loss 8e-5, KL 3.4e-4, gradients 1.0e-2.
    assert relative_error(loss, ref_loss) < 1e-3
    assert relative_error(kl, ref_kl) < 5e-3
    assert relative_error(grads, ref_grads) < 3e-2


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_masked_vocabulary_entry_gives_finite_kl_and_gradient(epsilon):
    logits = sub_model_logits()
    logits[:, MASKED] = float("-inf")
    loss, nll, kl, grad = loss_and_grad(logits, targets(), epsilon=epsilon)
    assert torch.isfinite(kl) and kl > 0
    assert torch.isfinite(grad).all()
    if epsilon == 0:
        assert torch.isfinite(loss) and torch.isfinite(nll)
        assert (grad[:, MASKED] == 0).all()
    # With epsilon > 0 the smoothing term is -sum_v log p_v = inf, as in fairseq's own
    # label_smoothed_nll_loss: a uniform prior cannot include an impossible token.


def test_entry_masked_in_one_sub_model_only_gives_no_nan():
    logits = sub_model_logits()
    logits[:TOKENS, MASKED] = float("-inf")  # only copy 0 (copy after copy in this 2-D layout)
    loss, _, kl, grad = loss_and_grad(logits, targets(), epsilon=0.0)
    assert not torch.isnan(kl) and not torch.isnan(loss)
    assert torch.isfinite(grad).all()


def mask_output_entry(model, entry, value, rows=slice(None)):
    """Set one vocabulary entry of the decoder's logits to ``value`` (hook handle)."""
    def hook(module, inputs, logits):
        logits = logits.clone()
        logits[rows, ..., entry] = value
        return logits
    return model.decoder.output_projection.register_forward_hook(hook)


def test_masked_logit_through_a_real_model_keeps_kl_and_gradients_finite(tiny_trainer_args):
    trainer = build_trainer(tiny_trainer_args("--label-smoothing", "0"))
    sample = training_sample(trainer)
    unk = trainer.task.target_dictionary.unk()
    assert not (sample["target"] == unk).any()
    handle = mask_output_entry(trainer.model, unk, float("-inf"))
    loss, kl, grads = model_step(trainer, sample)
    handle.remove()
    assert torch.isfinite(loss) and torch.isfinite(kl) and kl > 0
    assert torch.isfinite(grads).all()


def parameters(model):
    return [p.detach().clone() for p in model.parameters()]


def unchanged(model, before):
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def step_with_nan_in_copy_0(trainer, sample):
    """``trainer.train_step`` with NaN logits in the first sub-model (rows 0, 2, 4, ...: the copies are interleaved)."""
    handle = mask_output_entry(trainer.model, trainer.task.target_dictionary.eos(), float("nan"),
                               rows=slice(0, None, 2))
    try:
        return trainer.train_step([sample])
    finally:
        handle.remove()


def exception_chain(error):
    while error is not None:
        yield error
        error = error.__context__


def test_fp32_step_with_nan_kl_is_refused_and_leaves_parameters_alone(tiny_trainer_args):
    trainer = build_trainer(tiny_trainer_args())
    sample = training_sample(trainer)
    before = parameters(trainer.model)
    with pytest.raises(Exception) as raised:
        step_with_nan_in_copy_0(trainer, sample)
    assert any(isinstance(e, FloatingPointError) and "gradients are Nan/Inf" in str(e)
               for e in exception_chain(raised.value))
    assert trainer.get_num_updates() == 0
    assert unchanged(trainer.model, before)
    trainer.train_step([sample])  # a finite step afterwards is applied
    assert trainer.get_num_updates() == 1 and not unchanged(trainer.model, before)


def test_fp32_step_with_nan_kl_raises_floating_point_error(tiny_trainer_args):
    trainer = build_trainer(tiny_trainer_args())
    with pytest.raises(FloatingPointError, match="gradients are Nan/Inf"):
        step_with_nan_in_copy_0(trainer, training_sample(trainer))


def test_fp16_step_with_nan_kl_is_skipped_as_an_overflow(tiny_trainer_args, monkeypatch, caplog):
    # --fp16 keeps fp32 master weights on CUDA; --memory-efficient-fp16 runs on CPU and
    # takes the same overflow path (DynamicLossScaler raises OverflowError).
    trainer = build_trainer(tiny_trainer_args("--memory-efficient-fp16"))
    sample = training_sample(trainer)
    before = parameters(trainer.model)
    scale = trainer.optimizer.scaler.loss_scale
    # fairseq's overflow branch puts a zero grad norm on CUDA; let it stay on the CPU.
    monkeypatch.setattr(torch.Tensor, "cuda", lambda tensor, *args, **kwargs: tensor)
    with caplog.at_level(logging.INFO, logger="fairseq.trainer"):
        step_with_nan_in_copy_0(trainer, sample)
    assert "gradient overflow detected, ignoring gradient" in caplog.text
    assert trainer.get_num_updates() == 0
    assert trainer.optimizer.scaler.loss_scale < scale
    assert unchanged(trainer.model, before)
    trainer.train_step([sample])  # a finite step afterwards is applied
    assert trainer.get_num_updates() == 1 and not unchanged(trainer.model, before)
