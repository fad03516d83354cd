"""rdrop_cross_entropy on a tiny fairseq transformer_lm, against a plainly written reference."""
import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.logging import metrics

from rdrop_fairseq.criterions.rdrop_cross_entropy import RDropCrossEntropyCriterion
from reference import assert_close_to_scale
from rdrop_fairseq.sub_models import repeat_batch
from tiny_lm import build, lm_sample, run_seeded, seeded_with_grads

SEED = 7


def reference_rdrop_lm_loss(model, sample, alpha, pad):
    """NLL of both copies + alpha/2 (KL(P1||P2) + KL(P2||P1)) over the non-pad targets."""
    net_output = model(**repeat_batch(sample["net_input"], 2))
    lprobs = F.log_softmax(net_output[0].float(), dim=-1)
    lp1, lp2 = lprobs[0::2], lprobs[1::2]  # the copies are interleaved: sample b in rows 2b, 2b + 1
    target = sample["target"]
    keep = target.ne(pad).unsqueeze(-1)
    nll = sum(F.nll_loss(lp.transpose(1, 2), target, ignore_index=pad, reduction="sum") for lp in (lp1, lp2))
    kl_12 = F.kl_div(lp2, lp1, log_target=True, reduction="none")  # KL(P1 || P2)
    kl_21 = F.kl_div(lp1, lp2, log_target=True, reduction="none")
    kl = 0.5 * ((kl_12 + kl_21) * keep).sum()
    return nll + alpha * kl, nll, kl


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    task, model, criterion, _ = build(tmp_path_factory.mktemp("lm"))
    return task, model, criterion


def test_built_from_flags_with_paper_default_alpha(lm):
    _, _, criterion = lm
    assert isinstance(criterion, RDropCrossEntropyCriterion)
    assert criterion.rdrop_alpha == 1.0


def test_sentence_avg_reaches_the_criterion(tmp_path):
    task, model, criterion, _ = build(tmp_path, "--sentence-avg", "--rdrop-alpha", "0.5")
    assert criterion.sentence_avg and criterion.rdrop_alpha == 0.5
    sample = lm_sample(task.dictionary)
    model.train()
    assert criterion(model, sample)[1] == sample["target"].size(0) != sample["ntokens"]


def test_the_lm_task_builds_its_criterion_for_a_checkpoint(tmp_path):
    # fairseq-hydra-validate builds the criterion with from_checkpoint=True, which fairseq's
    # legacy language_modeling task does not take
    task, _, _, cfg = build(tmp_path)
    criterion = task.build_criterion(cfg.criterion, from_checkpoint=True)
    assert isinstance(criterion, RDropCrossEntropyCriterion) and criterion.rdrop_alpha == 1.0


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_loss_and_gradient_match_reference(lm, alpha):
    task, model, criterion = lm
    criterion.rdrop_alpha = alpha
    model.train()
    sample = lm_sample(task.dictionary)
    pad = task.dictionary.pad()

    (ref_loss, ref_nll, ref_kl), ref_grads = seeded_with_grads(SEED, reference_rdrop_lm_loss, model, sample, alpha, pad)
    (loss, sample_size, log), grads = seeded_with_grads(SEED, criterion, model, sample)
    criterion.rdrop_alpha = 1.0

    assert ref_kl > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["loss"], ref_nll / 2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["nll_loss"], ref_nll / 2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["kl_loss"], ref_kl.detach(), rtol=1e-5, atol=1e-4)
    assert sample_size == log["ntokens"] == int(sample["target"].ne(pad).sum())
    assert grads.keys() == ref_grads.keys()
    assert_close_to_scale(list(grads.values()), [ref_grads[name] for name in grads], rel=1e-5)


def test_padding_positions_do_not_count(lm):
    task, model, criterion = lm
    model.train()
    sample = lm_sample(task.dictionary, pad_tail=(0, 3, 5))
    loss, _, _ = run_seeded(SEED, criterion, model, sample)
    assert sample["ntokens"] == 27 - 8
    ref_loss, _, _ = run_seeded(SEED, reference_rdrop_lm_loss, model, sample, 1.0, task.dictionary.pad())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    unmasked = run_seeded(SEED, reference_rdrop_lm_loss, model, sample, 1.0, -100)[0]
    assert not torch.allclose(loss, unmasked)


def stock_cross_entropy(task, model, sample):
    return CrossEntropyCriterion(task, sentence_avg=False)(model, sample)


def test_alpha_zero_and_validation_are_stock_cross_entropy(lm):
    task, model, criterion = lm
    sample = lm_sample(task.dictionary)
    model.train()
    criterion.rdrop_alpha = 0.0
    plain = run_seeded(SEED, criterion, model, sample)
    criterion.rdrop_alpha = 1.0
    stock = run_seeded(SEED, stock_cross_entropy, task, model, sample)
    assert plain[0].item() == stock[0].item() and plain[2] == stock[2]

    model.eval()
    valid = criterion(model, sample)
    stock_valid = stock_cross_entropy(task, model, sample)
    assert valid[0].item() == stock_valid[0].item() and valid[2] == stock_valid[2]
    assert "kl_loss" not in valid[2]


def test_metrics_are_bits_per_token_with_the_kl_separate(lm):
    task, model, criterion = lm
    model.train()
    sample = lm_sample(task.dictionary)
    _, _, log = run_seeded(SEED, criterion, model, sample)
    with metrics.aggregate() as agg:
        RDropCrossEntropyCriterion.reduce_metrics([log])
    values = agg.get_smoothed_values()
    ln2 = torch.log(torch.tensor(2.0)).item()
    assert values["loss"] == pytest.approx(log["loss"].item() / log["sample_size"] / ln2, abs=1e-3)
    assert values["kl_loss"] == pytest.approx(log["kl_loss"].item() / log["sample_size"] / ln2, abs=1e-4)
    assert values["ppl"] == pytest.approx(2 ** values["loss"], rel=1e-2)
    # --sentence-avg: sample_size counts sentences, and the KL is per sentence too
    per_sentence = dict(log, sample_size=log["nsentences"])
    assert per_sentence["sample_size"] != log["ntokens"]
    with metrics.aggregate() as agg:
        RDropCrossEntropyCriterion.reduce_metrics([per_sentence])
    expected = log["kl_loss"].item() / log["nsentences"] / ln2
    assert agg.get_smoothed_values()["kl_loss"] == pytest.approx(expected, abs=1e-4)


def test_works_with_stock_language_modeling_task(tmp_path):
    task, model, criterion, _ = build(tmp_path, task="language_modeling")
    model.train()
    sample = lm_sample(task.dictionary)
    loss, _, log = run_seeded(SEED, criterion, model, sample)
    ref_loss, _, ref_kl = run_seeded(SEED, reference_rdrop_lm_loss, model, sample, 1.0, task.dictionary.pad())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["kl_loss"], ref_kl.detach(), rtol=1e-5, atol=1e-4)


def test_a_model_with_an_adaptive_softmax_is_sent_to_rdrop_adaptive_loss(tmp_path):
    # fairseq's AdaptiveSoftmax.get_log_prob writes in place: without the refusal the step fails in
    # backward with autograd's "modified by an inplace operation"
    task, model, criterion, _ = build(
        tmp_path, "--adaptive-softmax-cutoff", "12,24", "--adaptive-input-cutoff", "12,24",
        "--ddp-backend", "legacy_ddp", criterion="rdrop_cross_entropy", arch="transformer_lm_wiki103",
    )
    sample = lm_sample(task.dictionary)
    model.train()
    with pytest.raises(ValueError, match="--criterion rdrop_cross_entropy .*adaptive softmax.*rdrop_adaptive_loss"):
        criterion(model, sample)
    model.eval()
    with torch.no_grad():
        loss, _, _ = criterion(model, sample)  # validation is stock cross_entropy's one pass
    assert torch.isfinite(loss)
