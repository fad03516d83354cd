"""ROUGE of summaries with the ``rouge-score`` package (Google's reimplementation; no Perl,
no files2rouge).

    python -m rdrop_fairseq.recipes.rouge test.hypo --references data/cnn_dm/test.target [--json rouge.json]
    python -m rdrop_fairseq.recipes.rouge generate-test.txt --gpt2-dir data/cnn_dm/gpt2 [--json rouge.json]

The first form scores a file of summaries, one per line (``python -m
rdrop_fairseq.recipes.summarize``'s output), against the reference file of the same
number of lines (the untokenised ``test.target``).  The second reads a ``fairseq-generate``
output on GPT-2 BPE data: its hypotheses (``H-<id>``) and references (``T-<id>``), GPT-2
BPE ids as fairseq-generate prints them without ``--bpe``, decoded with the GPT-2 files
that encoded the data.  Either reports the mean F1 (x100) of ROUGE-1, ROUGE-2, ROUGE-L and
ROUGE-Lsum, with the Porter stemmer as files2rouge uses it.  ROUGE-Lsum, the summary-level
LCS that files2rouge reports as ROUGE-L, needs one sentence per line: the texts are split
into sentences by ``pysbd`` (rule-based, so "U.S." or "Mr." do not end a sentence).
"""
import argparse
import functools
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .bleu import read_generate_output
from .prepare import print_json, read_lines

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# what fairseq-generate may print besides BPE ids: a dictionary's specials, and "<<unk>>", the
# escaped unknown word of its T- lines
FAIRSEQ_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>", "<<unk>>")


@functools.lru_cache(maxsize=1)
def _gpt2_encoder(encoder_json: str, vocab_bpe: str):
    """Read once for the hypotheses and the references (50k merges)."""
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    return get_encoder(encoder_json, vocab_bpe)


def decode(lines: Sequence[str], encoder_json: Path, vocab_bpe: Path) -> List[str]:
    """Text of lines of GPT-2 BPE ids, as fairseq's ``--bpe gpt2`` decodes them."""
    encoder = _gpt2_encoder(str(encoder_json), str(vocab_bpe))
    texts = []
    for number, line in enumerate(lines, 1):
        words = [tok for tok in line.split() if not tok.isdigit() and tok not in FAIRSEQ_SPECIALS]
        if words:
            raise ValueError(f"line {number}: {words[0]!r} is not a GPT-2 BPE id; --gpt2-dir scores the ids that "
                             "fairseq-generate prints without --bpe (for text, use --references)")
        texts.append(encoder.decode([int(tok) for tok in line.split() if tok.isdigit()]).strip())
    return texts


@functools.lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def sentence_lines(text: str) -> str:
    """``text`` with one sentence per line, as ROUGE-Lsum reads it."""
    return "\n".join(s.strip() for s in _segmenter().segment(text.strip()) if s.strip())


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    totals = dict.fromkeys(METRICS, 0.0)
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(sentence_lines(ref), sentence_lines(hyp))
        for name in METRICS:
            totals[name] += scores[name].fmeasure
    return {name: round(100 * total / max(len(hypotheses), 1), 2) for name, total in totals.items()}


def read_pair(hypotheses: Path, references: Path) -> Tuple[List[str], List[str]]:
    """The lines of a summary file and of its reference file, which must have as many, and some."""
    hyps, refs = read_lines(hypotheses), read_lines(references)
    if len(hyps) != len(refs):
        raise ValueError(f"{hypotheses} has {len(hyps)} lines but {references} has {len(refs)}: "
                         "one summary per reference, in the same order")
    if not hyps:
        raise ValueError(f"{hypotheses} is empty: no summaries to score")
    return hyps, refs


def read_generate_pair(generate_output: Path, gpt2_dir: Path) -> Tuple[List[str], List[str]]:
    """The texts of the hypotheses and references of a fairseq-generate output on GPT-2 BPE ids."""
    for name in ("encoder.json", "vocab.bpe"):
        if not (gpt2_dir / name).is_file():
            raise FileNotFoundError(f"--gpt2-dir: no {name} in {gpt2_dir}")
    hyp_ids, ref_ids = read_generate_output(generate_output)  # its errors name the file
    try:
        return (decode(hyp_ids, gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe"),
                decode(ref_ids, gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe"))
    except ValueError as err:
        raise ValueError(f"{generate_output}: {err}") from err


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.recipes.rouge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hypotheses", type=Path,
                        help="summaries, one per line (with --references), or a fairseq-generate output (with "
                             "--gpt2-dir)")
    references = parser.add_mutually_exclusive_group(required=True)
    references.add_argument("--references", type=Path, help="reference summaries, one per line")
    references.add_argument("--gpt2-dir", type=Path,
                            help="for a fairseq-generate output: the folder with encoder.json and vocab.bpe")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args(argv)
    try:
        if args.references is not None:
            hypotheses, references = read_pair(args.hypotheses, args.references)
        else:
            hypotheses, references = read_generate_pair(args.hypotheses, args.gpt2_dir)
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    print_json({"sentences": len(hypotheses), **rouge(hypotheses, references)}, args.json)


if __name__ == "__main__":
    main()
