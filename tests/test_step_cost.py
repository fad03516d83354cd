"""The benchmark's memory probe counts tensor storages exactly."""
import importlib.util
from pathlib import Path

import torch

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
