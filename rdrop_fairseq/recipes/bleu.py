"""BLEU of a ``fairseq-generate`` output, as the paper reports it and as sacreBLEU does.

    python -m rdrop_fairseq.recipes.bleu generate-test.txt --lang de --compound-split [--json bleu.json]

It reads the hypotheses (``H-<id>``) and references (``T-<id>``) of the output,
which ``--remove-bpe`` left Moses-tokenised (or, with ``--raw-text``, untokenised:
sentencepiece data), and reports

* detokenised sacreBLEU with its signature: hypotheses and references are
  Moses-detokenised (sacremoses; raw text is taken as it is) and scored with sacreBLEU's
  own tokeniser.  The references are the ``T-`` lines, that is the preprocessed test
  set (for IWSLT14 lowercased, hence the signature's ``case:lc``; an out-of-vocabulary
  word reads ``<unk>``), not the official reference files: the number is close to, not
  the same as, sacreBLEU against those;
* tokenised BLEU, the number of the paper's tables: BLEU over the whitespace
  tokens (sacreBLEU with ``tokenize='none'``, unsmoothed like fairseq-score), after
  ``--compound-split`` (the ``##AT##-##AT##`` rule of ``get_ende_bleu.sh``: WMT en-de,
  and IWSLT14, which the R-Drop authors also scored with ``compound_split_bleu.sh``) and
  ``--lowercase`` (IWSLT14); with the split, the score without it is reported too
  (``tokenized_bleu_unsplit``, fairseq-generate's own convention).  Raw text is Moses-tokenised
  first, as ``get_ende_bleu.sh`` does, so that the compound split and the tokens are
  those of tokenised text.  On fairseq's WMT14 data, tokenised with ``-a``, a hyphen
  reads ``@-@`` and the rule makes it ``@ ##AT##-##AT## @``: this is fairseq's
  ``compound_split_bleu.sh`` on its generate output, the protocol of fairseq's and the
  R-Drop authors' WMT numbers, and it gives a little more BLEU than
  ``get_ende_bleu.sh`` on text tokenised without ``-a``.
"""
import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .prepare import read_lines

# get_ende_bleu.sh's `s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g`.  Matches do not overlap, as in
# Perl: in "a-b-c" the "b" is used by the first match, so the second hyphen stays.
_COMPOUND = re.compile(r"(\S)-(\S)")
_LINE = re.compile(r"([HT])-(\d+)\t(.*)$")


def split_compounds(line: str) -> str:
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def read_generate_output(path: Path) -> Tuple[List[str], List[str]]:
    """Best hypotheses and references of a fairseq-generate log, in sentence-id order."""
    hyps: Dict[int, str] = {}
    refs: Dict[int, str] = {}
    for line in read_lines(path):
        match = _LINE.match(line)
        if not match:
            continue
        kind, sid, rest = match.group(1), int(match.group(2)), match.group(3)
        if kind == "T":
            refs[sid] = rest
        elif sid not in hyps:  # the first H line of an id is the best beam entry
            hyps[sid] = rest.split("\t", 1)[1] if "\t" in rest else ""
    if not hyps:
        raise ValueError(f"{path}: no H-<id> lines; is it fairseq-generate output?")
    if hyps.keys() != refs.keys():
        raise ValueError(f"{path}: {len(hyps)} hypotheses but {len(refs)} references (T-<id> lines)")
    ids = sorted(hyps)
    return [hyps[i] for i in ids], [refs[i] for i in ids]


def detokenize(lines: Sequence[str], lang: str) -> List[str]:
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    return [detok.detokenize(line.split()) for line in lines]


def moses_tokenize(lines: Sequence[str], lang: str) -> List[str]:
    """tokenizer.perl -l LANG (escaping included), as get_ende_bleu.sh runs it on both sides."""
    from sacremoses import MosesTokenizer

    tok = MosesTokenizer(lang=lang)
    return [tok.tokenize(line, return_str=True) for line in lines]


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str], compound_split: bool = False,
                   lowercase: bool = False):
    import sacrebleu

    if compound_split:
        hyps = [split_compounds(h) for h in hyps]
        refs = [split_compounds(r) for r in refs]
    # No smoothing: the corpus BLEU of fairseq-score and multi-bleu.perl.
    return sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize="none", lowercase=lowercase,
                                 smooth_method="none")


def detokenized_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str, lowercase: bool = False,
                     raw_text: bool = False):
    """(score, signature) of sacreBLEU on Moses-detokenised (or raw) text."""
    from sacrebleu.metrics import BLEU

    if not raw_text:
        hyps, refs = detokenize(hyps, lang), detokenize(refs, lang)
    metric = BLEU(lowercase=lowercase)
    score = metric.corpus_score(list(hyps), [list(refs)])
    return score, str(metric.get_signature())


def score_generate_output(path: Path, lang: str, compound_split: bool = False,
                          lowercase: bool = False, raw_text: bool = False) -> dict:
    hyps, refs = read_generate_output(path)
    tokens = (moses_tokenize(hyps, lang), moses_tokenize(refs, lang)) if raw_text else (hyps, refs)
    tok = tokenized_bleu(*tokens, compound_split, lowercase)
    detok, signature = detokenized_bleu(hyps, refs, lang, lowercase, raw_text)
    result = {
        "sentences": len(hyps),
        "sacrebleu": round(detok.score, 2),
        "sacrebleu_signature": signature,
        "tokenized_bleu": round(tok.score, 2),
        "tokenized_bleu_detail": str(tok),
        "compound_split": compound_split,
        "lowercase": lowercase,
        "raw_text": raw_text,
    }
    if compound_split:
        result["tokenized_bleu_unsplit"] = round(tokenized_bleu(*tokens, False, lowercase).score, 2)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.recipes.bleu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generate_output", type=Path, help="stdout of fairseq-generate --remove-bpe")
    parser.add_argument("--lang", required=True, help="target language, for Moses detokenisation")
    parser.add_argument("--compound-split", action="store_true",
                        help="##AT##-##AT## compound splitting (WMT en-de; IWSLT14 as the R-Drop authors scored it)")
    parser.add_argument("--lowercase", action="store_true",
                        help="case-insensitive BLEU, for text lowercased before training (IWSLT14)")
    parser.add_argument("--raw-text", action="store_true",
                        help="the output is untokenised (sentencepiece data): Moses-tokenise it for tokenised BLEU")
    parser.add_argument("--json", type=Path, help="also write the scores to this file")
    args = parser.parse_args(argv)
    if not args.generate_output.is_file():
        parser.error(f"no such file: {args.generate_output}")
    try:
        result = score_generate_output(args.generate_output, args.lang, args.compound_split, args.lowercase,
                                       args.raw_text)
    except ValueError as err:
        parser.error(str(err))
    print(f"sacreBLEU (detokenized) = {result['sacrebleu']:.2f}  signature: {result['sacrebleu_signature']}")
    print(f"tokenized BLEU{' (compound split)' if args.compound_split else ''} = {result['tokenized_bleu']:.2f}  "
          f"[{result['tokenized_bleu_detail']}]")
    if args.compound_split:
        print(f"tokenized BLEU without the compound split = {result['tokenized_bleu_unsplit']:.2f}")
    if args.json:
        from .prepare import atomic_output

        with atomic_output(args.json) as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
