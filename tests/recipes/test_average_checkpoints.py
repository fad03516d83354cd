import weakref

import pytest
import torch

from rdrop_fairseq.recipes import average_checkpoints as avg


def fake_checkpoint(path, seed, steps=7):
    torch.manual_seed(seed)
    model = {
        "encoder.weight": torch.randn(4, 3),
        "decoder.bias": torch.randn(5).half(),
        "encoder.version": torch.tensor([3]),
        "bn.num_batches_tracked": torch.tensor(100 + 101 * (seed - 1)),  # 100, then 201
    }
    torch.save({"model": model, "cfg": {"seed": seed}, "last_optimizer_state": {"step": steps},
                "extra_state": {"train_iterator": {"epoch": 1}, "rng": torch.randn(3)}}, path)
    return model


def test_average_of_two_is_the_mean(tmp_path):
    a = fake_checkpoint(tmp_path / "checkpoint_1_100.pt", seed=1)
    b = fake_checkpoint(tmp_path / "checkpoint_1_200.pt", seed=2)
    out = tmp_path / "avg.pt"
    avg.average_checkpoints([tmp_path / "checkpoint_1_100.pt", tmp_path / "checkpoint_1_200.pt"], out)
    state = torch.load(out, weights_only=False)
    torch.testing.assert_close(state["model"]["encoder.weight"], (a["encoder.weight"] + b["encoder.weight"]) / 2)
    # as fairseq's scripts/average_checkpoints.py: fp16 averaged to fp32, integers floor-divided
    expected_bias = (a["decoder.bias"].double() + b["decoder.bias"].double()) / 2
    assert state["model"]["decoder.bias"].dtype == torch.float32
    torch.testing.assert_close(state["model"]["decoder.bias"], expected_bias.float(), rtol=0, atol=0)
    assert torch.equal(state["model"]["encoder.version"], torch.tensor([3]))
    assert torch.equal(state["model"]["bn.num_batches_tracked"], torch.tensor(150))
    assert state["cfg"] == {"seed": 2}  # the newest checkpoint is the template
    assert state["last_optimizer_state"] is None
    assert state["extra_state"]["averaged_from"][-1].endswith("checkpoint_1_200.pt")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_last_checkpoints_orders_by_update_number(tmp_path):
    for name in ["checkpoint_1_900.pt", "checkpoint_2_1000.pt", "checkpoint_1_80.pt", "checkpoint3.pt",
                 "checkpoint_best.pt", "checkpoint_last.pt", "checkpoint.avg5.pt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in avg.last_checkpoints(tmp_path, 2)] == ["checkpoint_1_900.pt", "checkpoint_2_1000.pt"]
    assert [p.name for p in avg.last_checkpoints(tmp_path, 1, epochs=True)] == ["checkpoint3.pt"]
    with pytest.raises(FileNotFoundError, match="wanted the last 4 update checkpoints"):
        avg.last_checkpoints(tmp_path, 4)


def test_last_checkpoints_compare_update_numbers_not_names(tmp_path):
    # within one epoch, "checkpoint_3_100000.pt" sorts before "checkpoint_3_99000.pt" as a name
    for name in ["checkpoint_2_98000.pt", "checkpoint_3_100000.pt", "checkpoint_3_99000.pt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in avg.last_checkpoints(tmp_path, 2)] == ["checkpoint_3_99000.pt", "checkpoint_3_100000.pt"]


def test_mismatched_checkpoints_are_refused_and_nothing_is_written(tmp_path):
    fake_checkpoint(tmp_path / "a.pt", seed=1)
    torch.save({"model": {"encoder.weight": torch.zeros(2, 2)}}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="different parameters"):
        avg.average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "avg.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]


def test_one_checkpoint_is_held_at_a_time(tmp_path, monkeypatch):
    for seed in (1, 2, 3):
        fake_checkpoint(tmp_path / f"checkpoint_1_{seed}00.pt", seed=seed)
    alive, most = [], 0
    loaded = avg.load

    def tracked(path):
        nonlocal most
        alive[:] = [ref for ref in alive if ref() is not None]
        state = loaded(path)
        alive.append(weakref.ref(state["extra_state"]["rng"]))
        most = max(most, sum(ref() is not None for ref in alive))
        return state

    monkeypatch.setattr(avg, "load", tracked)
    avg.average_checkpoints(sorted(tmp_path.glob("checkpoint_*.pt")), tmp_path / "avg.pt")
    assert most == 1


def test_an_unreadable_checkpoint_is_named(tmp_path, capsys):
    fake_checkpoint(tmp_path / "a.pt", seed=1)
    (tmp_path / "b.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:200])
    with pytest.raises(SystemExit):
        avg.main(["--inputs", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--output", str(tmp_path / "avg.pt")])
    assert f"{tmp_path / 'b.pt'}: unreadable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "avg.pt").exists()


def test_cli_names_the_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        avg.main(["--save-dir", str(tmp_path / "nope"), "--last", "2", "--output", str(tmp_path / "x.pt")])
    assert "--save-dir: no such folder" in capsys.readouterr().err


def test_the_output_may_not_replace_an_input_or_a_checkpoint_training_resumes_from(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint_1_100.pt", seed=1)
    fake_checkpoint(tmp_path / "checkpoint_1_200.pt", seed=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    inputs = [tmp_path / "checkpoint_1_100.pt", tmp_path / "checkpoint_1_200.pt"]
    with pytest.raises(ValueError, match="is one of the inputs"):
        avg.average_checkpoints(inputs, tmp_path / "." / "checkpoint_1_200.pt")
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "checkpoint3.pt", "checkpoint_2_300.pt"):
        with pytest.raises(ValueError, match="resumes from"):
            avg.average_checkpoints(inputs, tmp_path / name)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_output_gets_the_permissions_of_a_new_file(tmp_path):
    import os

    fake_checkpoint(tmp_path / "a.pt", seed=1)
    old = os.umask(0o022)
    try:
        avg.average_checkpoints([tmp_path / "a.pt"], tmp_path / "avg.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "avg.pt").stat().st_mode & 0o777 == 0o644


class Extra:
    """Outside the safe loader's allow-list."""


def test_cli_reports_a_refused_checkpoint_without_a_traceback(tmp_path, capsys, monkeypatch):
    from rdrop_fairseq import safe_load

    monkeypatch.delenv(safe_load.TRUST_ENV, raising=False)
    monkeypatch.setattr(safe_load, "_task_offers_flag", False)  # as in a process of its own
    torch.save({"model": {}, "extra_state": {"x": Extra()}}, tmp_path / "a.pt")
    with pytest.raises(SystemExit) as exited:
        avg.main(["--inputs", str(tmp_path / "a.pt"), "--output", str(tmp_path / "avg.pt")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "refused to load" in err and "RDROP_TRUST_CHECKPOINTS=1" in err
    assert "--trust-checkpoints" not in err  # no task here takes it
