"""rdrop_adaptive_loss on a tiny transformer_lm_wiki103 (adaptive input + adaptive softmax)."""
import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.adaptive_loss import AdaptiveLoss

from rdrop_fairseq.criterions.rdrop_adaptive_loss import RDropAdaptiveLoss
from rdrop_fairseq.sub_models import dropout_modules, repeat_batch
from reference import assert_close_to_scale
from tiny_lm import build, lm_sample, run_seeded, seeded_with_grads

SEED = 11
ADAPTIVE = ["--adaptive-softmax-cutoff", "12,24", "--adaptive-input-cutoff", "12,24"]


def plain_full_log_probs(adaptive_softmax, hidden):
    head = F.softmax(adaptive_softmax.head(hidden), dim=-1)
    shortlist = adaptive_softmax.cutoff[0]
    probs = [head[:, :shortlist]]
    for i, tail in enumerate(adaptive_softmax.tail):
        probs.append(head[:, shortlist + i, None] * F.softmax(tail(hidden), dim=-1))
    return torch.cat(probs, dim=-1).log()


def reference_loss(model, sample, alpha, pad, log_probs_of=None):
    """NLL of both copies + alpha/2 (KL(P1||P2) + KL(P2||P1)), full vocabulary, non-pad targets;
    ``log_probs_of`` maps the decoder features to ``(tokens, V)`` log-probabilities."""
    adaptive_softmax = model.decoder.adaptive_softmax
    hidden = model(**repeat_batch(sample["net_input"], 2))[0]
    if log_probs_of is None:
        lprobs = plain_full_log_probs(adaptive_softmax, hidden.reshape(-1, hidden.size(-1)))
    else:
        lprobs = log_probs_of(adaptive_softmax, hidden)
    per_sample = lprobs.view(-1, 2, hidden.size(1), lprobs.size(-1))  # sample b's copies: rows 2b, 2b + 1
    lp1, lp2 = per_sample[:, 0].reshape(-1, lprobs.size(-1)), per_sample[:, 1].reshape(-1, lprobs.size(-1))
    target = sample["target"].reshape(-1)
    keep = target.ne(pad).unsqueeze(-1)
    nll = sum(F.nll_loss(lp, target, ignore_index=pad, reduction="sum") for lp in (lp1, lp2))
    kl = 0.5 * ((F.kl_div(lp2, lp1, log_target=True, reduction="none")
                 + F.kl_div(lp1, lp2, log_target=True, reduction="none")) * keep).sum()
    return nll + alpha * kl, nll, kl


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    # No adaptive-softmax dropout: its tail masks are drawn per chunk of tokens, which a
    # plain reference over the whole batch cannot reproduce.
    torch.manual_seed(0)  # the same weights whatever ran before in this process
    task, model, criterion, _ = build(
        tmp_path_factory.mktemp("adaptive"), *ADAPTIVE, "--adaptive-softmax-dropout", "0",
        "--ddp-backend", "legacy_ddp", "--rdrop-chunk-tokens", "5",
        criterion="rdrop_adaptive_loss", arch="transformer_lm_wiki103",
    )
    return task, model, criterion


def test_loss_and_gradient_match_reference(lm):
    task, model, criterion = lm
    assert isinstance(criterion, RDropAdaptiveLoss) and criterion.rdrop_chunk_tokens == 5
    model.train()
    sample = lm_sample(task.dictionary)
    pad = task.dictionary.pad()

    (ref_loss, ref_nll, ref_kl), ref_grads = seeded_with_grads(SEED, reference_loss, model, sample, 1.0, pad)
    (loss, sample_size, log), grads = seeded_with_grads(SEED, criterion, model, sample)

    assert ref_kl > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["loss"], ref_nll.detach() / 2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["kl_loss"], ref_kl.detach(), rtol=1e-5, atol=1e-4)
    assert sample_size == int(sample["target"].ne(pad).sum())
    assert grads.keys() == ref_grads.keys()
    assert_close_to_scale(list(grads.values()), [ref_grads[name] for name in grads], rel=1e-5)


def stock_adaptive_loss(task, model, sample):
    return AdaptiveLoss(task, sentence_avg=False)(model, sample)


def test_alpha_zero_and_validation_are_stock_adaptive_loss(lm):
    task, model, criterion = lm
    sample = lm_sample(task.dictionary)
    model.train()
    criterion.rdrop_alpha = 0.0
    plain = run_seeded(SEED, criterion, model, sample)
    criterion.rdrop_alpha = 1.0
    stock = run_seeded(SEED, stock_adaptive_loss, task, model, sample)
    assert plain[0].item() == stock[0].item() and plain[2] == stock[2]

    model.eval()
    valid = criterion(model, sample)
    assert valid[0].item() == stock_adaptive_loss(task, model, sample)[0].item()
    assert "kl_loss" not in valid[2]


def test_token_counts_are_adaptive_losss_whatever_the_batch_says(lm):
    # adaptive_loss counts the non-padding targets itself; a dataset's ntokens may count otherwise
    task, model, criterion = lm
    model.train()
    sample = {**lm_sample(task.dictionary), "ntokens": 999}
    _, sample_size, log = run_seeded(SEED, criterion, model, sample)
    _, stock_size, stock_log = run_seeded(SEED, stock_adaptive_loss, task, model, sample)
    assert "kl_loss" in log and sample_size == stock_size == log["sample_size"] != 999
    assert log["ntokens"] == stock_log["ntokens"] == int(sample["target"].ne(task.dictionary.pad()).sum())


def test_an_all_padding_batch_gives_zero_loss_and_zero_gradients_as_adaptive_loss(lm):
    # transformer_lm_wiki103 ties the adaptive softmax's head to the adaptive input, and that
    # head cannot take zero rows: the criterion must not hand it the batch's zero kept tokens
    task, model, criterion = lm
    assert model.decoder.adaptive_softmax.head.__class__.__name__ == "TiedHeadModule"
    model.train()
    sample = lm_sample(task.dictionary)
    sample["target"][:] = task.dictionary.pad()
    for run in (criterion, lambda model, sample: stock_adaptive_loss(task, model, sample)):
        model.zero_grad(set_to_none=True)
        loss, sample_size, log = run(model, sample)
        loss.sum().backward()
        assert loss.sum().item() == 0.0 and sample_size == 0 and log["ntokens"] == 0
        assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_nll_is_adaptive_loss_of_each_copy(lm):
    """With the sub-models made identical (no dropout), the NLL is twice adaptive_loss, also for
    the words adaptive_loss counts only by their cluster: those at index padding_idx of a tail
    cluster (12 + 1 and 24 + 1 here), whose cluster-relative target it ignores."""
    task, model, criterion = lm
    model.train()
    sample = lm_sample(task.dictionary)
    pad = task.dictionary.pad()
    sample["target"][0, :2] = torch.tensor([12 + pad, 24 + pad])
    saved = [(m, m.p) for m in dropout_modules(model)]
    for m, _ in saved:
        m.p = 0.0
    try:
        _, _, log = criterion(model, sample)
        _, _, stock_log = stock_adaptive_loss(task, model, sample)
    finally:
        for m, p in saved:
            m.p = p
    torch.testing.assert_close(log["loss"].reshape(()), stock_log["loss"].reshape(()), rtol=1e-5, atol=1e-5)
    assert log["kl_loss"] < 1e-5


@pytest.mark.parametrize("backend", ["pytorch_ddp", "c10d"])
def test_pytorch_ddp_is_refused_with_the_flag_named(tmp_path, backend):
    # c10d is fairseq's older name for pytorch_ddp
    with pytest.raises(ValueError, match=f"--ddp-backend legacy_ddp, not {backend}"):
        build(tmp_path, *ADAPTIVE, "--ddp-backend", backend,
              criterion="rdrop_adaptive_loss", arch="transformer_lm_wiki103")


def test_alpha_sentence_avg_and_chunk_options_reach_the_step(tmp_path, monkeypatch):
    import rdrop_fairseq.adaptive_softmax as adaptive_softmax_module

    alpha, chunk = 0.5, 4
    torch.manual_seed(0)
    task, model, criterion, _ = build(
        tmp_path, *ADAPTIVE, "--ddp-backend", "legacy_ddp", "--rdrop-alpha", str(alpha), "--sentence-avg",
        "--rdrop-chunk-tokens", str(chunk), criterion="rdrop_adaptive_loss", arch="transformer_lm_wiki103",
    )
    rows = []
    plain = adaptive_softmax_module.full_log_probs_and_cluster_priors

    def recording(adaptive_softmax, hidden):
        rows.append(hidden.size(0))
        return plain(adaptive_softmax, hidden)

    monkeypatch.setattr(adaptive_softmax_module, "full_log_probs_and_cluster_priors", recording)
    model.train()
    sample = lm_sample(task.dictionary)
    loss, sample_size, log = run_seeded(SEED, criterion, model, sample)
    _, stock_size, stock_log = run_seeded(SEED, AdaptiveLoss(task, sentence_avg=True), model, sample)

    assert log["kl_loss"] > 0
    torch.testing.assert_close(loss, 2 * log["loss"] + alpha * log["kl_loss"])
    assert sample_size == log["sample_size"] == stock_size == stock_log["sample_size"] == sample["target"].size(0)
    kept = int(sample["target"].ne(task.dictionary.pad()).sum())
    assert sum(rows) == 2 * kept and max(rows) == 2 * chunk < 2 * kept


def test_model_without_adaptive_softmax_is_refused(tmp_path):
    task, model, criterion, _ = build(tmp_path, "--ddp-backend", "legacy_ddp", criterion="rdrop_adaptive_loss")
    model.train()
    with pytest.raises(ValueError, match="adaptive softmax"):
        criterion(model, lm_sample(task.dictionary))


NO_DROPOUT_DECODER = [
    "--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-input-dim", "16",
    "--decoder-output-dim", "16", "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
    "--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0", "--tokens-per-sample", "16",
]


def test_input_dropout_is_part_of_each_sub_model(tmp_path):
    """The sub-models differ only by --adaptive-softmax-dropout (no tail clusters): the KL is
    between the distributions whose NLL is trained, head(dropout(h)) per copy."""
    torch.manual_seed(0)
    task, model, criterion, _ = build(
        tmp_path, "--adaptive-softmax-cutoff", "44", "--adaptive-softmax-dropout", "0.5",  # 40 words + 4 specials
        "--ddp-backend", "legacy_ddp", criterion="rdrop_adaptive_loss", model_args=NO_DROPOUT_DECODER,
    )
    adaptive_softmax = model.decoder.adaptive_softmax
    assert len(adaptive_softmax.tail) == 0
    model.train()
    sample = lm_sample(task.dictionary)
    pad = task.dictionary.pad()

    def head_of_dropped(adaptive_softmax, hidden):
        dropped = adaptive_softmax.dropout_module(hidden.contiguous())
        return F.log_softmax(adaptive_softmax.head(dropped.view(-1, dropped.size(-1))), dim=-1)

    def reference(model, sample):
        return reference_loss(model, sample, 1.0, pad, log_probs_of=head_of_dropped)

    (ref_loss, ref_nll, ref_kl), ref_grads = seeded_with_grads(SEED, reference, model, sample)
    (loss, _, log), grads = seeded_with_grads(SEED, criterion, model, sample)
    assert ref_kl > 0.1
    torch.testing.assert_close(log["kl_loss"], ref_kl.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["nll_loss"], ref_nll.detach() / 2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    assert_close_to_scale(list(grads.values()), [ref_grads[name] for name in grads], rel=1e-5)


def test_half_precision_nll_is_summed_in_fp32(tmp_path):
    """A model in fp16 (--fp16): stock adaptive_loss sums one copy's NLL in fp16 below 65504;
    the copies' sum, twice that, must not overflow."""
    torch.manual_seed(0)
    task, model, criterion, _ = build(
        tmp_path, "--adaptive-softmax-cutoff", "2000,10000", "--ddp-backend", "legacy_ddp",
        num_words=30000, criterion="rdrop_adaptive_loss",
        model_args=[*NO_DROPOUT_DECODER[:-4], "--dropout", "0.1", "--tokens-per-sample", "3072"],
    )
    model.half().train()
    sample = lm_sample(task.dictionary, batch=1, length=3072, pad_tail=(0,))
    stock_loss = run_seeded(SEED, stock_adaptive_loss, task, model, sample)[0]
    loss, _, log = run_seeded(SEED, criterion, model, sample)
    assert stock_loss.dtype == torch.float16 and 65504 / 2 < stock_loss.item() < 65504
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(log["nll_loss"].float(), stock_loss.float().reshape(()), rtol=0.02, atol=0)
