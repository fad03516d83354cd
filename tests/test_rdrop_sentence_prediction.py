"""rdrop_sentence_prediction on a tiny RoBERTa (no download), against plainly written references."""
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from fairseq import options, tasks
from fairseq.criterions.sentence_prediction import SentencePredictionCriterion
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.logging import metrics

from rdrop_fairseq.criterions.rdrop_sentence_prediction import RDropSentencePredictionCriterion
from tiny_lm import USER_DIR, run_seeded, seeded_with_grads

SEED = 7
HEAD = "sentence_classification_head"
TINY_ROBERTA = [
    "--arch", "roberta_base", "--encoder-layers", "1", "--encoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2", "--max-positions", "32",
    "--dropout", "0.3", "--attention-dropout", "0.1", "--pooler-dropout", "0.2",
]


def build(data_dir, *extra, regression=False, num_classes=3, task="sentence_prediction"):
    for sub, symbols in (("input0", [str(i) for i in range(30)]), ("label", [str(i) for i in range(num_classes)])):
        dictionary = Dictionary()
        for i, symbol in enumerate(symbols):
            dictionary.add_symbol(symbol, n=100 - i)
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
        dictionary.save(str(data_dir / sub / "dict.txt"))
    argv = [str(data_dir), "--user-dir", USER_DIR, "--task", task, "--criterion", "rdrop_sentence_prediction",
            "--num-classes", "1" if regression else str(num_classes), *TINY_ROBERTA, *extra]
    if regression:
        argv.append("--regression-target")
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    fairseq_task = tasks.setup_task(cfg.task)
    model = fairseq_task.build_model(cfg.model)
    return fairseq_task, model, fairseq_task.build_criterion(cfg.criterion), cfg


def glue_sample(dictionary, batch=4, length=7, regression=False, num_classes=3, seed=0):
    """A right-padded batch as fairseq's sentence_prediction task collates it."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(dictionary.nspecial + 1, len(dictionary), (batch, length), generator=gen)
    tokens[:, 0] = dictionary.bos()
    lengths = torch.tensor([length - (row % 3) for row in range(batch)])
    for row, n in enumerate(lengths):
        tokens[row, n - 1] = dictionary.eos()
        tokens[row, n:] = dictionary.pad()
    target = (torch.rand(batch, generator=gen) if regression
              else torch.randint(0, num_classes, (batch,), generator=gen))
    return {"id": torch.arange(batch), "net_input": {"src_tokens": tokens, "src_lengths": lengths},
            "target": target, "ntokens": int(lengths.sum()), "nsentences": batch}


def copies_of(net_input, copies):
    """The batch with each sample repeated ``copies`` times in a row (the interleaved layout)."""
    return {key: value.repeat_interleave(copies, 0) for key, value in net_input.items()}


def reference_classification(model, sample, copies, alpha, head=HEAD):
    """Cross-entropy of every copy + alpha / (m (m-1)) * sum over ordered pairs of KL(P_i || P_j)."""
    logits, _ = model(**copies_of(sample["net_input"], copies), features_only=True, classification_head_name=head)
    lprobs = F.log_softmax(logits.float(), -1).view(-1, copies, logits.size(-1))
    nll = sum(F.nll_loss(lprobs[:, k], sample["target"], reduction="sum") for k in range(copies))
    kl = sum(F.kl_div(lprobs[:, j], lprobs[:, i], log_target=True, reduction="sum")
             for i in range(copies) for j in range(copies) if i != j) / (copies * (copies - 1))
    return nll + alpha * kl, nll, kl


def reference_regression(model, sample, copies, alpha):
    """Squared error of every copy + alpha * mean over ordered pairs of (y_i - y_j)^2."""
    out, _ = model(**copies_of(sample["net_input"], copies), features_only=True, classification_head_name=HEAD)
    y = out.float().view(-1, copies)
    mse = sum(F.mse_loss(y[:, k], sample["target"], reduction="sum") for k in range(copies))
    consistency = sum(((y[:, i] - y[:, j]) ** 2).sum()
                      for i in range(copies) for j in range(copies) if i != j) / (copies * (copies - 1))
    return mse + alpha * consistency, mse, consistency


@pytest.mark.parametrize("regression", [False, True])
@pytest.mark.parametrize("copies,alpha", [(2, 1.0), (3, 0.5)])
def test_loss_and_gradient_match_reference(tmp_path, regression, copies, alpha):
    task, model, criterion, _ = build(tmp_path, "--rdrop-alpha", str(alpha), "--rdrop-copies", str(copies),
                                      regression=regression, task="rdrop_sentence_prediction")
    reference = reference_regression if regression else reference_classification
    sample = glue_sample(task.source_dictionary, regression=regression)
    model.train()

    (ref_loss, ref_task_loss, ref_consistency), ref_grads = seeded_with_grads(SEED, reference, model, sample,
                                                                               copies, alpha)
    (loss, sample_size, log), grads = seeded_with_grads(SEED, criterion, model, sample)

    assert ref_consistency > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["loss"], ref_task_loss.detach() / copies, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["kl_loss"], ref_consistency.detach(), rtol=1e-5, atol=1e-5)
    assert sample_size == log["nsentences"] == 4
    assert grads.keys() == ref_grads.keys() and HEAD in " ".join(grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_regression_on_several_values_pairs_each_value_across_copies(tmp_path):
    """--regression-target --num-classes 2: each sample has two target values; the squared error
    and the consistency pair the copies' predictions of the same value, and the sample size is
    the stock criterion's, one per target value."""
    copies, alpha, batch = 2, 1.0, 4
    task, model, criterion, cfg = build(tmp_path, "--num-classes", "2", "--rdrop-alpha", str(alpha),
                                        regression=True)
    sample = glue_sample(task.source_dictionary, batch=batch, regression=True)
    sample["target"] = torch.rand(batch, 2, generator=torch.Generator().manual_seed(1))
    model.train()

    def reference(model, sample):
        out, _ = model(**copies_of(sample["net_input"], copies), features_only=True, classification_head_name=HEAD)
        y = out.float().view(batch, copies, 2)
        mse = sum(F.mse_loss(y[:, k], sample["target"], reduction="sum") for k in range(copies))
        consistency = ((y[:, 0] - y[:, 1]) ** 2).sum()
        return mse + alpha * consistency, mse, consistency

    (ref_loss, ref_mse, ref_consistency), ref_grads = seeded_with_grads(SEED, reference, model, sample)
    (loss, sample_size, log), grads = seeded_with_grads(SEED, criterion, model, sample)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["kl_loss"], ref_consistency.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["loss"], ref_mse.detach() / copies, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    model.eval()
    _, stock_size, stock_log = SentencePredictionCriterion(cfg.criterion, task)(model, sample)
    assert (sample_size, log["nsentences"]) == (stock_size, stock_log["nsentences"]) == (2 * batch, 2 * batch)


def test_the_named_classification_head_is_trained(tmp_path):
    """--classification-head-name: the R-Drop passes go through that head, as the stock criterion's."""
    task, model, criterion, _ = build(tmp_path, "--classification-head-name", "other_head")
    assert set(model.classification_heads) == {"other_head"}
    sample = glue_sample(task.source_dictionary)
    model.train()
    (ref_loss, _, _), ref_grads = seeded_with_grads(SEED, reference_classification, model, sample, 2, 1.0,
                                                    "other_head")
    (loss, _, _), grads = seeded_with_grads(SEED, criterion, model, sample)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and "other_head" in " ".join(grads)


@pytest.mark.parametrize("regression", [False, True])
def test_training_step_logs_the_stock_counts_and_metrics(tmp_path, regression):
    """A training step logs what the stock criterion's does (ntokens, nsentences, sample_size; ncorrect
    only for classification) plus the R-Drop terms, so fairseq's reduce_metrics reports the same
    metrics and kl_loss besides."""
    task, model, criterion, cfg = build(tmp_path, "--num-classes", "2", regression=regression)
    sample = glue_sample(task.source_dictionary, regression=regression, num_classes=2)
    if regression:
        sample["target"] = torch.rand(4, 2, generator=torch.Generator().manual_seed(1))
    model.train()
    _, size, log = run_seeded(SEED, criterion, model, sample)
    _, stock_size, stock_log = run_seeded(SEED, SentencePredictionCriterion(cfg.criterion, task), model, sample)

    assert sample["ntokens"] != sample["target"].numel()  # so that a count taken from the other would show
    assert log.keys() == stock_log.keys() | {"kl_loss", "nll_loss"}
    assert ("ncorrect" in log) is not regression
    assert size == stock_size
    assert [log[key] for key in ("ntokens", "nsentences", "sample_size")] == \
        [stock_log[key] for key in ("ntokens", "nsentences", "sample_size")]
    metric_names = []
    for logs in (log, stock_log):
        with metrics.aggregate() as agg:
            criterion.reduce_metrics([logs])
        metric_names.append(set(agg.get_smoothed_values()))
    assert metric_names[0] == metric_names[1] | {"kl_loss"}
    assert "nll_loss" in metric_names[0] and ("accuracy" in metric_names[0]) is not regression


@pytest.mark.parametrize("flag, name", [("--mha-reg-scale-factor", "mha_reg_loss"),
                                        ("--ffn-reg-scale-factor", "ffn_reg_loss")])
def test_roberta_regularisers_are_part_of_each_sub_models_loss(tmp_path, flag, name):
    """RoBERTa's head / FFN regulariser, which the stock criterion adds to its loss, is added to
    every sub-model's loss, so it keeps its weight against the task loss, and is logged as there."""
    copies, alpha = 2, 1.0
    task, model, criterion, cfg = build(tmp_path, flag, "0.5")
    sample = glue_sample(task.source_dictionary)
    model.train()

    def reference(model, sample):
        regulariser = getattr(model, {"mha_reg_loss": "_get_adaptive_head_loss",
                                      "ffn_reg_loss": "_get_adaptive_ffn_loss"}[name])()
        loss, task_loss, _ = reference_classification(model, sample, copies, alpha)
        return loss + copies * regulariser, task_loss, regulariser

    (ref_loss, ref_task_loss, ref_regulariser), ref_grads = seeded_with_grads(SEED, reference, model, sample)
    (loss, _, log), grads = seeded_with_grads(SEED, criterion, model, sample)

    assert ref_regulariser > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log[name], ref_regulariser.detach())
    torch.testing.assert_close(log["loss"], ref_task_loss.detach() / copies + ref_regulariser.detach(),
                               rtol=1e-5, atol=1e-5)
    for key in grads:
        torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-6, msg=key)
    with metrics.aggregate() as agg:
        criterion.reduce_metrics([log])
    assert name in agg.get_smoothed_values()


@pytest.mark.parametrize("copies", [2, 3])
def test_training_accuracy_is_the_copies_mean(tmp_path, copies):
    task, model, criterion, _ = build(tmp_path, "--rdrop-copies", str(copies), task="rdrop_sentence_prediction")
    sample = glue_sample(task.source_dictionary, batch=6)
    model.train()
    _, _, log = run_seeded(SEED, criterion, model, sample)
    torch.manual_seed(SEED)
    logits, _ = model(**copies_of(sample["net_input"], copies), features_only=True, classification_head_name=HEAD)
    correct = logits.argmax(-1).view(-1, copies).eq(sample["target"].unsqueeze(1)).sum().item()
    assert 0 < correct < 6 * copies  # so that dividing by another count would show
    assert log["ncorrect"] == pytest.approx(correct / copies)
    with metrics.aggregate() as agg:
        criterion.reduce_metrics([log])
    assert agg.get_smoothed_values()["accuracy"] == pytest.approx(round(100 * correct / copies / 6, 1))


@pytest.mark.parametrize("regression,report", [(False, "--report-mcc"), (False, "--report-acc-and-f1"),
                                               (True, "--report-pearson-and-spearman")])
def test_validation_equals_the_stock_criterion(tmp_path, regression, report):
    task, model, criterion, cfg = build(tmp_path, report, regression=regression, num_classes=2)
    stock = SentencePredictionCriterion(cfg.criterion, task)
    sample = glue_sample(task.source_dictionary, batch=8, regression=regression, num_classes=2)
    model.eval()
    loss, size, log = criterion(model, sample)
    ref_loss, ref_size, ref_log = stock(model, sample)
    assert "kl_loss" not in log and log.keys() == ref_log.keys()
    torch.testing.assert_close(loss, ref_loss)
    assert size == ref_size and log["pred"] == ref_log["pred"] and log["targ"] == ref_log["targ"]
    values = []
    for crit, logs in ((criterion, log), (stock, ref_log)):
        with metrics.aggregate() as agg:
            crit.reduce_metrics([logs])
        values.append(agg.get_smoothed_values())
    assert values[0] == values[1]
    assert {"mcc", "f1", "pearson"} & set(values[0])


def test_alpha_zero_is_the_stock_training_step(tmp_path):
    task, model, criterion, cfg = build(tmp_path, "--rdrop-alpha", "0")
    sample = glue_sample(task.source_dictionary)
    model.train()
    loss, _, log = run_seeded(SEED, criterion, model, sample)
    ref_loss, _, ref_log = run_seeded(SEED, SentencePredictionCriterion(cfg.criterion, task), model, sample)
    torch.testing.assert_close(loss, ref_loss)
    assert "kl_loss" not in log and log.keys() == ref_log.keys()


def test_defaults_and_refusals(tmp_path):
    _, model, criterion, _ = build(tmp_path / "ok")
    assert isinstance(criterion, RDropSentencePredictionCriterion) and criterion.rdrop_alpha == 1.0
    with pytest.raises(ValueError, match="--rdrop-alpha must be a finite number >= 0"):
        build(tmp_path / "negative", "--rdrop-alpha", "-0.5")
    criterion.classification_head_name = "missing_head"
    model.train()
    with pytest.raises(ValueError, match="classification head 'missing_head'"):
        criterion(model, glue_sample(criterion.task.source_dictionary))


def test_task_schedule_options_reach_the_criterion(tmp_path):
    task, model, criterion, _ = build(tmp_path, "--rdrop-every-k-steps", "2", "--rdrop-dropout-rates", "[0.1,0.4]",
                                      task="rdrop_sentence_prediction")
    sample = glue_sample(task.source_dictionary)
    model.train()
    assert "kl_loss" not in criterion(model, sample, update_num=1)[2]  # a skipped step: the stock criterion
    dropouts = [m for m in model.modules() if type(m).__name__ == "FairseqDropout"]
    before, seen = [m.p for m in dropouts], []
    hooks = [m.register_forward_pre_hook(lambda module, args: seen.append(module.p)) for m in dropouts]
    _, _, log = criterion(model, sample, update_num=2)
    for hook in hooks:
        hook.remove()
    assert log["kl_loss"] > 0
    assert {0.1, 0.4} <= set(seen)  # each sub-model's pass ran at its own rate
    assert [m.p for m in dropouts] == before  # and every rate is restored after the step


@pytest.mark.parametrize("report", [None, "--report-mcc", "--report-acc-and-f1", "--report-pearson-and-spearman"])
def test_logging_outputs_are_summed_only_without_per_example_lists(tmp_path, report):
    regression = report == "--report-pearson-and-spearman"
    task, model, criterion, _ = build(tmp_path, *([report] if report else []), regression=regression,
                                      num_classes=2, task="rdrop_sentence_prediction")
    model.eval()
    _, _, log = criterion(model, glue_sample(task.source_dictionary, regression=regression, num_classes=2))
    assert ("pred" in log) == (report is not None)
    # What fairseq's trainer asks before syncing logs across workers.
    assert task.__class__.logging_outputs_can_be_summed(criterion) is (report is None)


class _Workers:
    """The parts of fairseq's Trainer that sync logging outputs, for two simulated workers."""

    def __init__(self, task, criterion, monkeypatch, logs):
        from fairseq import trainer

        self.task, self.tpu = task, False
        self.cfg = SimpleNamespace(common=SimpleNamespace(all_gather_list_size=16384))
        self.data_parallel_process_group = None
        self.get_criterion = lambda: criterion
        self._aggregate_logging_outputs = partial(trainer.Trainer._aggregate_logging_outputs, self)
        self._all_gather_list_sync = partial(trainer.Trainer._all_gather_list_sync, self)
        self._fast_stat_sync_sum = partial(trainer.Trainer._fast_stat_sync_sum, self)
        sizes = [log["sample_size"] for log in logs]
        monkeypatch.setattr(trainer.distributed_utils, "all_gather_list",
                            lambda data, **kw: [[[log], size] for log, size in zip(logs, sizes)])
        monkeypatch.setattr(trainer.distributed_utils, "all_reduce_dict", lambda data, **kw: data)


@pytest.mark.parametrize("regression,report,metric", [(False, "--report-mcc", "mcc"),
                                                      (False, "--report-acc-and-f1", "f1"),
                                                      (True, "--report-pearson-and-spearman", "pearson")])
def test_two_worker_validation_gathers_every_prediction(tmp_path, monkeypatch, regression, report, metric):
    task, model, criterion, cfg = build(tmp_path, report, regression=regression, num_classes=2,
                                        task="rdrop_sentence_prediction")
    model.eval()
    halves = [glue_sample(task.source_dictionary, batch=6, regression=regression, num_classes=2, seed=seed)
              for seed in (1, 2)]
    logs = [criterion(model, half)[2] for half in halves]
    assert [len(log["pred"]) for log in logs] == [len(log["targ"]) for log in logs] == [6, 6]
    workers = _Workers(task, criterion, monkeypatch, logs)
    gathered, (size,) = workers._aggregate_logging_outputs([logs[0]], logs[0]["sample_size"])
    assert size == 12 and len(gathered) == 2
    with metrics.aggregate() as agg:
        criterion.reduce_metrics(gathered)
    # The same metric as on one worker that saw both halves.
    with metrics.aggregate() as one:
        criterion.reduce_metrics([{**logs[0], "pred": logs[0]["pred"] + logs[1]["pred"],
                                   "targ": logs[0]["targ"] + logs[1]["targ"]}])
    assert agg.get_smoothed_values()[metric] == one.get_smoothed_values()[metric]
    assert agg["pred"].tensor.numel() == agg["targ"].tensor.numel() == 12

    # fairseq 0.12.3.1's stock criterion says its logs can be summed, and summing these lists fails:
    # why scripts/train-glue.sh drops the report flags for the baseline on several GPUs.
    stock = SentencePredictionCriterion(cfg.criterion, task)
    assert stock.logging_outputs_can_be_summed()
    stock_logs = [stock(model, half)[2] for half in halves]
    stock_workers = _Workers(task, stock, monkeypatch, stock_logs)
    with pytest.raises(TypeError, match="list"):
        stock_workers._aggregate_logging_outputs([stock_logs[0]], stock_logs[0]["sample_size"])
