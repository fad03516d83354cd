"""Exact resume: stopping and restarting from checkpoint_last.pt changes nothing.

fairseq reseeds every update with ``--seed`` + update number and checkpoints the
model, optimizer, LR schedule, update count and position in the epoch, so a resumed
fp32 CPU run can repeat an uninterrupted one bit for bit.  The R-Drop state is the
sub-model schedule of ``--rdrop-every-k-steps``; it is a function of the update
number, which the resumed run must take from the checkpoint, not restart at 0.
"""
import pytest
import torch

from fairseq_runs import finish, start_train, toy_data, train_args, train_in_process, train_inner_logs

K = 3
STOP, TOTAL = 4, 8  # the toy corpus has 6 batches: the resumed run crosses into epoch 2
CURVE = ("loss", "nll_loss", "kl_loss", "gnorm", "lr", "num_updates")


def curve(records):
    return [tuple(record[key] for key in CURVE) for record in records]


def load_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.e2e
def test_resumed_run_repeats_the_uninterrupted_run_bitwise(tmp_path_factory, tmp_path):
    data = toy_data(tmp_path_factory)
    k_steps = ("--rdrop-every-k-steps", str(K))
    whole = train_in_process(train_args(data, tmp_path / "whole", "--max-update", str(TOTAL), *k_steps))
    first = train_in_process(train_args(data, tmp_path / "split", "--max-update", str(STOP), *k_steps))
    # A fresh process: whatever is not in checkpoint_last.pt is lost, as after a crash.
    output = finish(start_train(train_args(data, tmp_path / "split", "--max-update", str(TOTAL), *k_steps)))
    rest = train_inner_logs(output)

    assert f"(epoch 1 @ {STOP} updates" in output, "the second run did not resume from checkpoint_last.pt"
    assert [r["num_updates"] for r in whole] == list(range(1, TOTAL + 1))
    rdrop_updates = [int(r["num_updates"]) for r in whole if r["kl_loss"] is not None]
    assert rdrop_updates == [u for u in range(1, TOTAL + 1) if (u - 1) % K == 0]
    assert curve(first) + curve(rest) == curve(whole)

    split_state = load_state(tmp_path / "split" / "checkpoint_last.pt")
    whole_state = load_state(tmp_path / "whole" / "checkpoint_last.pt")
    assert split_state["model"].keys() == whole_state["model"].keys()
    for name, tensor in whole_state["model"].items():
        assert torch.equal(split_state["model"][name], tensor), name
    split_adam = split_state["last_optimizer_state"]["state"]
    whole_adam = whole_state["last_optimizer_state"]["state"]
    for param_id, moments in whole_adam.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(split_adam[param_id][key], moments[key]), (param_id, key)
