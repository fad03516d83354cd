"""benchmarks/step_cost.py: its memory probe counts tensor storages exactly, each mode steps the criterion it
names, and on CUDA (a stand-in here) its table holds synchronised median times and reset peaks against doubled."""
import importlib.util
import os
from pathlib import Path

import torch
from fake_cuda import FakeGpu

SPEC = importlib.util.spec_from_file_location(
    "step_cost", Path(__file__).resolve().parents[1] / "benchmarks" / "step_cost.py"
)
step_cost = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(step_cost)

MB = 1_000_000


def test_tensor_peak_follows_creation_release_and_saved_tensors():
    older = torch.zeros(250_000)  # made before: neither it nor in-place work on it counts
    with step_cost.TensorPeak() as peak:
        a = torch.randn(1000, 1000)  # 4 MB
        b = a * 2  # 8 MB live
        view = b[:10]  # a view: no new storage
        older.add_(1.0)
        del a
        c = torch.randn(500, 1000)  # 6 MB live
    assert peak.peak == 8 * MB and peak.live == 6 * MB
    del b, view, c
    assert peak.live == 0

    x = torch.randn(1000, 1000, requires_grad=True)
    with step_cost.TensorPeak() as peak:
        y = torch.log_softmax(x, -1)  # its output is saved for backward
        loss = (y * 2).sum()  # the product is freed at once
        after_forward = peak.live
        loss.backward()
    assert after_forward == 4 * MB + 4  # y and the scalar loss
    assert peak.live == 8 * MB + 4  # y, loss and x.grad
    assert peak.peak >= 12 * MB  # backward holds y, x.grad and one more full gradient


def test_each_shape_gets_dictionaries_of_its_own_vocabulary(tmp_path, monkeypatch):
    """``--shape all`` once reused the first shape's dictionaries for the next, larger vocabulary."""
    tiny = "--arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 16 " \
           "--decoder-embed-dim 16 --encoder-ffn-embed-dim 16 --decoder-ffn-embed-dim 16 " \
           "--encoder-attention-heads 2 --decoder-attention-heads 2 --share-all-embeddings"
    shapes = {name: dict(task="translation", vocab=vocab, batch=2, length=4, smoothing=0.1, model=tiny)
              for name, vocab in (("small", 40), ("large", 90))}
    monkeypatch.setattr(step_cost, "SHAPES", shapes)
    for name, spec in shapes.items():
        model, _, sample, _ = step_cost.build(name, "doubled", "cpu", torch.float32, tmp_path)
        assert model.encoder.embed_tokens.num_embeddings >= spec["vocab"]
        assert sample["target"].max() < model.encoder.embed_tokens.num_embeddings


class FakeModel:
    """One mode's step: the first of each built model compiles (slow, with a large workspace), then each
    step takes the next of its seconds (cycled) and its peak bytes."""

    def __init__(self, gpu, seconds, peak):
        self.gpu, self.seconds, self.peak, self.steps = gpu, seconds, peak, 0

    def zero_grad(self, set_to_none=True):
        pass

    def step(self):
        first = self.steps == 0
        seconds = 100.0 if first else self.seconds[(self.steps - 1) % len(self.seconds)]
        self.steps += 1
        self.gpu.run(seconds, self.peak + (10_000 * MiB if first else 0))


MiB = 2**20


def test_on_cuda_the_table_has_median_synchronised_times_and_reset_peaks_against_the_doubled_batch(
        monkeypatch, capsys):
    seconds = {"plugin": [1, 4, 5, 6], "doubled": [1, 2, 4, 9], "fairseq": [6], "single": [1.5]}  # medians 4.5, 3, 6, 1.5
    peaks = {"plugin": 200 * MiB, "doubled": 400 * MiB, "fairseq": 800 * MiB, "single": 100 * MiB}
    gpu, order = FakeGpu(resident=50 * MiB), []
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, getattr(gpu, name))
    monkeypatch.setattr(step_cost, "time", type("Clock", (), {"perf_counter": staticmethod(gpu.perf_counter)}))

    def build(shape, mode, device, dtype, workdir):
        model = FakeModel(gpu, seconds[mode], peaks[mode])
        model.mode = mode
        return model, None, None, None

    def step(model, criterion, sample, route):
        order.append(model.mode)
        model.step()

    monkeypatch.setattr(step_cost, "build", build)
    monkeypatch.setattr(step_cost, "step", step)
    args = type("Args", (), dict(modes=list(seconds), device="cuda", dtype="bf16", repeats=4))
    step_cost.report("iwslt", step_cost.run_shape("iwslt", args, torch.bfloat16, None), args)

    # one warm-up step each, then the timed steps interleaved, so that drift hits every mode alike
    assert order[:5 * 4] == list(seconds) * 5
    rows = {cells[0]: cells[1:] for cells in ([cell.strip() for cell in line.strip("|").split("|")]
                                              for line in capsys.readouterr().out.splitlines()
                                              if line.startswith("| ") and not line.startswith("| mode"))}
    assert rows == {"plugin": ["4.5000", "1.500", "200", "0.500"], "doubled": ["3.0000", "1.000", "400", "1.000"],
                    "fairseq": ["6.0000", "2.000", "800", "2.000"], "single": ["1.5000", "0.500", "100", "0.250"]}


def test_each_mode_steps_its_criterion_on_its_batch_in_the_chosen_precision(tmp_path, monkeypatch):
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
    from fairseq.criterions.label_smoothed_cross_entropy_with_rdrop import RdropLabelSmoothedCrossEntropyCriterion
    from rdrop_fairseq.criterions import rdrop_criterion
    from rdrop_fairseq.criterions.rdrop_label_smoothed_cross_entropy import RDropLabelSmoothedCrossEntropyCriterion

    tiny = "--arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 16 " \
           "--decoder-embed-dim 16 --encoder-ffn-embed-dim 16 --decoder-ffn-embed-dim 16 " \
           "--encoder-attention-heads 2 --decoder-attention-heads 2 --share-all-embeddings --dropout 0.3"
    monkeypatch.setattr(step_cost, "SHAPES", {"tiny": dict(task="translation", vocab=40, batch=3, length=4,
                                                           smoothing=0.1, model=tiny)})
    monkeypatch.delenv("RDROP_KERNEL", raising=False)
    losses = []  # the plugin's loss function of each step, and the kernel choice it runs under

    def spy(name):
        real = getattr(rdrop_criterion, name)

        def loss_fn(*args, **kwargs):
            losses.append((name, os.environ.get("RDROP_KERNEL", "auto")))
            return real(*args, **kwargs)
        return loss_fn

    for name in ("rdrop_loss", "rdrop_loss_from_logits"):
        monkeypatch.setattr(rdrop_criterion, name, spy(name))
    expected = {  # criterion, alpha, copies of the batch in the sample, loss function, kernel
        "doubled": (LabelSmoothedCrossEntropyCriterion, None, 2, None),
        "plugin": (RDropLabelSmoothedCrossEntropyCriterion, 5, 1, ("rdrop_loss_from_logits", "auto")),
        "plugin_torch": (RDropLabelSmoothedCrossEntropyCriterion, 5, 1, ("rdrop_loss_from_logits", "torch")),
        "plugin_lprobs": (RDropLabelSmoothedCrossEntropyCriterion, 5, 1, ("rdrop_loss", "auto")),
        "fairseq": (RdropLabelSmoothedCrossEntropyCriterion, 5, 1, None),
        "single": (LabelSmoothedCrossEntropyCriterion, None, 1, None),
    }
    once = step_cost.make_sample("tiny", 1, "cpu")
    for mode, (cls, alpha, repeat, loss_fn) in expected.items():
        model, criterion, sample, route = step_cost.build("tiny", mode, "cpu", torch.bfloat16, tmp_path)
        assert type(criterion) is cls and getattr(criterion, "rdrop_alpha", None) == alpha, mode
        assert torch.equal(sample["target"], once["target"].repeat(repeat, 1)), mode
        del losses[:]
        step_cost.step(model, criterion, sample, route)
        assert losses == ([loss_fn] if loss_fn else []), mode
        assert {p.dtype for p in model.parameters()} == {p.grad.dtype for p in model.parameters()} == {torch.bfloat16}
    assert "RDROP_KERNEL" not in os.environ
