"""``rdrop-fairseq`` (rdrop_fairseq.cli): its subcommands' output, exit status and refusals.

check-checkpoint on real and crafted checkpoints is tested in test_safe_load.py; here with
files made in the test, for the exit status and the hint of each mix of verdicts."""
import os
from pathlib import Path

import pytest
import torch

import rdrop_fairseq
from rdrop_fairseq import cli, safe_load

REPO = Path(__file__).resolve().parents[1]


def test_user_dir_prints_the_plugins_folder_from_anywhere(run_main, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # fairseq imports --user-dir by its path: not one relative to the caller
    status, out, err = run_main(cli.main, "user-dir")
    assert (status, err) == (0, "")
    assert out == f"{Path(rdrop_fairseq.__file__).parent}\n"
    assert os.path.isabs(out.strip())


def test_user_dir_refuses_arguments(run_main):
    status, out, err = run_main(cli.main, "user-dir", "--data", "x")
    assert status == 2 and out == ""
    assert "unrecognized arguments: --data x" in err


@pytest.fixture
def checkpoints(tmp_path):
    loads = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "cfg": None}, loads)
    unreadable = tmp_path / "garbage.pt"
    unreadable.write_bytes(b"not a checkpoint")
    return loads, unreadable


def test_check_checkpoint_exits_0_and_says_nothing_more_when_all_load(run_main, checkpoints):
    loads, _ = checkpoints
    status, out, err = run_main(cli.main, "check-checkpoint", loads, loads)
    assert (status, err) == (0, "")
    assert out.splitlines() == [f"{loads}: loads with the allow-list"] * 2


def test_check_checkpoint_exits_1_for_an_unreadable_file_without_advice_to_trust_it(run_main, checkpoints):
    # trusting a file that torch cannot read would not load it either
    loads, unreadable = checkpoints
    status, out, err = run_main(cli.main, "check-checkpoint", loads, unreadable)
    assert (status, err) == (1, "")
    assert [line.split(":")[0] for line in out.splitlines()] == [str(loads), str(unreadable)]
    assert out.splitlines()[1].startswith(f"{unreadable}: not a checkpoint torch can read")


def test_check_checkpoint_names_missing_files_and_checks_none(run_main, checkpoints, tmp_path):
    loads, _ = checkpoints
    missing = [tmp_path / "gone.pt", tmp_path / "nope.pt"]
    status, out, err = run_main(cli.main, "check-checkpoint", loads, *missing)
    assert status == 2 and out == ""
    assert f"check-checkpoint: no such file: {missing[0]}, {missing[1]}" in err
    assert safe_load.TRUST_ENV not in err


def test_check_checkpoint_refuses_unknown_options(run_main, checkpoints):
    loads, _ = checkpoints
    status, out, err = run_main(cli.main, "check-checkpoint", loads, "--trust")
    assert status == 2 and out == "" and "unrecognized arguments: --trust" in err


def test_quickstart_gets_the_rest_of_the_command_line_under_its_own_name(run_main, tmp_path):
    # a usage error is found before anything is prepared, and names the subcommand the user typed
    status, out, err = run_main(cli.main, "quickstart", "--max-updates", "0", "--work-dir", tmp_path / "w")
    assert status == 2 and out == ""
    # one line, as from scripts/quickstart.sh
    assert err == ("rdrop-fairseq quickstart: error: --max-updates must be positive "
                   "(all options: rdrop-fairseq quickstart --help)\n")
    assert not (tmp_path / "w").exists()
    status, out, _ = run_main(cli.main, "quickstart", "--help")
    assert status == 0 and out.startswith("usage: rdrop-fairseq quickstart") and "--rdrop-alpha" in out


def test_a_command_is_required(run_main):
    status, out, err = run_main(cli.main)
    assert status == 2 and out == "" and "user-dir" in err and "check-checkpoint" in err


def test_setup_py_installs_rdrop_fairseq_as_this_main():
    # the command README.md and the docs use; a typo in setup.py shows only after an install
    import ast
    import importlib

    setup_call = next(node for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
                      if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    entry_points = ast.literal_eval(next(k.value for k in setup_call.keywords if k.arg == "entry_points"))
    scripts = dict(line.replace(" ", "").split("=") for line in entry_points["console_scripts"])
    module, _, function = scripts["rdrop-fairseq"].partition(":")
    assert getattr(importlib.import_module(module), function) is cli.main
