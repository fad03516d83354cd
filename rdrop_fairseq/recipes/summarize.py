"""Summaries of articles by a fine-tuned BART, decoded by fairseq's ``BARTHubInterface``
(``BARTModel.from_pretrained(...).sample``), as fairseq's ``examples/bart/summarize.py`` and
the R-Drop authors decode CNN/DailyMail.

    python -m rdrop_fairseq.recipes.summarize --checkpoint run/checkpoint_best.pt \\
        --data data/data-bin/cnn_dm --gpt2-dir data/cnn_dm/gpt2 \\
        --source data/cnn_dm/test.source --out run/test.hypo [--batch-size 32] [--cpu | --fp16]

Each line of ``--source`` (an untokenised article, stripped of surrounding white space)
goes through the hub interface: ``encode`` makes it ``<s>`` + its GPT-2 BPE tokens
(the files of ``--gpt2-dir``; nothing is downloaded) + ``</s>``, the BPE tokens cut to
the model's maximum positions minus those two; ``generate`` forces ``<s>`` as the first
output token (``prefix_tokens``), so ``--min-len`` and ``--max-len-b`` count it; ``decode``
drops it and turns the BPE back into text.  The defaults are summarize.py's CNN/DM
settings: beam 4, length penalty 2.0, max_len_b 140, min_len 55, no_repeat_ngram_size 3.
Articles go to the model ``--batch-size`` at a time (summarize.py's ``--bsz``).

``--out`` gets one summary per line, in the order of the articles (a line break inside a
summary becomes a space), written under a temporary ``.part`` name and renamed when all
are done.  ``--data`` is the binarised data the model was fine-tuned on: the task reads
its dictionaries.  The checkpoint may come from this plugin's ``rdrop_translation``
task or fairseq's ``translation``; it is loaded with rdrop_fairseq's allow-list
(:mod:`rdrop_fairseq.safe_load`), which refuses a file that would run code unless
``RDROP_TRUST_CHECKPOINTS=1``.
"""
import argparse
import os
import pickle
import sys
from pathlib import Path
from typing import Iterable, Iterator, List, Sequence

# rdrop_fairseq, imported before this module, registers the R-Drop tasks and criteria, and its
# rdrop_fairseq.compat routes fairseq's checkpoint loads (from_pretrained's too) through
# rdrop_fairseq.safe_load.
import rdrop_fairseq  # noqa: F401
from . import prepare

# examples/bart/summarize.py's CNN_KWARGS.
CNN_DM = {"beam": 4, "lenpen": 2.0, "max_len_b": 140, "min_len": 55, "no_repeat_ngram_size": 3}


def load_bart(checkpoint: Path, data: Path, gpt2_dir: Path, batch_size: int = 32, cpu: bool = False,
              fp16: bool = False):
    """The ``BARTHubInterface`` of ``checkpoint``, on the GPU unless ``cpu`` (or none is there),
    in half precision with ``fp16``, in eval mode, batching ``batch_size`` articles at a time."""
    import torch
    from fairseq.models.bart import BARTModel

    checkpoint, data, gpt2_dir = Path(checkpoint), Path(data), Path(gpt2_dir)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file: {checkpoint}")
    if not data.is_dir():
        raise FileNotFoundError(f"--data: no such folder: {data}")
    for name in ("encoder.json", "vocab.bpe"):
        if not (gpt2_dir / name).is_file():
            raise FileNotFoundError(f"--gpt2-dir: no {name} in {gpt2_dir}")
    if os.pathsep in checkpoint.name:  # from_pretrained would read it as a list of checkpoints
        raise ValueError(f"--checkpoint: a file name with '{os.pathsep}' cannot be loaded: {checkpoint}")
    use_cuda = not cpu and torch.cuda.is_available()
    if fp16 and not use_cuda:
        raise ValueError("--fp16 needs a CUDA device (and no --cpu)")
    # Absolute paths: from_pretrained reads a name it knows (bart.large, ...) as a download, and a data
    # path starting with "." as relative to the model's folder.
    checkpoint = checkpoint.resolve()
    bart = BARTModel.from_pretrained(
        str(checkpoint.parent), checkpoint_file=checkpoint.name, data_name_or_path=str(data.resolve()),
        bpe="gpt2", gpt2_encoder_json=str((gpt2_dir / "encoder.json").resolve()),
        gpt2_vocab_bpe=str((gpt2_dir / "vocab.bpe").resolve()))
    # The hub interface batches by the checkpoint's training --max-tokens / --batch-size: take ours.
    bart.cfg.dataset.max_tokens = None
    bart.cfg.dataset.batch_size = batch_size
    bart.eval()
    if use_cuda:
        bart.cuda()
        if fp16:
            bart.half()
    return bart


def one_line(summary) -> str:
    if isinstance(summary, list):  # decode splits at a double </s>, which generation does not produce
        summary = " ".join(summary)
    return summary.replace("\r", " ").replace("\n", " ")


def summarize(bart, articles: Sequence[str], batch_size: int = 32, **generation) -> Iterator[List[str]]:
    """The summaries of ``articles``, one list per batch of ``batch_size``, in order.
    ``generation``: fairseq generation options (beam, lenpen, max_len_b, min_len, ...)."""
    import torch

    with torch.no_grad():
        for start in range(0, len(articles), batch_size):
            batch = [article.strip() for article in articles[start:start + batch_size]]
            yield [one_line(summary) for summary in bart.sample(batch, **generation)]


def write_summaries(out: Path, batches: Iterable[List[str]], total: int) -> int:
    done = 0
    with prepare.atomic_output(out) as handle:
        for summaries in batches:
            handle.writelines(summary + "\n" for summary in summaries)
            done += len(summaries)
            print(f"summarised {done}/{total}", file=sys.stderr, flush=True)
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.recipes.summarize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the fine-tuned model")
    parser.add_argument("--data", type=Path, required=True, help="its binarised data (dict.source.txt, ...)")
    parser.add_argument("--gpt2-dir", type=Path, required=True, help="encoder.json and vocab.bpe that encoded it")
    parser.add_argument("--source", type=Path, required=True, help="articles, one per line")
    parser.add_argument("--out", type=Path, required=True, help="where the summaries go, one per line")
    parser.add_argument("--batch-size", type=prepare.positive_int, default=32, help="articles per batch (default 32)")
    parser.add_argument("--beam", type=prepare.positive_int, default=CNN_DM["beam"])
    parser.add_argument("--lenpen", type=float, default=CNN_DM["lenpen"])
    parser.add_argument("--max-len-b", type=prepare.positive_int, default=CNN_DM["max_len_b"])
    parser.add_argument("--min-len", type=prepare.positive_int, default=CNN_DM["min_len"])
    parser.add_argument("--no-repeat-ngram-size", type=prepare.non_negative_int,
                        default=CNN_DM["no_repeat_ngram_size"])
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is present")
    device.add_argument("--fp16", action="store_true", help="half precision on the GPU (summarize.py's)")
    args = parser.parse_args(argv)
    try:
        if not args.source.is_file():
            raise FileNotFoundError(f"--source: no such file: {args.source}")
        articles = prepare.read_lines(args.source)
        bart = load_bart(args.checkpoint, args.data, args.gpt2_dir, args.batch_size, cpu=args.cpu, fp16=args.fp16)
        generation = {"beam": args.beam, "lenpen": args.lenpen, "max_len_b": args.max_len_b,
                      "min_len": args.min_len, "no_repeat_ngram_size": args.no_repeat_ngram_size}
        done = write_summaries(args.out, summarize(bart, articles, args.batch_size, **generation), len(articles))
    except (OSError, ValueError, pickle.UnpicklingError) as err:  # UntrustedCheckpointError is one
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"{done} summaries of {args.source} by {args.checkpoint} -> {args.out}")


if __name__ == "__main__":
    main()
