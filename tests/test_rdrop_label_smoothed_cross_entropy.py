import logging

import pytest
import torch
from fairseq import optim
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics

from reference import assert_close_to_scale, reference_loss
from rdrop_fairseq.sub_models import repeat_batch
from tiny_fairseq import assert_same_sample, build, clone_sample, translation_sample, write_dictionaries

CRITERION = ["--criterion", "rdrop_label_smoothed_cross_entropy", "--label-smoothing", "0.1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dictionaries(tmp_path_factory.mktemp("dicts"))


@pytest.fixture
def tiny(data_dir):
    torch.manual_seed(1)
    cfg, task, model, criterion = build(data_dir, *CRITERION)
    return task, model, criterion, translation_sample(task.target_dictionary)


def stock(task, eps=0.1, **kwargs):
    return LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=eps, **kwargs)


def reference_for(model, sample, copies, alpha, eps, pad, prefix=0):
    logits = model(**repeat_batch(sample["net_input"], copies))[0][:, prefix:]
    return reference_loss(logits, sample["target"][:, prefix:], copies, alpha, eps, pad)


def grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_training_loss_and_gradient_equal_reference_under_the_same_dropout(tiny):
    task, model, criterion, sample = tiny
    model.train()
    torch.manual_seed(123)
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    ours = grads(model)
    model.zero_grad()
    torch.manual_seed(123)
    ref_loss, ref_smoothed, ref_nll, ref_kl = reference_for(model, sample, 2, 5.0, 0.1, task.target_dictionary.pad())
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    assert_close_to_scale(ours, grads(model), rel=1e-5)
    assert sample_size == sample["ntokens"]
    torch.testing.assert_close(log["loss"], ref_smoothed.detach() / 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(log["nll_loss"], ref_nll.detach() / 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(log["kl_loss"], ref_kl.detach(), rtol=1e-5, atol=0)
    assert log["kl_loss"] > 0


def test_training_log_counts_are_the_stock_criterions(tiny):
    task, model, criterion, sample = tiny
    model.train()
    _, sample_size, log = criterion(model, sample)
    _, stock_size, stock_log = stock(task)(model, sample)
    counts = ("ntokens", "nsentences", "sample_size")
    assert sample_size == stock_size and {k: log[k] for k in counts} == {k: stock_log[k] for k in counts}


def test_unreduced_training_loss_is_the_stock_per_token_loss_of_one_pass(tiny):
    task, model, criterion, sample = tiny
    model.train()
    rows = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: rows.append(kwargs["src_tokens"].size(0)), with_kwargs=True)
    torch.manual_seed(5)
    ours = criterion(model, sample, reduce=False)
    torch.manual_seed(5)
    theirs = stock(task)(model, sample, reduce=False)
    hook.remove()
    assert rows == [sample["target"].size(0)] * 2
    assert ours[0].shape == theirs[0].shape and ours[0].numel() == sample["target"].numel()
    torch.testing.assert_close(ours[0], theirs[0])


def test_chunk_tokens_reach_the_loss(data_dir, monkeypatch):
    from rdrop_fairseq.criterions import rdrop_criterion

    seen = []
    plain = rdrop_criterion.rdrop_loss_from_logits
    monkeypatch.setattr(rdrop_criterion, "rdrop_loss_from_logits",
                        lambda *args, **kwargs: seen.append(kwargs["chunk_tokens"]) or plain(*args, **kwargs))
    _, task, model, criterion = build(data_dir, *CRITERION, "--rdrop-chunk-tokens", "3")
    model.train()
    criterion(model, translation_sample(task.target_dictionary))
    assert seen == [3]


def test_sample_is_never_modified_by_a_training_step(tiny, data_dir):
    task, model, criterion, sample = tiny
    before = clone_sample(sample)
    cfg = build(data_dir, *CRITERION)[0]
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    task.train_step(sample, model, criterion, optimizer, update_num=0)
    assert_same_sample(sample, before)


def test_validation_is_one_ordinary_pass_equal_to_stock_criterion(tiny):
    task, model, criterion, sample = tiny
    calls = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["src_tokens"].size(0)), with_kwargs=True)
    ours = task.valid_step(sample, model, criterion)
    hook.remove()
    theirs = task.valid_step(sample, model, stock(task))
    assert calls == [sample["target"].size(0)]
    torch.testing.assert_close(ours[0], theirs[0])
    assert ours[2].keys() == theirs[2].keys() and "kl_loss" not in ours[2]
    torch.testing.assert_close(ours[2]["nll_loss"], theirs[2]["nll_loss"])


def test_alpha_zero_is_the_stock_loss_with_no_duplication(data_dir):
    torch.manual_seed(1)
    _, task, model, criterion = build(data_dir, *CRITERION, "--rdrop-alpha", "0")
    sample = translation_sample(task.target_dictionary)
    model.train()
    rows = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: rows.append(kwargs["src_tokens"].size(0)), with_kwargs=True)
    torch.manual_seed(5)
    ours = criterion(model, sample)
    torch.manual_seed(5)
    theirs = stock(task)(model, sample)
    hook.remove()
    assert rows == [3, 3]
    torch.testing.assert_close(ours[0], theirs[0])
    assert ours[2].keys() == theirs[2].keys()


def test_logged_loss_is_on_the_baseline_scale(data_dir):
    """Without dropout both copies are the same model: loss and nll_loss must equal
    the stock criterion's on one copy, not twice it, and the KL must vanish."""
    _, task, model, criterion = build(data_dir, *CRITERION, "--dropout", "0")
    sample = translation_sample(task.target_dictionary)
    model.train()
    loss, _, log = criterion(model, sample)
    _, _, stock_log = stock(task)(model, sample)
    torch.testing.assert_close(log["loss"], stock_log["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["nll_loss"], stock_log["nll_loss"], rtol=1e-5, atol=1e-5)
    assert abs(float(log["kl_loss"])) < 1e-5
    torch.testing.assert_close(loss, 2 * stock_log["loss"], rtol=1e-5, atol=1e-5)


def test_warns_when_the_model_has_no_dropout(data_dir, caplog):
    _, task, model, criterion = build(data_dir, *CRITERION, "--dropout", "0")
    model.train()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            criterion(model, translation_sample(task.target_dictionary))
    assert caplog.text.count("no dropout") == 1  # once, not on every step


def test_warns_when_the_per_copy_rates_leave_no_dropout(data_dir, caplog):
    # --dropout 0.3 is replaced by the copies' rates, both 0: the sub-models are the same model
    _, task, model, criterion = build(data_dir, *CRITERION, "--dropout", "0.3", "--attention-dropout", "0",
                                      "--activation-dropout", "0", "--rdrop-dropout-rates", "[0.0,0.0]")
    model.train()
    with caplog.at_level(logging.WARNING):
        _, _, log = criterion(model, translation_sample(task.target_dictionary))
    assert "no dropout" in caplog.text and abs(float(log["kl_loss"])) < 1e-6


@pytest.mark.parametrize("alpha", ["-1", "inf", "nan"])
def test_a_negative_or_infinite_alpha_is_refused_naming_the_flag(data_dir, alpha):
    with pytest.raises(ValueError, match="--rdrop-alpha must be a finite number >= 0"):
        build(data_dir, *CRITERION, "--rdrop-alpha", alpha)


def test_alpha_is_a_float_and_defaults_to_the_papers_translation_value(data_dir):
    assert build(data_dir, *CRITERION)[3].rdrop_alpha == 5.0
    assert build(data_dir, *CRITERION, "--rdrop-alpha", "0.7")[3].rdrop_alpha == 0.7


def test_works_as_a_drop_in_with_the_stock_translation_task(data_dir):
    torch.manual_seed(1)
    _, task, model, criterion = build(data_dir, *CRITERION, task="translation")
    sample = translation_sample(task.target_dictionary)
    model.train()
    torch.manual_seed(5)
    loss, _, log = criterion(model, sample)
    assert type(task).__name__ == "TranslationTask"
    torch.manual_seed(5)  # the stock task gives no schedule: two copies on every step
    ref_loss, _, _, ref_kl = reference_for(model, sample, 2, 5.0, 0.1, task.target_dictionary.pad())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(log["kl_loss"], ref_kl.detach(), rtol=1e-5, atol=0)
    assert log["kl_loss"] > 0


def test_ignore_prefix_size_and_report_accuracy(data_dir):
    torch.manual_seed(1)
    _, task, model, criterion = build(
        data_dir, *CRITERION, "--ignore-prefix-size", "1", "--report-accuracy"
    )
    pad = task.target_dictionary.pad()
    sample = translation_sample(task.target_dictionary)
    model.train()
    # targets that the first copy predicts, so that the count of correct tokens is far from 0 and differs
    # between the copies (the target does not enter the forward pass, so the logits stay the same)
    torch.manual_seed(9)
    logits = model(**repeat_batch(sample["net_input"], 2))[0].detach()
    target = sample["target"].clone()
    first_copy = logits[0::2].argmax(-1)
    target[:, 1:] = torch.where(target[:, 1:].eq(pad), target[:, 1:], first_copy[:, 1:])
    sample = {**sample, "target": target}
    torch.manual_seed(9)
    loss, _, log = criterion(model, sample)
    torch.manual_seed(9)
    ref = reference_for(model, sample, 2, 5.0, 0.1, pad, prefix=1)
    torch.testing.assert_close(loss, ref[0], rtol=1e-5, atol=1e-5)
    kept = target[:, 1:].ne(pad)
    correct = [int((logits[c::2, 1:].argmax(-1).eq(target[:, 1:]) & kept).sum()) for c in (0, 1)]
    assert correct[0] == int(kept.sum()) > correct[1]  # the second copy's dropout changed some predictions
    # on the stock criterion's scale: the tokens of one copy, the copies' mean count of correct ones
    assert (log["total"], log["n_correct"]) == (int(kept.sum()), sum(correct) / 2)


def test_sentence_avg_uses_sentences_of_one_copy(data_dir):
    _, task, model, criterion = build(data_dir, *CRITERION, "--sentence-avg")
    model.train()
    sample = translation_sample(task.target_dictionary)
    assert criterion(model, sample)[1] == sample["target"].size(0)


def test_metrics_aggregate_over_workers(tiny):
    task, model, criterion, sample = tiny
    model.train()
    logs = [criterion(model, sample)[2], criterion(model, translation_sample(task.target_dictionary, seed=4))[2]]
    assert type(criterion).logging_outputs_can_be_summed()
    summed = {key: sum(log[key] for log in logs) for key in logs[0]}
    with metrics.aggregate() as separate:
        type(criterion).reduce_metrics(logs)
    with metrics.aggregate() as together:
        type(criterion).reduce_metrics([summed])
    for name in ("loss", "nll_loss", "kl_loss", "ppl"):
        assert separate.get_smoothed_value(name) == pytest.approx(together.get_smoothed_value(name), rel=1e-4)
    expected_kl = float(sum(log["kl_loss"] for log in logs)) / sum(log["sample_size"] for log in logs)
    assert separate.get_smoothed_value("kl_loss") == pytest.approx(expected_kl / torch.log(torch.tensor(2.0)).item(), abs=1e-4)


def test_kl_over_a_log_interval_is_per_token_of_all_its_updates(tiny):
    # fairseq reduces each update's logs on its own; --log-interval averages the updates by their sample_size
    task, model, criterion, sample = tiny
    model.train()
    logs = [criterion(model, sample)[2], criterion(model, translation_sample(task.target_dictionary, batch=2, seed=4))[2]]
    assert logs[0]["sample_size"] != logs[1]["sample_size"]
    with metrics.aggregate() as interval:
        for log in logs:
            type(criterion).reduce_metrics([log])
    expected = float(sum(log["kl_loss"] for log in logs)) / sum(log["sample_size"] for log in logs)
    assert interval.get_smoothed_value("kl_loss") == pytest.approx(expected / torch.log(torch.tensor(2.0)).item(), abs=1e-4)
