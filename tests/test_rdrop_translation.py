"""The rdrop_translation task and the paper's variants (§4.2-§4.4) through it."""
import pytest
import torch
from fairseq import optim
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from reference import assert_close_to_scale, reference_loss
from rdrop_fairseq.sub_models import dropout_rate, repeat_batch
from tiny_fairseq import build, translation_sample, write_dictionaries

CRITERION = ["--criterion", "rdrop_label_smoothed_cross_entropy", "--label-smoothing", "0.1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dictionaries(tmp_path_factory.mktemp("dicts"))


def setup(data_dir, *args):
    torch.manual_seed(1)
    cfg, task, model, criterion = build(data_dir, *CRITERION, *args)
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    return task, model, criterion, optimizer, translation_sample(task.target_dictionary)


def count_rows(model):
    rows = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: rows.append(kwargs["src_tokens"].size(0)), with_kwargs=True
    )
    return rows, handle


def step(task, model, criterion, optimizer, sample, update_num, seed=11):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, _, log = task.train_step(sample, model, criterion, optimizer, update_num)
    return loss.detach(), log, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_step_matches_reference(task, model, sample, logits, copies, loss, grads):
    """The step's loss and parameter gradients equal Eq. 4 on ``logits`` (alpha 5, smoothing 0.1)."""
    ref = reference_loss(logits, sample["target"], copies, 5.0, 0.1, task.target_dictionary.pad())
    ref[0].backward()
    torch.testing.assert_close(loss, ref[0].detach(), rtol=1e-5, atol=0)
    assert_close_to_scale(grads, [p.grad for p in model.parameters() if p.grad is not None], rel=1e-5)
    return ref


def test_train_step_keeps_fairseqs_own_behaviour(data_dir):
    task, model, criterion, optimizer, sample = setup(data_dir)
    model.eval()
    seen = []
    model.set_num_updates = lambda n: seen.append(n)
    backward = optimizer.backward
    given = []
    # the loss goes through the optimizer's backward, where fp16 and --amp scale it
    optimizer.backward = lambda loss: given.append(loss) or backward(loss)
    loss, _, _ = task.train_step(sample, model, criterion, optimizer, update_num=7)
    assert model.training and seen == [7]
    assert len(given) == 1 and given[0] is loss
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
    task.train_step(sample, model, criterion, optimizer, update_num=8, ignore_grad=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


@pytest.mark.parametrize("amp", [False, True])
def test_train_step_runs_the_passes_under_autocast_with_an_amp_optimizer(data_dir, monkeypatch, amp):
    # fairseq's train_step enters CUDA autocast for an AMPOptimizer (--amp); on a CPU the context is recorded
    import contextlib

    from fairseq.optim.amp_optimizer import AMPOptimizer

    cfg, task, model, criterion = build(data_dir, *CRITERION, *(["--amp"] if amp else []))
    params = list(model.parameters())
    optimizer = AMPOptimizer.build_optimizer(cfg, params) if amp else optim.build_optimizer(cfg.optimizer, params)
    contexts = []

    class RecordingAutocast(contextlib.AbstractContextManager):
        def __init__(self, enabled=True, **kwargs):
            self.enabled = enabled

        def __enter__(self):
            contexts.append(self.enabled)

        def __exit__(self, *exc):
            contexts.pop()

    monkeypatch.setattr(torch.cuda.amp, "autocast", RecordingAutocast)
    in_autocast = []
    model.register_forward_pre_hook(lambda mod, args: in_autocast.append(list(contexts)))
    task.train_step(translation_sample(task.target_dictionary), model, criterion, optimizer, update_num=0)
    assert in_autocast == [[amp]]  # one pass over the repeated batch, inside the context
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_default_equals_explicit_m2_k1(data_dir):
    runs = [setup(data_dir), setup(data_dir, "--rdrop-copies", "2", "--rdrop-every-k-steps", "1")]
    results = [step(*run, update_num=0) for run in runs]
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b)


def test_three_sub_models_match_the_reference(data_dir):
    task, model, criterion, optimizer, sample = setup(data_dir, "--rdrop-copies", "3")
    rows, handle = count_rows(model)
    loss, log, ours = step(task, model, criterion, optimizer, sample, update_num=0)
    handle.remove()
    assert rows == [3 * sample["target"].size(0)]
    model.zero_grad()
    torch.manual_seed(11)
    logits = model(**repeat_batch(sample["net_input"], 3))[0]
    ref = assert_step_matches_reference(task, model, sample, logits, 3, loss, ours)
    torch.testing.assert_close(log["loss"], ref[1].detach() / 3)
    torch.testing.assert_close(log["nll_loss"], ref[2].detach() / 3)  # the copies' mean, as at m = 2
    torch.testing.assert_close(log["kl_loss"], ref[3].detach())


def test_k_step_skipped_updates_are_single_pass_stock_steps(data_dir):
    task, model, criterion, optimizer, sample = setup(data_dir, "--rdrop-every-k-steps", "3")
    rows, handle = count_rows(model)
    logs = [step(task, model, criterion, optimizer, sample, update_num=n)[1] for n in range(6)]
    handle.remove()
    batch = sample["target"].size(0)
    assert rows == [2 * batch, batch, batch, 2 * batch, batch, batch]
    assert ["kl_loss" in log for log in logs] == [True, False, False, True, False, False]
    stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    skipped = step(task, model, criterion, optimizer, sample, update_num=4)
    plain = step(task, model, stock, optimizer, sample, update_num=4)
    torch.testing.assert_close(skipped[0], plain[0])
    for a, b in zip(skipped[2], plain[2]):
        torch.testing.assert_close(a, b)


def test_two_dropout_rates_match_separate_passes(data_dir):
    task, model, criterion, optimizer, sample = setup(data_dir, "--rdrop-dropout-rates", "[0.1,0.5]")
    loss, log, ours = step(task, model, criterion, optimizer, sample, update_num=0)
    assert model.decoder.dropout_module.p == 0.3  # restored
    model.zero_grad()
    torch.manual_seed(11)
    outputs = []
    for rate in (0.1, 0.5):
        with dropout_rate(model, rate):
            outputs.append(model(**sample["net_input"])[0])
    logits = torch.stack(outputs, dim=1).flatten(0, 1)  # sample b's copies in rows 2b, 2b + 1
    assert_step_matches_reference(task, model, sample, logits, 2, loss, ours)


def test_dropout_rates_come_back_when_a_step_raises(data_dir):
    task, model, criterion, optimizer, sample = setup(data_dir, "--rdrop-dropout-rates", "[0.0,0.6]")
    before = {name: module.p for name, module in model.named_modules() if hasattr(module, "p")}

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    model.decoder.output_layer = broken
    with pytest.raises(RuntimeError, match="injected"):
        task.train_step(sample, model, criterion, optimizer, update_num=0)
    after = {name: module.p for name, module in model.named_modules() if hasattr(module, "p")}
    assert after == before


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--rdrop-copies", "1"], "--rdrop-copies"),
        (["--rdrop-every-k-steps", "0"], "--rdrop-every-k-steps"),
        (["--rdrop-dropout-rates", "[0.1]"], "--rdrop-dropout-rates"),
        (["--rdrop-dropout-rates", "[0.1,1.2]"], "--rdrop-dropout-rates"),
        (["--rdrop-copies", "3", "--rdrop-alpha", "0"], "--rdrop-alpha 0"),
        (["--rdrop-dropout-rates", "[0.1,0.3]", "--checkpoint-activations"], "--checkpoint-activations"),
        (["--rdrop-dropout-rates", "[0.1,0.3]", "--offload-activations"], "--offload-activations"),
    ],
)
def test_bad_variant_options_are_refused_at_start_up(data_dir, args, flag):
    with pytest.raises(ValueError, match=flag):
        build(data_dir, *CRITERION, *args)


def test_activation_checkpointing_trains_without_per_copy_rates(data_dir):
    task, model, criterion, optimizer, sample = setup(data_dir, "--checkpoint-activations")
    assert any(hasattr(module, "precheckpoint_forward") for module in model.modules())
    loss, log, grads = step(task, model, criterion, optimizer, sample, 0)
    assert torch.isfinite(loss) and log["kl_loss"] > 0 and grads


def test_variant_options_need_an_rdrop_criterion(data_dir):
    with pytest.raises(ValueError, match="^--rdrop-every-k-steps needs an R-Drop --criterion"):
        build(data_dir, "--criterion", "label_smoothed_cross_entropy", "--rdrop-every-k-steps", "2")
    # only the options that were given are named
    with pytest.raises(ValueError, match="^--rdrop-copies and --rdrop-dropout-rates need an R-Drop --criterion"):
        build(data_dir, "--criterion", "label_smoothed_cross_entropy", "--rdrop-copies", "3",
              "--rdrop-dropout-rates", "[0.1,0.2,0.3]")


def test_a_missing_or_unbinarised_data_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data directory '{tmp_path / 'nowhere'}' does not exist"):
        build(tmp_path / "nowhere")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.de").write_text("Hallo\n")
    with pytest.raises(FileNotFoundError, match=f"data directory {tmp_path / 'raw'} holds no dict.*.txt"):
        build(tmp_path / "raw")


def test_a_remote_data_uri_is_left_to_fairseqs_path_manager(monkeypatch):
    from fairseq.tasks.translation import TranslationTask
    from omegaconf import OmegaConf

    from rdrop_fairseq.tasks.rdrop_translation import RDropTranslationTask

    seen = []
    monkeypatch.setattr(TranslationTask, "setup_task", classmethod(lambda cls, cfg, **kw: seen.append(cfg.data)))
    RDropTranslationTask.setup_task(OmegaConf.create({"data": "s3://bucket/iwslt14"}))
    assert seen == ["s3://bucket/iwslt14"]


def test_a_plain_criterion_built_from_a_checkpoint_is_accepted_with_variant_options(data_dir):
    # fairseq-hydra-validate builds the saved criterion with from_checkpoint=True; validation may use a plain one
    plain_cfg = build(data_dir, "--criterion", "label_smoothed_cross_entropy")[0]
    task = build(data_dir, *CRITERION, "--rdrop-every-k-steps", "2")[1]
    criterion = task.build_criterion(plain_cfg.criterion, from_checkpoint=True)
    assert type(criterion) is LabelSmoothedCrossEntropyCriterion
    with pytest.raises(ValueError, match="^--rdrop-every-k-steps needs an R-Drop --criterion"):
        task.build_criterion(plain_cfg.criterion)


def test_checkpoint_dictionary_sizes_are_checked_for_source_and_target(tmp_path):
    from tiny_fairseq import write_dictionaries as write

    write(tmp_path, size=40, langs=("de",))
    write(tmp_path, size=30, langs=("en",))
    from omegaconf import OmegaConf

    from rdrop_fairseq.tasks.rdrop_translation import RDropTranslationConfig, RDropTranslationTask

    cfg = OmegaConf.structured(RDropTranslationConfig(data=str(tmp_path), source_lang="de", target_lang="en"))
    task = RDropTranslationTask.setup_task(cfg)
    state = task.state_dict()
    assert state["dictionary_sizes"] == {"source": len(task.src_dict), "target": len(task.tgt_dict)}
    assert len(task.src_dict) != len(task.tgt_dict)
    task.load_state_dict(state)
    assert "dictionary_sizes" in state  # the caller's checkpoint state is left as it was
    for role, lang in (("source", "de"), ("target", "en")):
        sizes = dict(state["dictionary_sizes"], **{role: state["dictionary_sizes"][role] + 1})
        with pytest.raises(ValueError, match=f"{tmp_path / f'dict.{lang}.txt'} has .* {role} dictionary of"):
            task.load_state_dict({**state, "dictionary_sizes": sizes})


def test_every_micro_batch_of_an_update_follows_that_updates_schedule(data_dir):
    # with --update-freq 2, both micro-batches of an R-Drop update are R-Drop passes, and both of a skipped one
    # plain: the schedule counts updates, not calls
    from fairseq.trainer import Trainer

    torch.manual_seed(1)
    cfg, task, model, criterion = build(data_dir, *CRITERION, "--update-freq", "2", "--rdrop-every-k-steps", "2")
    trainer = Trainer(cfg, task, model, criterion)
    sample = translation_sample(task.target_dictionary)
    rows, handle = count_rows(model)
    logs = [trainer.train_step([sample, sample]) for _ in range(3)]
    handle.remove()
    batch = sample["target"].size(0)
    assert trainer.get_num_updates() == 3
    assert rows == [2 * batch, 2 * batch, batch, batch, 2 * batch, 2 * batch]
    assert ["kl_loss" in log for log in logs] == [True, False, True]
