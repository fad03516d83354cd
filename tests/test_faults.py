"""Bad input and faults: each fails with a message naming the problem and leaves
nothing half-written; an out-of-memory batch takes fairseq's skip path."""
import gc
import logging
import re
import shutil
import subprocess
import sys
import weakref

import pytest
import torch

from fairseq_runs import build_trainer, parse_train_config, toy_data, train_args, train_in_process, training_sample


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return toy_data(tmp_path_factory)


def without(args, flag):
    """``args`` less ``flag`` and its value."""
    at = args.index(flag)
    return args[:at] + args[at + 2:]


def run_fairseq_train_main(args):
    from fairseq_cli import train

    train.main(parse_train_config(args))


def assert_nothing_written(save_dir):
    assert not save_dir.exists() or not any(save_dir.iterdir()), sorted(save_dir.iterdir())


BAD_OPTIONS = {
    "negative alpha": (("--rdrop-alpha", "-1"), "--rdrop-alpha must be a finite number >= 0"),
    "nan alpha": (("--rdrop-alpha", "nan"), "--rdrop-alpha must be a finite number >= 0, got nan"),
    "negative chunk": (("--rdrop-chunk-tokens", "-1"), "--rdrop-chunk-tokens must be >= 0"),
    "one copy": (("--rdrop-copies", "1"), "--rdrop-copies must be at least 2"),
    "k = 0": (("--rdrop-every-k-steps", "0"), "--rdrop-every-k-steps must be at least 1"),
    "rate count": (("--rdrop-dropout-rates", "[0.1]"), "--rdrop-dropout-rates gives 1 rates for --rdrop-copies 2"),
    "rate 1": (("--rdrop-dropout-rates", "[0.1,1.0]"), r"--rdrop-dropout-rates must lie in \[0, 1\)"),
    "negative rate": (("--rdrop-dropout-rates", "[-0.1,0.1]"), r"--rdrop-dropout-rates must lie in \[0, 1\)"),
    "variant with alpha 0": (("--rdrop-alpha", "0", "--rdrop-copies", "3"), "^--rdrop-copies needs --rdrop-alpha above 0"),
}


@pytest.mark.parametrize("options, message", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_rdrop_option_is_named_and_nothing_is_written(data, tmp_path, options, message):
    save_dir = tmp_path / "checkpoints"
    with pytest.raises(ValueError, match=message):
        run_fairseq_train_main(train_args(data, save_dir, "--max-update", "1", *options))
    assert_nothing_written(save_dir)


def test_variant_option_with_a_plain_criterion_is_named(data, tmp_path):
    save_dir = tmp_path / "checkpoints"
    args = without(train_args(data, save_dir, "--max-update", "1", "--rdrop-every-k-steps", "2"), "--rdrop-alpha")
    args += ["--criterion", "label_smoothed_cross_entropy"]
    with pytest.raises(ValueError, match="^--rdrop-every-k-steps needs an R-Drop --criterion, not label_smoothed"):
        run_fairseq_train_main(args)
    assert_nothing_written(save_dir)


def test_fairseq_train_command_reports_the_bad_option(data, tmp_path):
    save_dir = tmp_path / "checkpoints"
    run = subprocess.run([sys.executable, "-m", "fairseq_cli.train",
                          *train_args(data, save_dir, "--max-update", "1", "--rdrop-alpha", "-1")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "ValueError: --rdrop-alpha must be a finite number >= 0, got -1.0" in run.stderr
    assert_nothing_written(save_dir)


def language_pair_inferred(args):
    return without(without(args, "--source-lang"), "--target-lang")


@pytest.mark.parametrize("explicit_languages", [True, False])
def test_missing_data_directory_is_named(tmp_path, explicit_languages):
    missing = tmp_path / "no-such-data"
    args = train_args(missing, tmp_path / "checkpoints", "--max-update", "1")
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        run_fairseq_train_main(args if explicit_languages else language_pair_inferred(args))
    assert_nothing_written(tmp_path / "checkpoints")


def test_empty_data_directory_is_named(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    # fairseq names <data>/dict.de.txt, which it could not open
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
        run_fairseq_train_main(train_args(empty, tmp_path / "checkpoints", "--max-update", "1"))
    assert_nothing_written(tmp_path / "checkpoints")


def test_empty_data_directory_without_languages_is_named(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    args = language_pair_inferred(train_args(empty, tmp_path / "checkpoints", "--max-update", "1"))
    with pytest.raises(FileNotFoundError, match=re.escape(f"data directory {empty} holds no dict.*.txt")):
        run_fairseq_train_main(args)
    assert_nothing_written(tmp_path / "checkpoints")


@pytest.fixture(scope="module")
def mismatched_generation(data, tmp_path_factory):
    """A one-update checkpoint, and the data folder with 8 words added to each dictionary."""
    root = tmp_path_factory.mktemp("mismatch")
    train_in_process(train_args(data, root / "checkpoints", "--max-update", "1"))
    other = root / "bin"
    shutil.copytree(data, other)
    for lang in ("de", "en"):
        with open(other / f"dict.{lang}.txt", "a", encoding="utf-8") as handle:
            handle.writelines(f"added{i} 1\n" for i in range(8))
    return root / "checkpoints" / "checkpoint_last.pt", other


def generate_error(checkpoint, data):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import generate

    from fairseq_runs import USER_DIR

    args = options.parse_args_and_arch(options.get_generation_parser(), input_args=[
        str(data), "--user-dir", USER_DIR, "--task", "rdrop_translation", "--path", str(checkpoint),
        "--gen-subset", "test", "--beam", "1", "--batch-size", "4", "--cpu", "-s", "de", "-t", "en"])
    with pytest.raises(Exception) as raised:
        generate.main(convert_namespace_to_omegaconf(args))
    return str(raised.value)


def dictionary_sizes(checkpoint, data):
    from fairseq.data import Dictionary

    trained = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    return trained["encoder.embed_tokens.weight"].size(0), len(Dictionary.load(str(data / "dict.de.txt")))


def test_generate_with_another_dictionary_reports_the_size_mismatch(mismatched_generation):
    checkpoint, data = mismatched_generation
    trained, now = dictionary_sizes(checkpoint, data)
    message = generate_error(checkpoint, data)
    # fairseq: "size mismatch for encoder.embed_tokens.weight: ... torch.Size([88, 32]) from
    # checkpoint, the shape in current model is torch.Size([96, 32])"
    assert "embed_tokens" in message or "dict.de.txt" in message
    assert re.search(rf"\b{trained}\b", message) and re.search(rf"\b{now}\b", message)


def test_generate_with_another_dictionary_names_the_dictionary(mismatched_generation):
    checkpoint, data = mismatched_generation
    trained, now = dictionary_sizes(checkpoint, data)
    message = generate_error(checkpoint, data)
    assert str(data / "dict.de.txt") in message
    assert str(trained) in message and str(now) in message


def test_out_of_memory_in_the_doubled_forward_skips_the_step_and_frees_the_batch(data, tmp_path, caplog):
    trainer = build_trainer(train_args(data, tmp_path, "--warmup-init-lr", "1e-3"))
    sample = training_sample(trainer)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    doubled = []

    def forward_out_of_memory(**net_input):
        assert net_input["src_tokens"].size(0) == 2 * sample["target"].size(0)
        doubled.extend(weakref.ref(t) for t in net_input.values() if torch.is_tensor(t))
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")

    trainer.model.forward = forward_out_of_memory
    with caplog.at_level(logging.WARNING, logger="fairseq.trainer"):
        result = trainer.train_step([sample])
    del trainer.model.forward
    gc.collect()

    assert result is None
    assert "attempting to recover from OOM in forward/backward pass" in caplog.text
    assert len(doubled) >= 3 and all(ref() is None for ref in doubled), "doubled batch still alive"
    assert trainer.get_num_updates() == 0
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), before))
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())
    trainer.train_step([sample])  # training goes on with the next batch
    assert trainer.get_num_updates() == 1
