"""The shared criterion code: which output route the loss takes."""
import pytest
import torch
import torch.nn.functional as F

import tiny_lm
from reference import assert_close_to_scale, reference_loss
from rdrop_fairseq.criterions import rdrop_criterion
from rdrop_fairseq.criterions.rdrop_criterion import log_softmax_input
from rdrop_fairseq.sub_models import repeat_batch
from tiny_fairseq import build, translation_sample, write_dictionaries

CRITERION = ["--criterion", "rdrop_label_smoothed_cross_entropy", "--label-smoothing", "0.1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dictionaries(tmp_path_factory.mktemp("dicts"))


class Wrapper(torch.nn.Module):
    """Stands in for fairseq's distributed wrappers, which keep the model as ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_plain_log_softmax_models_give_their_logits(data_dir, tmp_path):
    _, _, transformer, _ = build(data_dir, *CRITERION)
    net_output = (torch.zeros(1, 2, 3), {})
    assert log_softmax_input(transformer, net_output) is net_output[0]
    assert log_softmax_input(Wrapper(Wrapper(transformer)), net_output) is net_output[0]
    _, lm, _, _ = tiny_lm.build(tmp_path / "lm")
    assert log_softmax_input(lm, net_output) is net_output[0]
    _, adaptive_lm, _, _ = tiny_lm.build(
        tmp_path / "adaptive", "--adaptive-softmax-cutoff", "12,24", "--adaptive-input-cutoff", "12,24",
        "--ddp-backend", "legacy_ddp", criterion="rdrop_adaptive_loss", arch="transformer_lm_wiki103",
    )
    assert log_softmax_input(adaptive_lm, net_output) is None


@pytest.mark.parametrize("owner,method", [
    ("model", "get_normalized_probs_scriptable"),
    ("decoder", "get_normalized_probs"),
    ("decoder", "get_normalized_probs_scriptable"),
])
def test_a_class_that_overrides_a_normaliser_gets_no_logits(data_dir, owner, method):
    # e.g. a decoder with a temperature or a copy mechanism: its log-probabilities are not log_softmax(logits)
    _, _, model, _ = build(data_dir, *CRITERION)
    net_output = (torch.zeros(1, 2, 3), {})
    target = model if owner == "model" else model.decoder
    plain = getattr(type(target), method)
    target.__class__ = type("Overriding", (type(target),), {method: lambda self, *args, **kwargs: plain(self, *args, **kwargs)})
    assert log_softmax_input(model, net_output) is None


def test_a_model_with_its_own_normalisation_goes_through_it(data_dir):
    torch.manual_seed(1)
    _, task, model, criterion = build(data_dir, *CRITERION)
    sample = translation_sample(task.target_dictionary)
    temperature = 3.0
    model.get_normalized_probs = lambda net_output, log_probs, sample=None: F.log_softmax(
        net_output[0].float() / temperature, dim=-1
    )
    assert log_softmax_input(model, (torch.zeros(1), {})) is None
    model.train()
    torch.manual_seed(5)
    loss, _, _ = criterion(model, sample)
    torch.manual_seed(5)
    logits = model(**repeat_batch(sample["net_input"], 2))[0] / temperature
    ref = reference_loss(logits, sample["target"], 2, 5.0, 0.1, task.target_dictionary.pad())
    torch.testing.assert_close(loss, ref[0], rtol=1e-5, atol=1e-5)


def test_logits_route_equals_the_log_softmax_route(data_dir, monkeypatch):
    torch.manual_seed(1)
    _, task, model, criterion = build(data_dir, *CRITERION, "--report-accuracy")
    sample = translation_sample(task.target_dictionary)
    model.train()
    results = []
    for route in ("logits", "lprobs"):
        if route == "lprobs":
            monkeypatch.setattr(rdrop_criterion, "log_softmax_input", lambda model, net_output: None)
        model.zero_grad()
        torch.manual_seed(3)
        loss, _, log = criterion(model, sample)
        loss.backward()
        results.append((loss, log, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_a, log_a, grads_a), (loss_b, log_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=0)
    for key in ("loss", "nll_loss", "kl_loss"):
        torch.testing.assert_close(log_a[key], log_b[key], rtol=1e-5, atol=0, msg=key)
    assert (log_a["n_correct"], log_a["total"]) == (log_b["n_correct"], log_b["total"])
    assert_close_to_scale(grads_a, grads_b, rel=1e-5)
