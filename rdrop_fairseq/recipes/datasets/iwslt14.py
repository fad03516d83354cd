"""IWSLT14 German-English as fairseq's ``examples/translation/prepare-iwslt14.sh``
makes it, with sacremoses and subword-nmt in place of the Moses scripts:

1. train: drop the ``<url>``/``<talkid>``/``<keywords>`` lines of
   ``train.tags.de-en.*``, strip ``<title>``/``<description>`` tags, tokenise,
   clean (length 1-175, ratio 1.5), lowercase; every 23rd pair becomes valid;
2. test: the ``<seg>`` text of TED.dev2010, TEDX.dev2012, TED.tst2010-2012, in
   that order, tokenised and lowercased;
3. joint BPE (10,000 merges), ``fairseq-preprocess --joined-dictionary``.

    python -m rdrop_fairseq.recipes.datasets.iwslt14 --out data [--archive de-en.tgz]
"""
from pathlib import Path
from typing import Iterable, Iterator, List

from .. import prepare
from ..download import Archive
from .common import (Layout, bpe_and_binarize, build_parser, check_params, fetch_and_extract,
                     pending, read_pair, run, sgm_pair, tokenize)

NAME = "iwslt14.de-en"
SRC, TGT = "de", "en"
ARCHIVE = Archive("de-en.tgz", ("http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz",))
MEMBERS = ["*/train.tags.de-en.de", "*/train.tags.de-en.en", "*/IWSLT14.TED*.de-en.??.xml"]
TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
             "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")
DROPPED = ("<url>", "<talkid>", "<keywords>")
# Kept by fairseq's recipe (so in the data the paper used); --drop-meta-lines drops them too.
META = ("<speaker>", "<reviewer", "<translator")
STRIPPED = ("<title>", "</title>", "<description>", "</description>")
VALID_EVERY = 23
MAX_LEN = 175


def train_text(lines: Iterable[str], drop_meta: bool = False) -> Iterator[str]:
    """The talk text of a ``train.tags`` file, as the recipe's grep/sed filters leave it."""
    dropped = DROPPED + META if drop_meta else DROPPED
    for line in lines:
        if any(tag in line for tag in dropped):
            continue
        for tag in STRIPPED:
            line = line.replace(tag, "")
        yield line


def split_valid(lines: List[str]):
    """(train, valid): valid takes lines 23, 46, ... (1-based), as ``awk 'NR%23==0'``."""
    valid = lines[VALID_EVERY - 1::VALID_EVERY]
    train = [line for i, line in enumerate(lines, 1) if i % VALID_EVERY]
    return train, valid


def make_train_valid(orig: Path, tmp: Path, workers: int, drop_meta: bool) -> None:
    raw = read_pair([orig / f"train.tags.de-en.{lang}" for lang in (SRC, TGT)])
    sides = [tokenize(list(train_text(lines, drop_meta)), lang, workers)
             for lines, lang in zip(raw, (SRC, TGT))]
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"{orig}/train.tags.de-en.{{de,en}} differ in line count after dropping tag lines")
    src, tgt = prepare.clean_pairs(sides[0], sides[1], ratio=1.5, min_len=1, max_len=MAX_LEN)
    for lang, lines in ((SRC, src), (TGT, tgt)):
        train, valid = split_valid([line.lower() for line in lines])
        prepare.write_lines(tmp / f"valid.{lang}", valid)
        prepare.write_lines(tmp / f"train.{lang}", train)


def make_test(orig: Path, tmp: Path, workers: int) -> None:
    sides = {SRC: [], TGT: []}
    for name in TEST_SETS:
        pair = sgm_pair([orig / f"{name}.de-en.{lang}.xml" for lang in (SRC, TGT)])
        for lang, segments in zip((SRC, TGT), pair):
            sides[lang] += segments
    for lang, lines in sides.items():
        prepare.write_lines(tmp / f"test.{lang}", tokenize(lines, lang, workers, lowercase=True))


def prepare_iwslt14(args) -> Path:
    layout = Layout(args.out, NAME)
    check_params(layout, {"bpe_merges": args.bpe_merges, "drop_meta_lines": args.drop_meta_lines})
    orig = fetch_and_extract(layout, args, [ARCHIVE], {ARCHIVE.name: MEMBERS})[ARCHIVE.name]
    tmp = layout.tmp_dir
    if pending("tokenise, clean and split train/valid",
               [tmp / f"{split}.{lang}" for split in ("train", "valid") for lang in (SRC, TGT)]):
        make_train_valid(orig, tmp, args.workers, args.drop_meta_lines)
    if pending("tokenise test", [tmp / f"test.{lang}" for lang in (SRC, TGT)]):
        make_test(orig, tmp, args.workers)
    return bpe_and_binarize(layout, SRC, TGT, args.bpe_merges, args.workers)


def parser():
    p = build_parser("python -m rdrop_fairseq.recipes.datasets.iwslt14", __doc__, [ARCHIVE])
    p.add_argument("--bpe-merges", type=prepare.positive_int, default=10000,
                   help="joint BPE merge operations (default: 10000)")
    p.add_argument("--drop-meta-lines", action="store_true",
                   help="also drop the <speaker>, <reviewer>, <translator> lines that fairseq's recipe keeps")
    return p


def main(argv=None):
    run(parser(), prepare_iwslt14, argv)


if __name__ == "__main__":
    main()
