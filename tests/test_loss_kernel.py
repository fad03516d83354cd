"""benchmarks/loss_kernel.py: the modes it times compute the same loss, and its table has a cell per
column, the fused kernels' block sizes and bandwidth included (run here under Triton's interpreter)."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from fake_cuda import QueuedClock

pytest.importorskip("triton")  # without CUDA, conftest chose the interpreter

SPEC = importlib.util.spec_from_file_location(
    "loss_kernel", Path(__file__).resolve().parents[1] / "benchmarks" / "loss_kernel.py")
loss_kernel = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(loss_kernel)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's masked lanes


@pytest.mark.parametrize("copies", [2, 3])
def test_a_fixed_block_gives_the_fused_kernels_value_and_gradient(monkeypatch, copies):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(copies * 6, 50, generator=gen) * 3
    target = torch.randint(2, 50, (6,), generator=gen)
    target[2] = loss_kernel.PAD
    monkeypatch.setenv("RDROP_KERNEL", "torch")
    results = []
    for loss in (loss_kernel.plugin("torch"), loss_kernel.fixed_block(16)):
        leaf = logits.clone().requires_grad_()
        value = loss(leaf, target, 0.1)
        value.backward()
        results.append((value.detach(), leaf.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-5)


def test_the_table_has_a_cell_for_every_column(monkeypatch):
    monkeypatch.setattr(loss_kernel, "plugin", lambda kernel: loss_kernel.fixed_block(0))  # "auto": the kernels
    modes = loss_kernel.modes_for("cuda", blocks=[16, 64])
    # the block sizes are timed beside the kernels' own choice called the same way (without rdrop_loss's checks)
    assert list(modes) == ["doubled", "torch", "triton", "triton_own", "triton_b16", "triton_b64"]
    header, rule = loss_kernel.header(modes).splitlines()
    row = loss_kernel.measure("tiny", 8, 100, modes, torch.float32, "cpu", repeats=1, copies=3)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert len(cells) == len(columns) == rule.count("---") == 5 + 6 + 5 + 4
    assert columns[-4:] == ["triton GB/s", "triton_own GB/s", "triton_b16 GB/s", "triton_b64 GB/s"]
    assert cells[:4] == ["tiny", "3", "8", "100"] and all(float(cell) > 0 for cell in cells[5:16])
    assert all(float(cell) >= 0 for cell in cells[16:])  # GB/s: about 0 for so few logits


def test_the_doubled_loss_is_the_stock_loss_on_the_batch_as_many_times_as_there_are_copies():
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    logits, target = torch.randn(3 * 4, 20), torch.tensor([2, 3, loss_kernel.PAD, 5])
    stock = label_smoothed_nll_loss(torch.log_softmax(logits, -1), target.repeat(3), 0.1,
                                    ignore_index=loss_kernel.PAD)[0]
    torch.testing.assert_close(loss_kernel.doubled(logits, target, 0.1), stock)
    with pytest.raises(SystemExit):
        loss_kernel.main(["--copies", "1"])
    assert "triton_own" not in loss_kernel.modes_for("cuda")


def queued_loss(clock, *seconds):
    """A loss that runs the next of ``seconds`` (cycled) on ``clock`` on every call."""
    calls = []

    def loss(logits, target, epsilon):
        clock.run(seconds[len(calls) % len(seconds)])
        calls.append(epsilon)
        return logits.float().sum()
    return loss


def test_a_time_is_the_synchronised_median_of_the_calls_after_two_warm_ups(monkeypatch):
    clock = QueuedClock()
    monkeypatch.setattr(loss_kernel, "time", clock)
    monkeypatch.setattr(torch.cuda, "synchronize", clock.synchronize)
    logits, target = torch.randn(4, 10), torch.tensor([2, 3])
    # two calls that compile, then four whose median is 3 (mean 4)
    assert loss_kernel.timed(queued_loss(clock, 100, 100, 1, 2, 4, 9), logits, target, 0.1, 4, "cuda") == 3


def test_the_ratios_are_to_doubled_and_the_bandwidth_counts_two_reads_and_a_write_of_the_logits(monkeypatch):
    clock = QueuedClock(queued=False)
    monkeypatch.setattr(loss_kernel, "time", clock)
    modes = {"torch": queued_loss(clock, 0.008), "doubled": queued_loss(clock, 0.004),
             "triton": queued_loss(clock, 0.002)}
    row = loss_kernel.measure("toy", 1000, 1000, modes, torch.bfloat16, "cpu", repeats=3)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # 2 x 1000 x 1000 bf16 logits: 4 MB, read twice and written once in 2 ms
    assert cells == ["toy", "2", "1000", "1000", "4", "8.000", "4.000", "2.000", "2.00", "0.50", "6"]


def test_the_torch_and_triton_columns_run_the_kernels_they_name(monkeypatch):
    chosen = []
    monkeypatch.setattr(loss_kernel, "rdrop_loss_from_logits",
                        lambda *args: chosen.append(os.environ["RDROP_KERNEL"]) or (torch.zeros(()),))
    monkeypatch.setenv("RDROP_KERNEL", "auto")
    modes = loss_kernel.modes_for("cuda")
    assert list(modes) == ["doubled", "torch", "triton"]
    for name in ("torch", "triton"):
        modes[name](torch.zeros(4, 10), torch.tensor([2, 3]), 0.1)
    assert chosen == ["torch", "triton"]
