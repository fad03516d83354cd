"""Checkpoints are unpickled with ``weights_only=True`` and a short allow-list: real
checkpoints of every training setup load exactly as in full, a crafted one is refused
before it can run anything, and the opt-in loads it with one warning."""
import argparse
import collections
import functools
import io
import os
import pickle
import tarfile
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import _weights_only_unpickler

from fairseq_runs import USER_DIR, toy_data, train_args, train_in_process
from rdrop_fairseq import safe_load
from rdrop_fairseq.recipes import average_checkpoints

EVAL_BLEU = ["--eval-bleu", "--eval-bleu-detok", "space",
             "--eval-bleu-args", '{"beam": 1, "max_len_a": 0, "max_len_b": 3}',
             "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]
# --bf16 implies --tpu in fairseq 0.12, so it cannot run here (nor on a GPU).
PRECISIONS = {
    "fp32": [],
    "fp16": ["--fp16"],
    "fp16-no-flatten": ["--fp16", "--fp16-no-flatten-grads"],
    "memory-efficient-fp16": ["--memory-efficient-fp16"],
    "amp": ["--amp"],
}
TRUSTING_TASK = "rdrop_translation"  # every R-Drop task offers --trust-checkpoints


class WritesFile:
    """Unpickling it opens ``path`` for writing: a crafted checkpoint's move, harmless."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class RunsCommand:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


class ExtraState:
    """An object of the user's own, outside the allow-list, that runs nothing."""

    def __init__(self, value):
        self.value = value


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return toy_data(tmp_path_factory)


def train(data, save_dir, *extra):
    """2 updates with validation (and its BLEU meters) and a checkpoint after each."""
    args = [arg for arg in train_args(data, save_dir, "--max-update", "2", "--save-interval-updates", "1", *extra)
            if arg != "--disable-validation"]
    train_in_process(args)
    return save_dir


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    return train(data, tmp_path_factory.mktemp("safe-load") / "fp32", *EVAL_BLEU)


def assert_same(safe, full, where="state"):
    assert type(safe) is type(full), where
    if torch.is_tensor(full):
        assert safe.dtype == full.dtype and torch.equal(safe, full), where
    elif isinstance(full, dict):
        assert list(safe) == list(full), where
        for key in full:
            assert_same(safe[key], full[key], f"{where}[{key!r}]")
    elif isinstance(full, (list, tuple)):
        assert len(safe) == len(full), where
        for i, (a, b) in enumerate(zip(safe, full)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(full, np.ndarray):
        assert safe.dtype == full.dtype and np.array_equal(safe, full), where
    elif hasattr(full, "__dict__"):
        assert_same(vars(safe), vars(full), f"{where}.__dict__")
    else:
        assert safe == full, where


def allowed_names():
    return {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
            for entry in safe_load.checkpoint_globals()}


def full_load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def crafted(checkpoint, out, extra, legacy_format=False):
    """``checkpoint`` with one more object in its extra_state; ``legacy_format``: saved as
    torch <= 1.5 did (not a zip file), as the 2019 pretrained models were."""
    state = full_load(checkpoint)
    state["extra_state"]["injected"] = extra
    torch.save(state, out, _use_new_zipfile_serialization=not legacy_format)
    return out


def test_translation_checkpoint_needs_the_namespace_and_the_bleu_meters_arrays(run_dir):
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(run_dir / "checkpoint_last.pt"))
    assert unsafe == {"argparse.Namespace", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    assert unsafe <= allowed_names()


def test_the_allow_list_is_the_documented_one():
    # one callable more can run code: with builtins.getattr on it, a file reaches eval through torch's own
    # _rebuild_from_type_v2, which calls whatever it is given
    meters = {f"{module}.{name}" for module in ("fairseq.meters", "fairseq.logging.meters")
              for name in ("AverageMeter", "TimeMeter", "StopwatchMeter")}
    build_only = {"BUILD of ndarray", *(f"BUILD of {type(np.dtype(char)).__name__}" for char in "?bhilqBHILQefd")}
    assert allowed_names() == {"argparse.Namespace", "numpy._core.multiarray._reconstruct",
                               "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
                               *meters, *build_only}


def test_a_checkpoint_whose_arrays_numpy_1_pickled_loads_as_in_full(run_dir, tmp_path):
    # numpy 1 named its module numpy.core, numpy 2 numpy._core: the --eval-bleu checkpoints written under numpy 1
    checkpoint = _rewritten(run_dir / "checkpoint_last.pt", tmp_path / "numpy1.pt", lambda name, data: [
        (name, data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))])
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint))
    assert unsafe == {"argparse.Namespace", "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    assert_same(safe_load.load(checkpoint), full_load(checkpoint))


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_checkpoints_of_each_precision_load_as_in_full(data, run_dir, tmp_path, monkeypatch, precision):
    from fairseq import checkpoint_utils

    # Flattened --fp16 asks torch.cuda for the device of its one fp32 master buffer: answer the
    # CPU's (index None, as p.device.index of a CPU parameter).  The file is the same as on CUDA,
    # because Trainer.save_checkpoint moves every tensor to the CPU, in fp32, before saving.
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    save_dir = run_dir if precision == "fp32" else train(data, tmp_path / precision, *PRECISIONS[precision])
    for path in sorted(save_dir.glob("*.pt")):
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) <= allowed_names(), path
        full = full_load(path)
        assert_same(safe_load.load(path, map_location="cpu"), full)
        assert checkpoint_utils.load_checkpoint_to_cpu(str(path))["extra_state"]["train_iterator"]
    optimizer_state = full_load(save_dir / "checkpoint_last.pt")["last_optimizer_state"]
    assert ("loss_scale" in optimizer_state) == ("fp16" in precision)
    if precision == "fp16":  # one flat fp32 master buffer: one parameter in the optimizer's state
        assert len(optimizer_state["state"]) == 1
    elif precision == "fp16-no-flatten":
        assert len(optimizer_state["state"]) > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="writes the checkpoint on a CUDA device")
def test_flattened_fp16_checkpoint_written_on_cuda_loads_as_in_full(data, tmp_path):
    save_dir = tmp_path / "cuda-fp16"
    train_in_process([arg for arg in train_args(data, save_dir, "--max-update", "2", "--save-interval-updates", "1",
                                                "--fp16") if arg not in ("--cpu", "--disable-validation")])
    for path in sorted(save_dir.glob("*.pt")):
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) <= allowed_names(), path
        assert_same(safe_load.load(path), full_load(path))
    assert len(full_load(save_dir / "checkpoint_last.pt")["last_optimizer_state"]["state"]) == 1


def test_averaged_checkpoint_loads_as_in_full(run_dir, tmp_path):
    inputs = [run_dir / "checkpoint_1_1.pt", run_dir / "checkpoint_1_2.pt"]
    average_checkpoints.average_checkpoints(inputs, tmp_path / "avg.pt")
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "avg.pt")) <= allowed_names()
    assert_same(safe_load.load(tmp_path / "avg.pt"), full_load(tmp_path / "avg.pt"))


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("file_format", ["zip", "legacy"])
@pytest.mark.parametrize("release, name, model_class", [
    ("0.8", "roberta-fp16", "RobertaModel"), ("0.9", "roberta-fp16", "RobertaModel"), ("0.9", "bart-fp16", "BARTModel")])
def test_checkpoints_written_by_fairseq_of_2019_load_and_build_their_model(tmp_path, release, name, model_class,
                                                                          file_format):
    """fairseq 0.8.0 and 0.9.0 are the releases of the 2019 pretrained RoBERTa and BART
    (fixtures/fairseq-0.9/README.md); torch 1.x saved them in its legacy format, not as zip files."""
    from fairseq import checkpoint_utils

    folder = FIXTURES / f"fairseq-{release}"
    path = folder / f"{name}.pt"
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == {
        "argparse.Namespace", "fairseq.meters.AverageMeter", "fairseq.meters.TimeMeter", "fairseq.meters.StopwatchMeter"}
    if file_format == "legacy":
        torch.save(full_load(path), tmp_path / path.name, _use_new_zipfile_serialization=False)
        path = tmp_path / path.name
        assert not zipfile.is_zipfile(path)
    full = full_load(path)
    assert_same(safe_load.load(path), full)
    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(folder)})
    assert type(models[0]).__name__ == model_class and cfg.model.arch == full["args"].arch
    # Under fairseq 0.12's names (decoder. -> encoder.), and 0.8's in_proj_* split into q, k, v.
    state = models[0].state_dict()
    loaded = list(state.values()) + [
        torch.cat([state[key.replace(".q_proj.", f".{part}_proj.")] for part in "qkv"])
        for key in state if ".q_proj." in key]
    for key, value in full["model"].items():
        assert any(w.shape == value.shape and torch.equal(w, value.to(w.dtype)) for w in loaded), key


PAYLOADS = {"open a file": (WritesFile, "io.open"), "os.system": (RunsCommand, "posix.system")}


@pytest.fixture(params=[(name, fmt) for name in sorted(PAYLOADS) for fmt in ("zip", "legacy")],
                ids=lambda param: "-".join(param))
def attack(request, run_dir, tmp_path):
    """A crafted checkpoint, the file its unpickling would create, and the global it names."""
    (payload, refused), legacy_format = PAYLOADS[request.param[0]], request.param[1] == "legacy"
    marker = tmp_path / "pwned"
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "crafted.pt", payload(marker), legacy_format)
    return checkpoint, marker, refused


def assert_refused(raised, checkpoint, refused, marker):
    message = str(raised.value)
    assert isinstance(raised.value, safe_load.UntrustedCheckpointError)
    assert str(checkpoint) in message and refused in message, message
    assert f"{safe_load.TRUST_ENV}=1" in message
    assert not marker.exists()


@pytest.fixture(autouse=True)
def no_opt_in(monkeypatch):
    monkeypatch.delenv(safe_load.TRUST_ENV, raising=False)
    monkeypatch.setattr(safe_load, "_trusted_by_flag", False)
    monkeypatch.setattr(safe_load, "_task_offers_flag", False)
    monkeypatch.setattr(safe_load, "_warned", False)


def test_crafted_checkpoint_is_refused_by_load_checkpoint_to_cpu(attack):
    from fairseq import checkpoint_utils

    checkpoint, marker, refused = attack
    with pytest.raises(safe_load.UntrustedCheckpointError) as raised:
        checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    assert_refused(raised, checkpoint, refused, marker)


def generate_config(data, checkpoint, *extra):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_generation_parser(), input_args=[
        str(data), "--user-dir", USER_DIR, "--task", "rdrop_translation", "--path", str(checkpoint),
        "--gen-subset", "test", "--beam", "1", "--max-len-a", "0", "--max-len-b", "3", "--batch-size", "16",
        "--cpu", "-s", "de", "-t", "en", "--results-path", str(checkpoint.parent / "generated"), *extra]))


def test_crafted_checkpoint_is_refused_by_fairseq_generate(attack, data):
    from fairseq_cli import generate

    checkpoint, marker, refused = attack
    with pytest.raises(safe_load.UntrustedCheckpointError) as raised:
        generate.main(generate_config(data, checkpoint))
    assert_refused(raised, checkpoint, refused, marker)


@pytest.mark.parametrize("flag", ["--restore-file", "--finetune-from-model"])
def test_crafted_checkpoint_is_refused_by_fairseq_train(attack, data, tmp_path, flag):
    checkpoint, marker, refused = attack
    with pytest.raises(safe_load.UntrustedCheckpointError) as raised:
        train_in_process(train_args(data, tmp_path / "resumed", "--max-update", "3", flag, str(checkpoint)))
    assert_refused(raised, checkpoint, refused, marker)
    assert not (tmp_path / "resumed" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize("variable, value", [
    ("RDROP_TRUST_CHECKPOINTS", "0"), ("RDROP_TRUST_CHECKPOINTS", "false"), ("RDROP_TRUST_CHECKPOINTS", "no"),
    ("RDROP_TRUST_CHECKPOINTS", ""),
    # torch's switch back to full unpickling, which users of old code set: it yields to an explicit weights_only
    ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1"),
])
def test_settings_that_are_no_opt_in_leave_a_crafted_checkpoint_refused(attack, monkeypatch, variable, value):
    from fairseq import checkpoint_utils

    checkpoint, marker, refused = attack
    monkeypatch.setenv(variable, value)
    with pytest.raises(safe_load.UntrustedCheckpointError) as raised:
        checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    assert_refused(raised, checkpoint, refused, marker)


def test_opt_in_loads_an_extra_object_and_warns_once(run_dir, data, tmp_path, monkeypatch):
    from fairseq import checkpoint_utils
    from fairseq_cli import generate

    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "extra.pt", ExtraState(42))
    monkeypatch.setenv("RDROP_TRUST_CHECKPOINTS", "1")  # the documented name, not the module's constant
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
        generate.main(generate_config(data, checkpoint))
        safe_load.load(run_dir / "checkpoint_last.pt")  # needs no opt-in: no warning
    assert state["extra_state"]["injected"].value == 42
    trusted = [w for w in caught if issubclass(w.category, safe_load.TrustedCheckpointWarning)]
    assert len(trusted) == 1 and "test_safe_load.ExtraState" in str(trusted[0].message)
    assert (tmp_path / "generated" / "generate-test.txt").stat().st_size > 0


def test_a_binary_file_is_reread_from_where_it_started(run_dir, tmp_path, monkeypatch):
    data = b"prefix" + crafted(run_dir / "checkpoint_last.pt", tmp_path / "extra.pt", ExtraState(7)).read_bytes()
    monkeypatch.setenv(safe_load.TRUST_ENV, "yes")
    with io.BytesIO(data) as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", safe_load.TrustedCheckpointWarning)
        handle.seek(len(b"prefix"))
        assert safe_load.load(handle)["extra_state"]["injected"].value == 7


def test_the_task_option_opts_in_for_fairseq_generate(run_dir, data, tmp_path, monkeypatch):
    from fairseq_cli import generate

    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "extra.pt", ExtraState(42))
    monkeypatch.setattr("sys.argv", ["fairseq-generate", "--task", TRUSTING_TASK])
    with pytest.raises(safe_load.UntrustedCheckpointError):
        generate.main(generate_config(data, checkpoint, "--task", TRUSTING_TASK))
    monkeypatch.setattr("sys.argv", ["fairseq-generate", "--task", TRUSTING_TASK, safe_load.TRUST_FLAG])
    with pytest.warns(safe_load.TrustedCheckpointWarning, match="test_safe_load.ExtraState"):
        generate.main(generate_config(data, checkpoint, "--task", TRUSTING_TASK, safe_load.TRUST_FLAG))
    assert (tmp_path / "generated" / "generate-test.txt").stat().st_size > 0


@pytest.mark.parametrize("argv, opts_in", [
    ([safe_load.TRUST_FLAG], True),
    (["task.trust_checkpoints=true"], True),
    (["+task.trust_checkpoints=True"], True),
    (["++task.trust_checkpoints=on"], True),
    (["task.trust_checkpoints=false"], False),
    (["--trust-checkpoints-not"], False),
    ([], False),
])
def test_only_the_command_line_opts_in(argv, opts_in):
    task_cfg = argparse.Namespace(trust_checkpoints=True)
    safe_load.honour_task_option(task_cfg, from_checkpoint=True, argv=argv)
    assert not safe_load.trusted()
    safe_load.honour_task_option(argparse.Namespace(trust_checkpoints=False), argv=argv)
    assert not safe_load.trusted()
    safe_load.honour_task_option(task_cfg, argv=argv)
    assert safe_load.trusted() == opts_in


def test_a_task_config_saved_in_a_checkpoint_does_not_opt_in(run_dir, data, tmp_path, monkeypatch):
    """fairseq sets up tasks from checkpoints' saved configs without from_checkpoint=True
    (e.g. hubert_asr's pretrained encoder): a file can say trust_checkpoints=true there."""
    from fairseq import checkpoint_utils, tasks
    from omegaconf import open_dict

    state = checkpoint_utils.load_checkpoint_to_cpu(str(run_dir / "checkpoint_last.pt"))
    with open_dict(state["cfg"]):
        state["cfg"].task.trust_checkpoints = True
        state["cfg"].task.data = str(data)
    monkeypatch.setattr("sys.argv", ["fairseq-train", str(data), "--task", TRUSTING_TASK])
    tasks.setup_task(state["cfg"].task)
    assert not safe_load.trusted()
    with pytest.raises(safe_load.UntrustedCheckpointError):
        safe_load.load(crafted(run_dir / "checkpoint_last.pt", tmp_path / "extra.pt", ExtraState(1)))


def test_loads_leave_torch_allow_list_as_it_was(attack, run_dir):
    # compared as sets: adding and removing entries may reorder torch's registry (a set)
    before = set(torch.serialization.get_safe_globals())
    # the plugin's entries are never left behind, by this test's loads or by any earlier one in the process
    assert not before & set(safe_load.checkpoint_globals())
    safe_load.load(run_dir / "checkpoint_last.pt")
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(safe_load.UntrustedCheckpointError):
        safe_load.load(attack[0])
    assert set(torch.serialization.get_safe_globals()) == before


def test_loads_between_workers_still_unpickle_fairseq_configs(run_dir):
    """fairseq broadcasts a loaded checkpoint (its OmegaConf config included) from rank 0."""
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as distributed_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(run_dir / "checkpoint_last.pt"))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    received = distributed_utils.torch.load(buffer, map_location="cpu")
    assert received["cfg"] == state["cfg"]


def check_checkpoint(capsys, *paths):
    from rdrop_fairseq import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["check-checkpoint", *map(str, paths)])
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_check_checkpoint_passes_real_checkpoints(run_dir, tmp_path, capsys):
    legacy = crafted(run_dir / "checkpoint_last.pt", tmp_path / "legacy.pt", 1.5, legacy_format=True)
    status, out, _ = check_checkpoint(capsys, run_dir / "checkpoint_best.pt", legacy)
    assert status == 0
    assert out.splitlines() == [f"{run_dir / 'checkpoint_best.pt'}: loads with the allow-list",
                                f"{legacy}: loads with the allow-list"]


def test_check_checkpoint_names_what_a_crafted_one_holds_and_runs_nothing(attack, run_dir, tmp_path, capsys):
    checkpoint, marker, refused = attack
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    status, out, err = check_checkpoint(capsys, run_dir / "checkpoint_last.pt", checkpoint, garbage)
    assert status == 1
    good, bad, unreadable = out.splitlines()
    assert good.endswith("loads with the allow-list")
    assert bad.startswith(f"{checkpoint}: refused") and refused in bad
    assert unreadable.startswith(f"{garbage}: not a checkpoint torch can read")
    assert f"{safe_load.TRUST_ENV}=1" in err
    assert not marker.exists()


def test_check_checkpoint_runs_nothing_where_the_user_opted_in(attack, capsys, monkeypatch):
    # an opt-in exported for one's own files must not turn the check into a full load of a stranger's
    checkpoint, marker, refused = attack
    monkeypatch.setenv("RDROP_TRUST_CHECKPOINTS", "1")
    safe_load.trust_checkpoints()
    status, out, _ = check_checkpoint(capsys, checkpoint)
    assert status == 1 and out.startswith(f"{checkpoint}: refused") and refused in out
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"PK\x03\x04", b"hello world\n", b'{"model": 1}', b"not a checkpoint",
                                     b"\x80\x02K"])
def test_check_checkpoint_offers_no_opt_in_for_a_file_it_cannot_read(tmp_path, capsys, content):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(content)
    status, out, err = check_checkpoint(capsys, damaged)
    assert status == 1 and out.startswith(f"{damaged}: not a checkpoint torch can read"), out
    assert safe_load.TRUST_ENV not in err


@pytest.mark.parametrize("as_file", [False, True])
def test_load_says_a_text_file_is_no_checkpoint_rather_than_refusing_it(tmp_path, as_file):
    text = tmp_path / "notes.pt"
    text.write_bytes(b"not a checkpoint")
    with pytest.raises(pickle.UnpicklingError, match="not a checkpoint") as raised:
        if as_file:
            with open(text, "rb") as handle:
                safe_load.load(handle)
        else:
            safe_load.load(text)
    assert not isinstance(raised.value, safe_load.UntrustedCheckpointError)


def test_check_checkpoint_names_a_missing_file(tmp_path, capsys):
    status, _, err = check_checkpoint(capsys, tmp_path / "missing.pt")
    assert status == 2 and "no such file" in err and "missing.pt" in err


# fairseq's own config values that it evaluates, and what a crafted checkpoint could put there
FAIRSEQ_CONFIG_VALUES = ["[(512, 3)] * 20", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2",
                         "(0.9, 0.98)", "10000,20000", "True", "-1.5", "{'beam': 5, 'lenpen': 0.6}", "[1e-30, 1e-3]"]


@pytest.mark.parametrize("text", FAIRSEQ_CONFIG_VALUES)
def test_config_values_that_fairseq_evaluates_keep_their_values(text):
    assert safe_load.config_eval(text) == eval(text)


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "open", "().__class__", "[0] * 10 ** 9",
                                  "'x' * 100_000_000", "lambda: 0", "[x for x in (1,)]",
                                  # size and depth: a sum of allowed products, bytes, a long or deep string
                                  " + ".join(["[0] * 9000"] * 20), "b'a' * 200_000_000", "-" * 100_000 + "1",
                                  "[" * 100_000 + "]" * 100_000, "{[1]}"])
def test_config_values_that_are_not_literals_are_refused(text):
    with pytest.raises(safe_load.UntrustedConfigValueError, match=f"{safe_load.TRUST_ENV}=1"):
        safe_load.config_eval(text)


def test_trusting_evaluates_config_values_in_full(monkeypatch):
    monkeypatch.setenv(safe_load.TRUST_ENV, "1")
    assert safe_load.config_eval("[len('abc')] * 2") == [3, 3]


def crafted_config(checkpoint, out, key, value):
    """``checkpoint`` with its saved model config's ``key`` set to ``value``."""
    state = full_load(checkpoint)
    model_cfg = state["cfg"]["model"]
    if isinstance(model_cfg, argparse.Namespace):
        setattr(model_cfg, key, value)
    else:
        model_cfg[key] = value
    torch.save(state, out)
    return out


def test_a_config_value_that_runs_code_is_refused_by_fairseq_generate_and_noted_by_check_checkpoint(
        run_dir, data, tmp_path, capsys):
    from fairseq_cli import generate

    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch() or [5]"
    checkpoint = crafted_config(run_dir / "checkpoint_last.pt", tmp_path / "config.pt", "adaptive_softmax_cutoff",
                                payload)
    with pytest.raises(safe_load.UntrustedConfigValueError, match="refused to evaluate the config value") as raised:
        generate.main(generate_config(data, checkpoint))
    assert payload in str(raised.value) and not marker.exists()
    status, out, _ = check_checkpoint(capsys, checkpoint)
    # load() takes the file (nothing in it runs); the value is refused where fairseq evaluates it
    assert status == 0 and not marker.exists()
    assert out.startswith(f"{checkpoint}: loads with the allow-list; note: these config values are code")
    assert f"cfg.model.adaptive_softmax_cutoff = {payload!r}" in out


def test_check_checkpoint_takes_a_path_in_the_config_that_looks_like_a_call(run_dir, tmp_path, capsys):
    state = full_load(run_dir / "checkpoint_last.pt")
    state["cfg"]["checkpoint"]["save_dir"] = "checkpoints/run(2)"
    torch.save(state, tmp_path / "named.pt")
    safe_load.load(tmp_path / "named.pt")
    status, out, _ = check_checkpoint(capsys, tmp_path / "named.pt")
    assert status == 0 and out.startswith(f"{tmp_path / 'named.pt'}: loads with the allow-list")


def crafted_task_note(checkpoint, out, value):
    """``checkpoint`` with ``note = value`` in its saved task config, a dict that OmegaConf resolves
    (the model's config is an argparse Namespace, which it keeps as it is)."""
    state = full_load(checkpoint)
    state["cfg"]["task"]["note"] = value
    torch.save(state, out)
    return out


def test_a_config_value_that_calls_an_omegaconf_resolver_is_refused(run_dir, data, tmp_path, capsys, monkeypatch):
    from fairseq import checkpoint_utils
    from fairseq_cli import generate

    monkeypatch.setenv("RDROP_TEST_SECRET", "s3cr3t")
    reads_env = crafted_task_note(run_dir / "checkpoint_last.pt", tmp_path / "env.pt", "${oc.env:RDROP_TEST_SECRET}")
    with pytest.raises(safe_load.UntrustedCheckpointError, match="holds OmegaConf interpolations") as raised:
        generate.main(generate_config(data, reads_env))
    assert "cfg.task.note = '${oc.env:RDROP_TEST_SECRET}'" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)
    status, out, _ = check_checkpoint(capsys, reads_env)
    assert status == 1 and "refused" in out and "cfg.task.note" in out
    # an escaped one is a literal
    plain = crafted_task_note(run_dir / "checkpoint_last.pt", tmp_path / "plain.pt", r"\${oc.env:RDROP_TEST_SECRET}")
    assert checkpoint_utils.load_checkpoint_to_cpu(str(plain))["cfg"]["task"]["note"] == "${oc.env:RDROP_TEST_SECRET}"
    # an escaped backslash before it, a resolver named by an interpolation, and an interpolation of another key
    # (fairseq saves its configs resolved; forty of them, each of the last twice, take 2^40 steps to read)
    for value in (r"\\${oc.env:RDROP_TEST_SECRET}", "${oc.${task.source_lang}v:RDROP_TEST_SECRET}",
                  "${task.source_lang}"):
        crafted = crafted_task_note(run_dir / "checkpoint_last.pt", tmp_path / "bypass.pt", value)
        with pytest.raises(safe_load.UntrustedCheckpointError, match="holds OmegaConf interpolations"):
            checkpoint_utils.load_checkpoint_to_cpu(str(crafted))
    monkeypatch.setenv(safe_load.TRUST_ENV, "1")
    assert checkpoint_utils.load_checkpoint_to_cpu(str(reads_env))["cfg"]["task"]["note"] == "s3cr3t"


def test_the_refusal_offers_the_task_option_only_where_a_command_line_task_has_it(run_dir, tmp_path):
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "extra.pt", ExtraState(1))
    with pytest.raises(safe_load.UntrustedCheckpointError) as raised:
        safe_load.load(checkpoint)  # as in fairseq-validate: no task set up before the load
    assert safe_load.TRUST_FLAG not in str(raised.value)
    safe_load.honour_task_option(argparse.Namespace(trust_checkpoints=False), argv=[])
    with pytest.raises(safe_load.UntrustedCheckpointError) as raised:
        safe_load.load(checkpoint)
    assert safe_load.TRUST_FLAG in str(raised.value)


def model_archive(path, members):
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def test_a_model_archive_is_extracted_safely_and_kept(tmp_path):
    from fairseq import file_utils  # what from_pretrained calls

    good = model_archive(tmp_path / "model.tar.gz", [("model/model.pt", b"weights"), ("model/dict.txt", b"a 1\n")])
    folder = Path(file_utils.load_archive_file(str(good)))
    assert sorted(p.name for p in folder.iterdir()) == ["dict.txt", "model.pt"]
    assert good.is_file()  # fairseq itself deletes the archive and puts the folder in its place
    escape = tmp_path / "outside" / "escaped"
    escape.parent.mkdir()
    evil = model_archive(tmp_path / "evil.tar.gz", [("model/model.pt", b"weights"),
                                                     ("model/../../outside/escaped", b"pwned")])
    extract_dir = tmp_path / "extract" / "here"
    extract_dir.mkdir(parents=True)
    # refused by name, not only by tarfile's data filter, which Pythons before 3.11.4 lack
    with pytest.raises(ValueError, match="evil.tar.gz: refused .* 'model/../../outside/escaped' is not a plain file"):
        safe_load._extract(str(evil), str(extract_dir))
    with pytest.raises(ValueError, match="refused to extract"):
        file_utils.load_archive_file(str(evil))
    assert not escape.exists() and evil.is_file()
    assert Path(file_utils.load_archive_file(good)).is_dir() and good.is_file()  # a Path is the user's too


def test_a_model_archive_with_a_sparse_member_is_refused(tmp_path):
    # a sparse member states its size freely: 1 GB of dict.txt in a few hundred bytes of archive
    info = tarfile.TarInfo("model/dict.txt")
    info.type, info.size, info.sparse = tarfile.GNUTYPE_SPARSE, 0, [(1 << 30, 0)]
    assert info.issparse()
    archive = tmp_path / "sparse.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ValueError, match="'model/dict.txt' is not a plain file"):
        safe_load._extract(str(archive), str(dest))
    assert not list(dest.iterdir())


def test_a_model_archive_with_a_link_or_an_absolute_name_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    link = tarfile.TarInfo("model/link")  # a symlink chain is how tarfile's filter was bypassed
    link.type, link.linkname = tarfile.SYMTYPE, "."
    absolute = model_archive(tmp_path / "absolute.tar.gz", [(f"{victim}/model.pt", b"weights")])
    linked = tmp_path / "linked.tar.gz"
    with tarfile.open(linked, "w:gz") as archive:
        archive.addfile(link)
    for archive, member in ((absolute, f"{victim}/model.pt"), (linked, "model/link")):
        dest = tmp_path / f"into-{archive.name}"
        dest.mkdir()
        with pytest.raises(ValueError, match=f"{archive.name}: refused .* {member!r} is not a plain file"):
            safe_load._extract(str(archive), str(dest))
        assert not any(dest.iterdir())
    assert [p.name for p in victim.iterdir()] == ["keep"]


def test_an_extraction_error_is_not_hidden_on_a_python_without_tar_filters(tmp_path, monkeypatch):
    good = model_archive(tmp_path / "model.tar.gz", [("model/model.pt", b"weights")])
    monkeypatch.delattr(tarfile, "FilterError")
    monkeypatch.delattr(tarfile, "data_filter")

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        safe_load._extract(str(good), str(tmp_path))


class _ObjectDType:
    """Pickles as numpy.dtype("O"), naming only the allow-listed numpy.dtype."""

    def __reduce__(self):
        return (np.dtype, ("O",))


class _ArrayFromBytes:
    """Pickles as numpy.ndarray(shape, dtype, buffer): an array over bytes of the file."""

    def __init__(self, raw, dtype):
        self.raw, self.dtype = raw, dtype

    def __reduce__(self):
        return (np.ndarray, ((len(self.raw) // 8,), self.dtype, self.raw))


@pytest.mark.parametrize("payload,refused", [
    # an object array whose element is 8 bytes of the file, read as a pointer (a crash, or worse)
    (_ArrayFromBytes(b"A" * 8, _ObjectDType()), "an array of Python objects"),
    (_ObjectDType(), "an array of Python objects"),
])
def test_numpy_objects_the_file_builds_itself_are_refused(run_dir, tmp_path, capsys, payload, refused):
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "numpy.pt", payload)
    assert safe_load.outside_allow_list(checkpoint) == []  # it names only numpy.dtype and numpy.ndarray
    with pytest.raises(safe_load.UntrustedCheckpointError) as raised:
        safe_load.load(checkpoint)
    assert refused in str(raised.value), str(raised.value)
    status, out, _ = check_checkpoint(capsys, checkpoint)
    assert status == 1 and "refused" in out


def test_every_numpy_object_a_load_made_is_checked_by_its_dtype():
    plain = [np.zeros(2), np.zeros(2, dtype=">i8"), np.dtype("f2"), np.zeros((), dtype=bool)]  # ">": big-endian
    assert safe_load._numpy_made_not_plain(plain) == []
    odd = [np.array([None, 1], dtype=object), np.array(["text"]), np.zeros(2, dtype=[("f", "i8")]),
           np.zeros(2, dtype=complex), np.dtype("i8", metadata={"m": 1})]
    assert safe_load._numpy_made_not_plain(plain + odd) == ["|O", "<U4", "|V8", "<c16", "<i8"]


class _DTypeWithState:
    """Pickles as a copy of numpy.dtype("i8") whose state the file gives: BUILD calls dtype.__setstate__."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return (np.dtype, ("i8", False, True), self.state)


class _ReconstructedArray:
    """Pickles as numpy pickles an array (_reconstruct, then BUILD with the file's bytes), with a dtype of
    the file's making."""

    def __init__(self, raw, dtype):
        self.raw, self.dtype = raw, dtype

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), self.dtype, False, self.raw))


FIELD = (3, "|", None, ("f",), {"f": (np.dtype("i1"), 100_000)}, 8, 1, 0)  # a field 100,000 bytes past each item
SUB_ARRAY = (3, "<", (np.dtype("i1"), (100_000,)), None, None, -1, -1, 0)  # a sub-array as long


def _on_a_tensor(array):
    tensor = torch.zeros(1)
    tensor.counts = array  # pickled with the tensor's own attributes
    return tensor


def _in_an_ordered_dicts_attribute(array):
    state = collections.OrderedDict(w=torch.zeros(1))
    state._metadata = {"": {"version": array}}  # as torch's state dicts keep theirs
    return state


def _as_a_dict_key(array):
    return {array.dtype: 1}  # the dtype alone


def _numpy_objects_placed(loaded, place):
    if place is _as_a_dict_key:
        return [next(iter(loaded))]
    if place is _on_a_tensor:
        return [loaded.counts]
    if place is _in_an_ordered_dicts_attribute:
        return [loaded._metadata[""]["version"]]
    return [loaded]


@pytest.mark.parametrize("state", [FIELD, SUB_ARRAY], ids=["field", "sub-array"])
@pytest.mark.parametrize("build", [_ReconstructedArray, _ArrayFromBytes], ids=["reconstructed", "constructed"])
@pytest.mark.parametrize("place", [lambda array: array, _on_a_tensor, _in_an_ordered_dicts_attribute, _as_a_dict_key],
                         ids=["value", "tensor", "ordered-dict", "key"])
def test_a_dtype_the_file_rebuilds_stays_numpys_own(run_dir, tmp_path, capsys, state, build, place):
    rebuilt = pickle.loads(pickle.dumps(_DTypeWithState(state)))
    assert rebuilt == np.dtype("i8") and (rebuilt.fields or rebuilt.subdtype)  # what a full load would make
    payload = place(build(b"\0" * 8, _DTypeWithState(state)))
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "dtype.pt", payload)
    if place is _on_a_tensor:
        # a tensor with attributes names torch.Tensor (the type to rebuild), which no fairseq checkpoint does and
        # the loader withholds (its legacy constructor shares a numpy array's memory): refused before any array
        assert safe_load.outside_allow_list(checkpoint) == ["torch.Tensor"]
        with pytest.raises(safe_load.UntrustedCheckpointError, match="it holds torch.Tensor"):
            safe_load.load(checkpoint)
        return
    assert safe_load.outside_allow_list(checkpoint) == []  # it names only numpy.dtype, _reconstruct and ndarray
    status, out, _ = check_checkpoint(capsys, checkpoint)
    if build is _ArrayFromBytes and place is not _as_a_dict_key:
        # numpy.ndarray(shape, dtype, buffer) would size the buffer by the item before expanding the sub-array
        with pytest.raises(safe_load.UntrustedCheckpointError, match=r"numpy.ndarray\(shape, dtype, buffer\)"):
            safe_load.load(checkpoint)
        assert status == 1 and "refused" in out
        return
    # the loader's dtypes are numpy's shared ones, which ignore the state the file gives them
    for made in _numpy_objects_placed(safe_load.load(checkpoint)["extra_state"]["injected"], place):
        dtype = made if isinstance(made, np.dtype) else made.dtype
        assert dtype is np.dtype("i8") and dtype.fields is None and dtype.subdtype is None
        if isinstance(made, np.ndarray):
            assert made.shape == (1,) and made.nbytes == 8 and made.tolist() == [0]
    assert status == 0, out


class _DTypeHoldingItself:
    def __reduce__(self):
        return (np.dtype, ("i8", False, True), (3, "|", None, ("f",), {"f": (self, 0)}, 8, 1, 0))


def test_a_dtype_given_fields_that_hold_itself_stays_numpys_own(run_dir, tmp_path):
    # a copy of int64 given such fields, hashed as a dict key, recursed in C until the process died
    dtype = _DTypeHoldingItself()
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "self.pt",
                         [{dtype: 1}, _ReconstructedArray(b"\0" * 8, dtype)])
    key, array = safe_load.load(checkpoint)["extra_state"]["injected"]
    assert next(iter(key)) is np.dtype("i8") and array.dtype is np.dtype("i8")


class _TensorOverNumpy:
    """Pickles as torch's own _rebuild_device_tensor_from_numpy, which torch allows by default."""

    def __reduce__(self):
        return (torch._utils._rebuild_device_tensor_from_numpy, (np.zeros(4), torch.float64, "cpu", False))


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_a_tensor_over_a_numpy_arrays_memory_is_refused(run_dir, tmp_path, capsys, monkeypatch, legacy_format):
    # the file could BUILD the array again, freeing the memory the tensor still reads and writes
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "tensor.pt", _TensorOverNumpy(), legacy_format)
    with pytest.raises(safe_load.UntrustedCheckpointError, match="torch._utils._rebuild_device_tensor_from_numpy"):
        safe_load.load(checkpoint)
    with open(checkpoint, "rb") as handle:  # a file object, as fairseq passes it, left where it was
        handle.seek(0)
        with pytest.raises(safe_load.UntrustedCheckpointError, match="_rebuild_device_tensor_from_numpy"):
            safe_load.load(handle)
        assert handle.tell() == 0
    status, out, _ = check_checkpoint(capsys, checkpoint)
    assert status == 1 and "_rebuild_device_tensor_from_numpy" in out
    monkeypatch.setenv(safe_load.TRUST_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(safe_load.load(checkpoint)["extra_state"]["injected"], torch.zeros(4, dtype=torch.float64))


def _rewritten(checkpoint, out, entries):
    """``checkpoint`` (a zip file) written again as ``entries(name, data)`` makes of its entries."""
    with zipfile.ZipFile(checkpoint) as archive:
        old = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile: "Duplicate name"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for name, data in old:
                for new_name, new_data in entries(name, data):
                    archive.writestr(new_name, new_data)
    return out


_HARMLESS = pickle.dumps(collections.OrderedDict(model={}), protocol=2)  # names a global, as checkpoints do
# Layouts where Python's zipfile and torch's reader pick different pickles: torch reads the first
# archive/data.pkl, matched without regard to case, or a legacy file's leading pickles when byte 0 is no
# zip header; zipfile the last entry of a name, and finds a zip anywhere in the file.
_DISAGREEING_LAYOUTS = {
    "listed twice": lambda name, data: [(name, data)] + ([(name, _HARMLESS)] if name.endswith("/data.pkl") else []),
    "name in capitals": lambda name, data: [(name[:-len("data.pkl")] + "DATA.PKL" if name.endswith("/data.pkl")
                                             else name, data)],
    "a decoy listed first": lambda name, data: (
        [(name.replace("data.pkl", "xdata.pkl"), _HARMLESS)] if name.endswith("/data.pkl") else []) + [(name, data)],
}


@pytest.mark.parametrize("layout", [*_DISAGREEING_LAYOUTS, "legacy pickles with a zip after"])
def test_a_tensor_over_numpy_memory_is_refused_whichever_pickle_torch_reads(run_dir, tmp_path, capsys, layout):
    # the refused global is withheld from torch's own unpickler, not looked for in the file beforehand, where
    # Python's zipfile could read another pickle than torch does
    if layout in _DISAGREEING_LAYOUTS:
        crafted(run_dir / "checkpoint_last.pt", tmp_path / "base.pt", _TensorOverNumpy())
        checkpoint = _rewritten(tmp_path / "base.pt", tmp_path / "odd.pt", _DISAGREEING_LAYOUTS[layout])
    else:
        crafted(run_dir / "checkpoint_last.pt", tmp_path / "base.pt", _TensorOverNumpy(), legacy_format=True)
        harmless = io.BytesIO()
        torch.save({"model": {}}, harmless)
        checkpoint = tmp_path / "odd.pt"
        checkpoint.write_bytes((tmp_path / "base.pt").read_bytes() + harmless.getvalue())
    with pytest.raises(safe_load.UntrustedCheckpointError, match="_rebuild_device_tensor_from_numpy"):
        safe_load.load(checkpoint)
    status, out, _ = check_checkpoint(capsys, checkpoint)
    assert status == 1 and "_rebuild_device_tensor_from_numpy" in out
    # withheld for the plugin's loads only: torch's own default list is as it was
    from torch import _weights_only_unpickler
    assert "torch._utils._rebuild_device_tensor_from_numpy" in _weights_only_unpickler._get_allowed_globals()


def _doubling_lists(levels):
    node = ["x"]
    for _ in range(levels):
        node = [node, node]  # one list, twice: pickled once, then by reference
    return node


def _chains_listed_innermost_first(chains, length):
    heads, tail = [], "x"
    for _ in range(chains):
        tail = functools.reduce(lambda inner, _: [inner], range(length), tail)
        heads.append(tail)
    return heads[::-1]  # walked from the end: the innermost chain first


def _list_inside_itself():
    node = ["x"]
    node.append(node)
    return node


@pytest.mark.parametrize("value,said", [
    (_doubling_lists(40), "holds more than 1,000,000 values once expanded"),
    (_list_inside_itself(), "holds a list, dict or Namespace inside itself"),
    (functools.reduce(lambda inner, _: [inner], range(200), "x"), "nested more than 64 levels deep"),
    # chains of 40 lists, each ending at the head of the one before, all listed at the top with the innermost
    # reached first: by the path it is reached on each chain is 41 levels deep, the whole 400
    (_chains_listed_innermost_first(10, 40), "nested more than 64 levels deep"),
], ids=["2^40 values", "a cycle", "200 levels", "10 chains of 40"])
def test_a_config_that_is_no_tree_of_fairseqs_size_is_refused_at_once(run_dir, tmp_path, capsys, value, said):
    # each a few kB: the walks over the config (the checks here, OmegaConf's) would never end, or recurse too deep
    checkpoint = crafted_task_note(run_dir / "checkpoint_last.pt", tmp_path / "shape.pt", value)
    assert checkpoint.stat().st_size < 2 * (run_dir / "checkpoint_last.pt").stat().st_size
    started = time.monotonic()
    with pytest.raises(safe_load.UntrustedCheckpointError, match=said):
        safe_load.load(checkpoint)
    status, out, _ = check_checkpoint(capsys, checkpoint)
    assert status == 1 and said in out and time.monotonic() - started < 30


class _LegacyTensorOverNumpy:
    """Pickles as a tensor class's legacy constructor called on a numpy array, which shares its memory."""

    def __init__(self, cls):
        self.cls = cls

    def __reduce__(self):
        return (self.cls, (np.zeros(4),))


@pytest.mark.parametrize("cls", [torch.Tensor, torch.FloatTensor], ids=lambda cls: cls.__name__)
def test_a_tensor_class_called_on_a_numpy_array_is_refused(run_dir, tmp_path, cls):
    # torch allows the call by default; the file could then BUILD the array again and free the memory
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "legacy.pt", _LegacyTensorOverNumpy(cls))
    with pytest.raises(safe_load.UntrustedCheckpointError, match=f"it holds torch.{cls.__name__}"):
        safe_load.load(checkpoint)
    assert f"torch.{cls.__name__}" in _weights_only_unpickler._get_allowed_globals()  # for the plugin's loads only


def test_a_sparse_tensor_whose_indices_leave_it_is_refused(run_dir, tmp_path):
    # torch checks them at load only when asked to; adding such a tensor to a dense one writes where the file says
    bad = torch.sparse_coo_tensor(torch.tensor([[1 << 40]]), torch.ones(1), (4,), check_invariants=False)
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "sparse.pt", bad)
    with pytest.raises(RuntimeError, match="size is inconsistent with indices"):
        safe_load.load(checkpoint)


class _UnfilledArray:
    """Pickles as numpy's _reconstruct of a large shape with no BUILD after it: numpy leaves the memory as is."""

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (1 << 16,), b"b"))


def test_an_array_the_file_never_fills_holds_zeros_not_the_heaps_leftovers(run_dir, tmp_path):
    garbage = [np.full(1 << 16, 0x5A5A5A5A5A5A5A5A, dtype=np.int64) for _ in range(8)]
    del garbage  # freed memory that the next allocation of this size may get back as it is
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "unfilled.pt", _UnfilledArray())
    array = safe_load.load(checkpoint)["extra_state"]["injected"]
    assert array.shape == (1 << 16,) and not array.any()


def test_the_numpy_entries_serve_no_other_threads_load(run_dir):
    # they are on torch's process-wide list while a load here runs; a plain weights-only load elsewhere
    # meanwhile would get numpy arrays without the checks made after the load
    results = []
    with safe_load._LOADING, safe_load._allowed(safe_load.checkpoint_globals()):
        thread = threading.Thread(target=lambda: results.append(_attempt(run_dir / "checkpoint_last.pt")))
        thread.start()
        thread.join()
    assert results == ["numpy arrays and dtypes, allowed only in rdrop_fairseq.safe_load's own loads"]


def _attempt(path):
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        return next(line for line in str(error).splitlines() if "numpy arrays" in line).strip().split(", which")[0]
    return "loaded"


def test_loads_in_threads_do_not_take_each_others_allow_list_away(run_dir):
    before = set(torch.serialization.get_safe_globals())
    errors = []

    def load_some():
        try:
            for _ in range(5):
                safe_load.load(run_dir / "checkpoint_last.pt")
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=load_some) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and set(torch.serialization.get_safe_globals()) == before


def test_a_users_own_numpy_ndarray_on_torchs_allow_list_cannot_stand_in_for_the_loaders(run_dir, tmp_path):
    # torch's error message suggests add_safe_globals([numpy.ndarray]); under the same name as the loader's
    # own entry, torch would pick either one, and the class itself builds over-reading arrays
    checkpoint = crafted(run_dir / "checkpoint_last.pt", tmp_path / "dtype.pt",
                         _ArrayFromBytes(b"\0" * 8, _DTypeWithState(SUB_ARRAY)))
    torch.serialization.add_safe_globals([np.ndarray])
    try:
        for _ in range(8):
            with pytest.raises(safe_load.UntrustedCheckpointError, match=r"numpy.ndarray\(shape, dtype, buffer\)"):
                safe_load.load(checkpoint)
        assert np.ndarray in torch.serialization.get_safe_globals()  # the user's entry is back
        assert_same(safe_load.load(run_dir / "checkpoint_last.pt"), full_load(run_dir / "checkpoint_last.pt"))
    finally:
        torch.serialization.clear_safe_globals()


def test_the_classes_only_build_fills_in_cannot_be_named_by_a_file():
    # the unpickler looks a global up as "module.name"
    names = [entry[1] for entry in safe_load.checkpoint_globals() if isinstance(entry, tuple)]
    build_only = [name for name in names if name.startswith("BUILD of ")]
    assert "BUILD of ndarray" in build_only and "BUILD of Int64DType" in build_only
    assert not any("." in name for name in build_only)
    assert np.ndarray not in [entry for entry in safe_load.checkpoint_globals() if not isinstance(entry, tuple)]


def legacy_checkpoint(run_dir, out, **args):
    """A checkpoint whose config is a legacy ``args`` Namespace, as fairseq before 0.10 saved it."""
    state = full_load(run_dir / "checkpoint_last.pt")
    state.pop("cfg", None)
    state["args"] = argparse.Namespace(**{"task": "translation", "arch": "transformer", "data": str(out.parent),
                                          "source_lang": "de", "target_lang": "en", **args})
    torch.save(state, out)
    return out


class _TextArray:
    """Pickles as a 0-d numpy array of text: numpy.dtype("<U40") and the allow-listed _reconstruct."""

    def __init__(self, text):
        self.text = text

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (), np.dtype("<U40"), False, np.array(self.text, dtype="<U40").tobytes()))


def test_a_legacy_config_value_that_is_not_data_is_refused(run_dir, tmp_path, capsys, monkeypatch):
    # fairseq formats a legacy value with str() into a Hydra override, then resolves it: text in a numpy
    # array would carry a resolver call past the string checks
    from fairseq import checkpoint_utils

    monkeypatch.setenv("RDROP_TEST_SECRET", "s3cr3t")
    text = legacy_checkpoint(run_dir, tmp_path / "text.pt", tensorboard_logdir=_TextArray("${oc.env:RDROP_TEST_SECRET}"))
    with pytest.raises(safe_load.UntrustedCheckpointError, match=r"a numpy dtype \(<U40\)"):
        checkpoint_utils.load_checkpoint_to_cpu(str(text))
    numbers = legacy_checkpoint(run_dir, tmp_path / "numbers.pt", tensorboard_logdir=np.array([1, 2]))
    with pytest.raises(safe_load.UntrustedCheckpointError, match="its config holds values other than strings") as raised:
        checkpoint_utils.load_checkpoint_to_cpu(str(numbers))
    assert "args.tensorboard_logdir (numpy.ndarray)" in str(raised.value)
    for checkpoint in (text, numbers):
        status, out, _ = check_checkpoint(capsys, checkpoint)
        assert status == 1 and "refused" in out
    monkeypatch.setenv(safe_load.TRUST_ENV, "1")  # what the check stops: the secret in the config
    assert checkpoint_utils.load_checkpoint_to_cpu(str(text))["cfg"]["common"]["tensorboard_logdir"] == "s3cr3t"


def test_a_legacy_registry_choice_that_is_a_path_is_refused(run_dir, tmp_path, capsys, monkeypatch):
    # fairseq passes a legacy bpe/tokenizer/scoring choice to Hydra as a config group, which reads
    # <choice>.yaml: a path there composes any YAML file, whose resolvers then run
    from fairseq import checkpoint_utils

    monkeypatch.setenv("RDROP_TEST_SECRET", "s3cr3t")
    (tmp_path / "evil.yaml").write_text("leak: ${oc.env:RDROP_TEST_SECRET}\n")
    choice = "../" * 16 + str(tmp_path / "evil").lstrip("/")
    checkpoint = legacy_checkpoint(run_dir, tmp_path / "group.pt", bpe=choice)
    with pytest.raises(safe_load.UntrustedCheckpointError, match="registry choices that are not plain names") as raised:
        checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    assert f"args.bpe = {choice!r}" in str(raised.value) and "s3cr3t" not in str(raised.value)
    status, out, _ = check_checkpoint(capsys, checkpoint)
    assert status == 1 and "args.bpe" in out
    plain = legacy_checkpoint(run_dir, tmp_path / "plain.pt", bpe="subword_nmt", tokenizer="moses")
    assert checkpoint_utils.load_checkpoint_to_cpu(str(plain))["cfg"]["bpe"]["_name"] == "subword_nmt"
    monkeypatch.setenv(safe_load.TRUST_ENV, "1")  # what the check stops: the YAML file read, its secret resolved
    assert checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))["cfg"]["bpe"]["leak"] == "s3cr3t"


@pytest.mark.parametrize("value", [
    "['$' '{oc.env:RDROP_TEST_SECRET}']",  # Python's implicit concatenation, once evaluated as a literal
    "['\\x24{oc.env:RDROP_TEST_SECRET}']",  # an escape, once evaluated
    ["\\${oc.env:RDROP_TEST_SECRET}"],  # escaped for OmegaConf, not once Hydra reads the list as an override
])
def test_legacy_args_that_become_a_resolver_call_once_converted_are_refused(run_dir, tmp_path, capsys, monkeypatch,
                                                                            value):
    # fairseq < 0.10 saved an argparse Namespace ("args"), which fairseq converts to an OmegaConf config:
    # it evaluates the strings of non-string fields and passes lists to Hydra, then resolves the result.
    from fairseq import checkpoint_utils

    monkeypatch.setenv("RDROP_TEST_SECRET", "s3cr3t")
    legacy = legacy_checkpoint(run_dir, tmp_path / "legacy.pt", criterion="hubert", log_keys=value)
    with pytest.raises(safe_load.UntrustedCheckpointError, match="holds OmegaConf interpolations") as raised:
        checkpoint_utils.load_checkpoint_to_cpu(str(legacy))
    assert "args.log_keys" in str(raised.value) and "s3cr3t" not in str(raised.value)
    status, out, _ = check_checkpoint(capsys, legacy)
    assert status == 1 and "refused" in out
    monkeypatch.setenv(safe_load.TRUST_ENV, "1")  # what the check stops: the secret in the config
    assert "s3cr3t" in str(checkpoint_utils.load_checkpoint_to_cpu(str(legacy))["cfg"]["criterion"]["log_keys"])
