"""Corpus slices shared by the end-to-end tests: prepared once per test session.

Without CUDA the fused kernels run under Triton's interpreter, which Triton fixes when it is
first imported: it is chosen here, before any test module is collected and might import Triton."""
import logging
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rdrop_fairseq.recipes.prepare import binarize, prepare_parallel, read_lines, write_lines

CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"
LOHELP_SLICE = {"train": 3000, "valid": 200, "test": 200}
AUSTEN_SLICE = {"train": 600, "valid": 60, "test": 60}
AUSTEN_VOCAB = 1000


def corpus(name: str) -> Path:
    path = CORPORA / name
    if not path.is_dir():
        pytest.fail(f"corpus not found: {path} (it sits beside the checkout in shared/)")
    return path


@pytest.fixture(scope="session")
def lohelp_bin(tmp_path_factory):
    """The first lines of lohelp-de-en, tokenised, joint BPE (3,000 merges), binarised."""
    source = corpus("lohelp-de-en")
    raw = tmp_path_factory.mktemp("lohelp-raw")
    for split, count in LOHELP_SLICE.items():
        for lang in ("de", "en"):
            write_lines(raw / f"{split}.{lang}", read_lines(source / f"{split}.{lang}")[:count])
    return prepare_parallel(raw, tmp_path_factory.mktemp("lohelp-prep"), "de", "en", bpe_merges=3000, workers=2)


@pytest.fixture(scope="session")
def austen_bin(tmp_path_factory):
    """The first lines of austen-lm, binarised with a 1,000-word dictionary."""
    source = corpus("austen-lm")
    root = tmp_path_factory.mktemp("austen")
    text = root / "text"
    text.mkdir()
    # fairseq-preprocess --only-source reads <prefix> itself: text/train, text/valid, text/test.
    for split, count in AUSTEN_SLICE.items():
        write_lines(text / split, read_lines(source / f"{split}.tok.txt")[:count])
    binarize(text, root / "bin", src=None, workers=2, extra=["--nwordssrc", str(AUSTEN_VOCAB)])
    return root / "bin"


@pytest.fixture(autouse=True)
def root_logger_left_as_found():
    """A main run here that calls logging.basicConfig(force=True) (the prepare modules' run, the quickstart)
    leaves the root logger writing to the test's captured stderr, closed once the test ends: every later
    record in that worker would print '--- Logging error ---' into another test's output."""
    root = logging.getLogger()
    handlers, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers and type(handler) is logging.StreamHandler:  # not pytest's own
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def run_main(capsys):
    """``run_main(main, *argv)``: the exit status (0 where ``main`` returned), stdout and stderr of
    a command-line ``main`` called with ``argv`` as strings."""
    def run(main, *argv):
        try:
            main(list(map(str, argv)))
            status = 0
        except SystemExit as exited:
            status = exited.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
