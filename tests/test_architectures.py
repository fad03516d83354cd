"""R-Drop on each fairseq architecture that users train with it.

For every architecture, two checks:

- one R-Drop step of a tiny model, built from fairseq-train flags through the task:
  its loss and gradient equal Eq. 4 (``reference.reference_loss``) on the sub-models'
  outputs, and those outputs hold sample ``b``'s copies in rows ``b * m`` to
  ``b * m + m - 1`` (the layout the loss reads);
- fairseq-train for two updates on the shared corpus slice, then fairseq-generate or
  fairseq-eval-lm on its checkpoint.  Both run through ``fairseq_cli``'s own ``main``
  in this process, as the console scripts call it, which spares each run the few
  seconds a new Python process with torch and fairseq takes to start.
"""
import logging

import pytest
import torch
import torch.nn.functional as F
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import tiny_lm
from conftest import LOHELP_SLICE
from fairseq_runs import train_in_process
from reference import assert_close_to_scale, reference_loss
from rdrop_fairseq.sub_models import SubModelPasses
from tiny_fairseq import USER_DIR, build, translation_sample, write_dictionaries

DROPOUT = ["--dropout", "0.3"]
TRANSFORMER = [
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]
LSTM = [
    "--encoder-embed-dim", "16", "--encoder-hidden-size", "16", "--decoder-embed-dim", "16",
    "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
]
FCONV = [
    "--encoder-embed-dim", "16", "--encoder-layers", "[(16, 3)] * 2", "--decoder-embed-dim", "16",
    "--decoder-layers", "[(16, 3)] * 2", "--decoder-out-embed-dim", "16",
]
LIGHTCONV = [
    *TRANSFORMER, "--encoder-conv-dim", "16", "--decoder-conv-dim", "16",
    "--encoder-kernel-size-list", "[3]", "--decoder-kernel-size-list", "[3]",
]
TRANSLATION_ARCHS = {
    "transformer": TRANSFORMER,
    "transformer_iwslt_de_en": TRANSFORMER,
    "transformer_vaswani_wmt_en_de_big": TRANSFORMER,
    "lstm": LSTM,
    "lstm_wiseman_iwslt_de_en": LSTM,
    "fconv_iwslt_de_en": FCONV,
    "lightconv_iwslt_de_en": LIGHTCONV,
    "bart_base": TRANSFORMER,
}
MULTILINGUAL = [
    "--task", "translation_multi_simple_epoch", "--lang-pairs", "de-en", "--source-lang", "de",
    "--target-lang", "en", "--encoder-langtok", "src", "--decoder-langtok",
]
TRANSLATION_CRITERION = ["--criterion", "rdrop_label_smoothed_cross_entropy", "--label-smoothing", "0.1"]

LM_DECODER = [
    "--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-input-dim", "16",
    "--decoder-output-dim", "16", "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
]
LM_ARCHS = {  # (model flags, criterion)
    "transformer_lm": (LM_DECODER, "rdrop_cross_entropy"),
    "transformer_lm_gpt": (LM_DECODER, "rdrop_cross_entropy"),
    "lstm_lm": (["--decoder-embed-dim", "16", "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16"],
                "rdrop_cross_entropy"),
    "fconv_lm": (["--decoder-embed-dim", "16", "--decoder-layers", "[(16, 3)] * 2"], "rdrop_cross_entropy"),
    "transformer_lm_wiki103": ([*LM_DECODER, "--ddp-backend", "legacy_ddp"], "rdrop_adaptive_loss"),
}
TINY_ADAPTIVE = ["--adaptive-softmax-cutoff", "12,24", "--adaptive-input-cutoff", "12,24"]


def outputs_of_passes(model):
    """Records ``output[0]`` of every forward pass of ``model``; returns (list, hook handle)."""
    outputs = []
    handle = model.register_forward_hook(lambda module, args, output: outputs.append(output[0]))
    return outputs, handle


def assert_step_is_eq4(model, criterion, sample, epsilon, pad, log_probs_of=None):
    """One R-Drop step's loss, KL and parameter gradients equal Eq. 4 computed plainly on
    the outputs of the passes it made (interleaved as the layout says)."""
    model.train()
    outputs, handle = outputs_of_passes(model)
    try:
        torch.manual_seed(0)
        loss, _, log = criterion(model, sample)
    finally:
        handle.remove()
    copies = criterion.sub_model_passes.copies
    scores = outputs[0] if len(outputs) == 1 else torch.stack(outputs, dim=1).flatten(0, 1)
    assert scores.size(0) == copies * sample["target"].size(0)
    if log_probs_of is not None:
        scores = log_probs_of(scores)
    ref_loss, _, _, ref_kl = reference_loss(scores, sample["target"], copies, criterion.rdrop_alpha, epsilon, pad)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    theirs = torch.autograd.grad(ref_loss, params, allow_unused=True)
    assert [g is None for g in ours] == [g is None for g in theirs]
    assert ref_kl > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(log["kl_loss"], ref_kl.detach(), rtol=1e-5, atol=0)
    assert_close_to_scale([g for g in ours if g is not None], [g for g in theirs if g is not None], rel=1e-5)
    return outputs


def assert_copies_interleaved(model, net_input, copies=3):
    """Without dropout, rows ``b * copies + k`` of the sub-models' output are sample b's output."""
    model.eval()
    with torch.no_grad():
        single = model(**net_input)[0]
        repeated = SubModelPasses(copies=copies).forward(model, net_input, copies)[0]
    for k in range(copies):
        assert_close_to_scale(repeated[k::copies], single, rel=1e-5, msg=f"copy {k}")


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread runs them faster than torch's intra-op pool,
    whose threads wait on each other when the CPU is shared (measured: 7 s instead of
    18 s for one fairseq-train and fairseq-generate below)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dictionaries(tmp_path_factory):
    return write_dictionaries(tmp_path_factory.mktemp("dicts"))


@pytest.mark.parametrize("arch", sorted(TRANSLATION_ARCHS))
def test_translation_step_equals_eq4(dictionaries, arch):
    torch.manual_seed(1)
    _, task, model, criterion = build(dictionaries, *TRANSLATION_CRITERION,
                                      model_args=["--arch", arch, *TRANSLATION_ARCHS[arch], *DROPOUT])
    sample = translation_sample(task.target_dictionary)
    assert_copies_interleaved(model, sample["net_input"])
    assert_step_is_eq4(model, criterion, sample, 0.1, task.target_dictionary.pad())


def test_multilingual_step_equals_eq4(dictionaries):
    torch.manual_seed(1)
    _, task, model, criterion = build(dictionaries, *TRANSLATION_CRITERION, *MULTILINGUAL[2:],
                                      task=MULTILINGUAL[1],
                                      model_args=["--arch", "transformer", *TRANSFORMER, *DROPOUT])
    dictionary = task.target_dictionary
    assert any(dictionary[i] == "__en__" for i in range(len(dictionary)))
    sample = translation_sample(dictionary)
    assert_copies_interleaved(model, sample["net_input"])
    assert_step_is_eq4(model, criterion, sample, 0.1, dictionary.pad())


def plain_full_log_probs(adaptive_softmax, hidden):
    """log p(cluster) + log p(word | cluster) over the whole vocabulary, for ``(..., d)`` states."""
    flat = hidden.reshape(-1, hidden.size(-1))
    head = F.log_softmax(adaptive_softmax.head(flat), dim=-1)
    shortlist = adaptive_softmax.cutoff[0]
    parts = [head[:, :shortlist]]
    for i, tail in enumerate(adaptive_softmax.tail):
        parts.append(head[:, shortlist + i, None] + F.log_softmax(tail(flat), dim=-1))
    return torch.cat(parts, dim=-1).view(*hidden.shape[:-1], -1)


@pytest.mark.parametrize("arch", sorted(LM_ARCHS))
def test_language_model_step_equals_eq4(tmp_path, arch):
    model_args, criterion_name = LM_ARCHS[arch]
    adaptive = criterion_name == "rdrop_adaptive_loss"
    # No adaptive-softmax dropout: the NLL's clusters and the KL's full softmax then see
    # the same distribution, which the plain reference computes once.
    extra = [*TINY_ADAPTIVE, "--adaptive-softmax-dropout", "0"] if adaptive else []
    torch.manual_seed(1)
    task, model, criterion, _ = tiny_lm.build(
        tmp_path, *extra, arch=arch, criterion=criterion_name,
        model_args=[*model_args, *DROPOUT, "--tokens-per-sample", "16"],
    )
    sample = tiny_lm.lm_sample(task.dictionary)
    assert_copies_interleaved(model, sample["net_input"])
    log_probs_of = (lambda hidden: plain_full_log_probs(model.decoder.adaptive_softmax, hidden)) if adaptive else None
    assert_step_is_eq4(model, criterion, sample, 0.0, task.dictionary.pad(), log_probs_of)


# LayerDrop draws the layers to drop once per forward pass.

LAYERDROP = ["--encoder-layers", "3", "--decoder-layers", "3", "--encoder-layerdrop", "0.5", "--decoder-layerdrop", "0.5"]
NO_DROPOUT = ["--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0"]


def layers_kept_per_pass(monkeypatch):
    """Records, for each iteration over a LayerDropModuleList, the indices of the layers it kept."""
    from fairseq.modules import LayerDropModuleList

    kept = []
    plain_iter = LayerDropModuleList.__iter__

    def recording_iter(self):
        layers = list(torch.nn.ModuleList.__iter__(self))
        chosen = list(plain_iter(self))
        kept.append(tuple(layers.index(m) for m in chosen))
        return iter(chosen)

    monkeypatch.setattr(LayerDropModuleList, "__iter__", recording_iter)
    return kept


def test_layerdrop_gives_each_sub_model_its_own_layers(dictionaries, monkeypatch, caplog):
    """Without any dropout, the sub-models can only differ by the layers they drop: the KL
    is positive exactly when the passes kept different layers."""
    torch.manual_seed(1)
    _, task, model, criterion = build(dictionaries, *TRANSLATION_CRITERION,
                                      model_args=["--arch", "transformer", *TRANSFORMER, *LAYERDROP, *NO_DROPOUT])
    sample = translation_sample(task.target_dictionary)
    kept = layers_kept_per_pass(monkeypatch)
    model.train()
    differed = 0
    with caplog.at_level(logging.INFO, logger="rdrop_fairseq.sub_models"):
        for seed in range(8):
            kept.clear()
            torch.manual_seed(seed)
            _, _, log = criterion(model, sample)
            encoder_1, decoder_1, encoder_2, decoder_2 = kept  # one pass per copy, encoder then decoder
            different = (encoder_1, decoder_1) != (encoder_2, decoder_2)
            differed += different
            assert (float(log["kl_loss"]) > 1e-6) == different, (seed, kept, log["kl_loss"])
    assert differed >= 2
    assert caplog.text.count("LayerDrop is active") == 1
    assert "no dropout" not in caplog.text


def test_layerdrop_step_equals_eq4(dictionaries):
    torch.manual_seed(1)
    _, task, model, criterion = build(dictionaries, *TRANSLATION_CRITERION, "--rdrop-copies", "3",
                                      model_args=["--arch", "transformer", *TRANSFORMER, *LAYERDROP, *DROPOUT])
    sample = translation_sample(task.target_dictionary)
    outputs = assert_step_is_eq4(model, criterion, sample, 0.1, task.target_dictionary.pad())
    assert len(outputs) == 3 and all(out.size(0) == sample["target"].size(0) for out in outputs)


def test_quant_noise_gives_each_sub_model_its_own_noised_weights(dictionaries, caplog):
    """--quant-noise-pq draws its blocks once per forward pass, as LayerDrop draws layers: without any
    dropout, one pass over the repeated batch would give identical copies and a zero KL."""
    torch.manual_seed(1)
    _, task, model, criterion = build(dictionaries, *TRANSLATION_CRITERION, model_args=[
        "--arch", "transformer", *TRANSFORMER, *NO_DROPOUT, "--quant-noise-pq", "0.5",
        "--quant-noise-pq-block-size", "8"])
    outputs, handle = outputs_of_passes(model)
    model.train()
    with caplog.at_level(logging.INFO):
        _, _, log = criterion(model, translation_sample(task.target_dictionary))
    assert len(outputs) == 2 and float(log["kl_loss"]) > 1e-4
    assert caplog.text.count("quant-noise is active") == 1 and "no dropout" not in caplog.text
    model.eval()
    outputs.clear()
    criterion(model, translation_sample(task.target_dictionary))
    handle.remove()
    assert len(outputs) == 1  # validation: one ordinary pass


def test_without_active_layerdrop_one_pass_serves_all_copies(dictionaries):
    torch.manual_seed(1)
    _, task, model, criterion = build(dictionaries, *TRANSLATION_CRITERION,
                                      model_args=["--arch", "transformer", *TRANSFORMER, *DROPOUT,
                                                  "--encoder-layerdrop", "0", "--decoder-layerdrop", "0"])
    outputs, handle = outputs_of_passes(model)
    model.train()
    criterion(model, translation_sample(task.target_dictionary))
    handle.remove()
    assert len(outputs) == 1


# fairseq-train, then fairseq-generate / fairseq-eval-lm, on the shared corpus slices.

TRAIN = [
    "--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-update", "2", "--seed", "1",
    "--disable-validation", "--no-epoch-checkpoints", "--num-workers", "0",
    "--log-format", "json", "--log-interval", "1", "--no-progress-bar",
]


def train(data, save_dir, *args):
    """fairseq-train's ``main`` for two updates; the ``train_inner`` record of each update."""
    records = train_in_process([str(data), "--user-dir", USER_DIR, "--save-dir", str(save_dir), *TRAIN, *args])
    assert [int(r["num_updates"]) for r in records] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    return records


def parsed(parser, args):
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=[str(a) for a in args]))


def generate(data, checkpoint, results, *args):
    """fairseq-generate's ``main`` on the test split; the hypotheses by sentence id."""
    from fairseq_cli import generate as generate_cli

    generate_cli.main(parsed(options.get_generation_parser(), [
        data, "--user-dir", USER_DIR, "--path", checkpoint, "--cpu", "--gen-subset", "test", "--beam", "2",
        "--max-len-b", "8", "--batch-size", "100", "--remove-bpe", "--results-path", results, *args,
    ]))
    lines = (results / "generate-test.txt").read_text(encoding="utf-8").splitlines()
    return {int(line.split("\t")[0][2:]): line for line in lines if line.startswith("H-")}


@pytest.mark.e2e
@pytest.mark.parametrize("task", ["rdrop_translation", "translation"])
@pytest.mark.parametrize("arch", sorted(TRANSLATION_ARCHS))
def test_translation_trains_and_generates(lohelp_bin, tmp_path, arch, task):
    records = train(lohelp_bin, tmp_path / "checkpoints", "--task", task, "--source-lang", "de", "--target-lang", "en",
                    "--arch", arch, *TRANSLATION_ARCHS[arch], *DROPOUT, *TRANSLATION_CRITERION,
                    "--max-tokens", "1024")
    assert all(r["kl_loss"] > 0 for r in records)
    hypotheses = generate(lohelp_bin, tmp_path / "checkpoints" / "checkpoint_last.pt", tmp_path,
                          "--task", task, "--source-lang", "de", "--target-lang", "en")
    assert sorted(hypotheses) == list(range(LOHELP_SLICE["test"]))


@pytest.mark.e2e
def test_multilingual_task_trains_and_generates(lohelp_bin, tmp_path):
    records = train(lohelp_bin, tmp_path / "checkpoints", *MULTILINGUAL, "--arch", "transformer", *TRANSFORMER,
                    *DROPOUT, *TRANSLATION_CRITERION, "--max-tokens", "1024")
    assert all(r["kl_loss"] > 0 for r in records)
    hypotheses = generate(lohelp_bin, tmp_path / "checkpoints" / "checkpoint_last.pt", tmp_path, *MULTILINGUAL)
    assert sorted(hypotheses) == list(range(LOHELP_SLICE["test"]))


@pytest.mark.e2e
@pytest.mark.parametrize("arch", sorted(LM_ARCHS))
def test_language_model_trains_and_evaluates(austen_bin, tmp_path, arch):
    from fairseq_cli import eval_lm

    model_args, criterion_name = LM_ARCHS[arch]
    adaptive = ["--adaptive-softmax-cutoff", "100,400", "--adaptive-input-cutoff", "100,400"]
    records = train(austen_bin, tmp_path, "--task", "rdrop_language_modeling", "--arch", arch, *model_args,
                    *(adaptive if criterion_name == "rdrop_adaptive_loss" else []), *DROPOUT,
                    "--criterion", criterion_name, "--tokens-per-sample", "32", "--max-tokens", "512")
    assert all(r["kl_loss"] > 0 for r in records)
    results = eval_lm.main(parsed(options.get_eval_lm_parser(), [
        austen_bin, "--user-dir", USER_DIR, "--path", tmp_path / "checkpoint_last.pt", "--cpu",
        "--gen-subset", "valid", "--max-tokens", "512", "--tokens-per-sample", "32", "--context-window", "0",
        "--num-workers", "0",
    ]))
    # two updates leave the model near uniform over the 1,000-word dictionary: about 10 bits
    assert 0 < results["loss"] < 12
