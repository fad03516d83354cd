"""GPT-2 byte-level BPE, as fairseq's RoBERTa and BART recipes apply it before
``fairseq-preprocess --srcdict dict.txt`` (``examples/roberta/multiprocessing_bpe_encoder.py
--keep-empty``), in Python with fairseq's own ``gpt2_bpe_utils``.

The three files come through :func:`rdrop_fairseq.recipes.download.fetch` like the corpora
(``--archive``, ``--mirror``, cache, URL).  ``encoder.json`` and ``vocab.bpe`` are checked
against the sha256 that tiktoken publishes for OpenAI's copies (fetched from there
first; fairseq's copies are the fallback).  No hash is published for fairseq's
``dict.txt``: it is fetched unchecked unless ``--hash dict.txt=sha256:...`` is given.
"""
import argparse
import multiprocessing
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from .. import prepare
from ..download import Archive, fetch

FAIRSEQ_GPT2 = "https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe"
OPENAI_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
ENCODER_JSON = Archive("encoder.json", (f"{OPENAI_GPT2}/encoder.json", f"{FAIRSEQ_GPT2}/encoder.json"),
                       known_hash="sha256:196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
VOCAB_BPE = Archive("vocab.bpe", (f"{OPENAI_GPT2}/vocab.bpe", f"{FAIRSEQ_GPT2}/vocab.bpe"),
                    known_hash="sha256:1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")
DICT_TXT = Archive("dict.txt", (f"{FAIRSEQ_GPT2}/dict.txt",))
ARCHIVES = (ENCODER_JSON, VOCAB_BPE, DICT_TXT)
ENCODE_CHUNK = 5000

_encoder = None


def fetch_files(archives: Sequence[Archive], local: Dict[str, Optional[Path]], cache: Path,
                mirror: Optional[Path]) -> Dict[str, Path]:
    """``{name: path}`` of the checked GPT-2 files among ``archives``."""
    return {a.name: fetch(a, cache, local=local.get(a.name), mirror=mirror)
            for a in archives if a.name in {b.name for b in ARCHIVES}}


def without_gpt2_files(args: argparse.Namespace, names: Iterable[str]) -> argparse.Namespace:
    """``args`` with only the ``--archive`` and ``--hash`` entries of ``names``, for
    ``common.fetch_and_extract``, which refuses names it does not know."""
    names = set(names)
    return argparse.Namespace(**{**vars(args), "archive": [p for p in args.archive if p.name in names],
                                 "hash": [h for h in args.hash if h.partition("=")[0] in names]})


def _init_encoder(encoder_json: str, vocab_bpe: str) -> None:
    global _encoder
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    _encoder = get_encoder(encoder_json, vocab_bpe)


def _encode_chunk(lines: List[str]) -> List[str]:
    # As multiprocessing_bpe_encoder.py: strip, and an empty line stays empty (--keep-empty).
    return [" ".join(map(str, _encoder.encode(line.strip()))) for line in lines]


def encode_lines(lines: Sequence[str], files: Dict[str, Path], workers: int = 1) -> List[str]:
    """The BPE ids of each line, space-separated."""
    init = (str(files[ENCODER_JSON.name]), str(files[VOCAB_BPE.name]))
    chunks = [lines[i:i + ENCODE_CHUNK] for i in range(0, len(lines), ENCODE_CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        _init_encoder(*init)
        return [line for chunk in chunks for line in _encode_chunk(chunk)]
    with multiprocessing.get_context("spawn").Pool(workers, _init_encoder, init) as pool:
        return [line for chunk in pool.imap(_encode_chunk, chunks) for line in chunk]


def write_encoded(dest: Path, lines: Iterable[str], files: Dict[str, Path], workers: int = 1) -> None:
    prepare.write_lines(dest, encode_lines(list(lines), files, workers))
