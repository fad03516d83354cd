"""fairseq main's batching, checkpoint loading and n-gram blocking, as the plugin leaves them."""
import io
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq.data import data_utils

import rdrop_fairseq  # noqa: F401  (applies the compat patches)
from rdrop_fairseq import compat


@pytest.mark.parametrize("max_tokens,max_sentences", [(None, 128), (12000, None), (3000, 100)])
def test_every_sentence_is_batched_when_the_last_batch_is_not_a_multiple_of_8(max_tokens, max_sentences):
    sizes = np.random.RandomState(0).randint(5, 150, size=1431)  # 1431 = 178 * 8 + 7
    indices = np.argsort(sizes, kind="mergesort")
    batches = data_utils.batch_by_size(
        indices, lambda i: sizes[i], num_tokens_vec=sizes[indices], max_tokens=max_tokens,
        max_sentences=max_sentences, required_batch_size_multiple=8,
    )
    assert np.array_equal(np.concatenate(batches), indices)  # each once, in order
    assert all(len(batch) % 8 == 0 for batch in batches[:-1])
    for batch in batches:
        assert len(batch) <= (max_sentences or len(indices))
        assert max_tokens is None or len(batch) * sizes[batch].max() <= max_tokens


def test_a_multiple_of_8_gives_the_same_batches_as_before():
    sizes = np.arange(1, 65)
    indices = np.arange(64)
    batches = data_utils.batch_by_size(indices, lambda i: sizes[i], max_sentences=16, required_batch_size_multiple=8)
    assert [list(batch) for batch in batches] == [list(range(i, i + 16)) for i in range(0, 64, 16)]


class _NotAllowed:
    pass


def test_torch_load_outside_fairseq_keeps_torch_default():
    buffer = io.BytesIO()
    torch.save({"object": _NotAllowed()}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="_NotAllowed"):
        torch.load(buffer)


def test_applying_twice_wraps_once():
    from fairseq import checkpoint_utils, tasks
    from fairseq.data import data_utils, iterators
    from fairseq.distributed import utils as distributed_utils

    from rdrop_fairseq import compat, safe_load

    from fairseq.models.speech_to_text import xm_transformer

    def patched():
        return (checkpoint_utils.torch, xm_transformer.torch, distributed_utils.torch, tasks.setup_task,
                data_utils.batch_by_size, iterators.BackgroundConsumer)

    before = patched()  # rdrop_fairseq's import applied the patches once
    compat.apply()
    assert all(now is then for now, then in zip(patched(), before))
    assert checkpoint_utils.torch.load is safe_load.load
    assert not getattr(tasks.setup_task.__wrapped__, "honours_trust", False)
    assert not getattr(data_utils.batch_by_size.__wrapped__, "keeps_the_last_batch", False)
    assert not getattr(iterators.BackgroundConsumer.__base__, "stops_at_exit", False)


def fairseq_modules_calling(package_dir, is_the_call):
    """Modules of the installed fairseq with a call that ``is_the_call(node.func)`` picks, by their AST."""
    import ast
    from pathlib import Path

    root = Path(package_dir)
    found = set()
    for path in root.rglob("*.py"):
        relative = path.relative_to(root.parent)
        if relative.parts[1] == "examples":  # imported only when a --user-dir points there
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.Call) and is_the_call(node.func) for node in ast.walk(tree)):
            found.add(".".join(relative.with_suffix("").parts))
    return found


def builtin_eval_callers(package_dir):
    import ast

    return fairseq_modules_calling(package_dir, lambda func: isinstance(func, ast.Name) and func.id == "eval")


def test_every_fairseq_module_that_loads_a_checkpoint_loads_it_safely(tmp_path):
    import ast
    import importlib
    import os

    import fairseq

    from rdrop_fairseq import safe_load

    def is_torch_load(func):
        return (isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name)
                and func.value.id == "torch")

    loaders = fairseq_modules_calling(os.path.dirname(fairseq.__file__), is_torch_load)
    # files that are no checkpoint's to name: a data set's statistics, a vocoder named by the
    # data config, product quantization's own state; and the bytes of a peer worker
    data_files = {"fairseq.data.codedataset", "fairseq.models.text_to_speech.vocoder",
                  "fairseq.modules.quantization.pq.em", "fairseq.distributed.utils"}
    assert loaders - data_files == set(compat.CHECKPOINT_LOAD_MODULES)
    crafted = tmp_path / "crafted.pt"
    torch.save({"object": _NotAllowed()}, crafted)
    for name in compat.CHECKPOINT_LOAD_MODULES:
        module = importlib.import_module(name)
        assert module.torch.load is safe_load.load, name
        with pytest.raises(safe_load.UntrustedCheckpointError, match="_NotAllowed"):
            module.torch.load(str(crafted))


def test_every_fairseq_module_that_evaluates_config_strings_evaluates_literals_only():
    import importlib
    import os

    import fairseq

    from rdrop_fairseq import compat, safe_load

    # codedataset evaluates the lines of a dataset's manifest, not a config
    callers = builtin_eval_callers(os.path.dirname(fairseq.__file__)) - {"fairseq.data.codedataset"}
    assert callers == set(compat.CONFIG_EVAL_MODULES)
    for name in compat.CONFIG_EVAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        assert module.eval is safe_load.config_eval, name


def test_block_repeated_ngrams_matches_a_plain_loop():
    rng = random.Random(0)
    for _ in range(300):
        n, step = rng.randint(1, 4), rng.randint(0, 10)
        tokens = torch.tensor([[rng.randrange(4) for _ in range(12)] for _ in range(3)])
        lprobs = compat.block_repeated_ngrams(tokens, torch.zeros(3, 4), n, step)
        for row, scores in zip(tokens.tolist(), lprobs):
            seq = row[:step + 1]
            banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i:i + n - 1] == seq[len(seq) - n + 1:]}
            assert set(torch.nonzero(scores.isinf()).flatten().tolist()) == banned, (n, step, seq)


def test_fairseqs_ngram_blocker_without_its_cuda_extension_blocks_repeats():
    from fairseq.ngram_repeat_block import NGramRepeatBlock

    blocker = NGramRepeatBlock(2, use_extension=False)
    tokens = torch.full((1, 8), 1)  # padding beyond the step, as the generator's buffer holds it
    tokens[0, :4] = torch.tensor([2, 5, 6, 5])  # at step 3, "5 6" was seen: after "5", 6 is banned
    lprobs = blocker(tokens, torch.zeros(1, 9), 1, 1, 3)
    assert lprobs[0].isinf().nonzero().flatten().tolist() == [6]


PREFETCH_AT_EXIT = '''
import atexit, sys, threading, torch

def report():  # registered before the plugin's hook, so it runs after it
    alive = [t for t in threading.enumerate() if type(t).__name__ == "BackgroundConsumer" and t.is_alive()]
    print("prefetch threads alive:", len(alive), flush=True)

atexit.register(report)
if sys.argv[1] == "plugin":
    import rdrop_fairseq
from fairseq.data.iterators import BufferedIterator

class Batches:  # endless, and each batch a torch op that releases the GIL
    def __len__(self):
        return 10 ** 9

    def __iter__(self):
        x = torch.randn(128, 128)
        while True:
            yield (x @ x).sum()

next(BufferedIterator(10 ** 6, Batches()))  # the prefetch thread is still computing at exit
'''


def test_prefetch_threads_are_stopped_before_the_interpreter_shuts_down(tmp_path):
    script = tmp_path / "prefetch_at_exit.py"
    script.write_text(PREFETCH_AT_EXIT)

    def run(mode):
        return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120)

    with_plugin = run("plugin")
    assert with_plugin.returncode == 0, with_plugin.stderr[-2000:]
    assert "prefetch threads alive: 0" in with_plugin.stdout
    stock = run("stock")  # the same without the plugin: what it guards against
    if stock.returncode == 0:
        pytest.skip("this Python does not end daemon threads at shutdown with pthread_exit (3.14+)")
    assert "terminate called" in stock.stderr


def test_fairseqs_tensorboardx_hint_is_not_printed_by_processes_that_import_the_plugin():
    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr

    if "tensorboardX" not in stderr_of("import fairseq.tasks"):
        pytest.skip("this fairseq does not log the hint (or tensorboardX is installed)")
    assert "tensorboardX" not in stderr_of("import rdrop_fairseq, fairseq.tasks")
