"""WMT14 English-German, after fairseq's ``prepare-wmt14en2de.sh`` with sacremoses,
subword-nmt or sentencepiece in place of the Moses scripts:

1. train: Europarl v7 + Common Crawl + News Commentary v12; punctuation
   normalised, non-printing characters replaced by spaces, tokenised with
   aggressive hyphen splitting (``tokenizer.perl -a``);
2. valid = newstest2013, test = newstest2014 (the full ``deen`` set), read from
   the sgm files and tokenised the same way (fairseq instead takes every 100th
   training pair as valid; newstest2013 is the usual choice since Vaswani et al.);
3. joint BPE (32,000 merges, the vocabulary of the ``wmt16_en_de_bpe32k`` data of
   fairseq's scaling-NMT example for the big Transformer; the script's 40,000 with
   ``--bpe-merges 40000``) or, with ``--spm``, a joint sentencepiece BPE model
   trained on the untokenised text;
4. train pairs cleaned after subword splitting (length 1-250, ratio 1.5);
   ``fairseq-preprocess --joined-dictionary``.

    python -m rdrop_fairseq.recipes.datasets.wmt14 --out data [--mirror DIR] [--spm]
"""
from pathlib import Path
from typing import Dict, List, Sequence

from .. import prepare
from ..download import Archive
from .common import (Layout, binarize_pair, build_parser, check_params, fetch_and_extract, pending,
                     read_pair, run, sgm_pair, tokenize)

NAME = "wmt14.en-de"
SRC, TGT = "en", "de"
# https first; fairseq's recipe uses the http addresses.
WWW = ("https://www.statmt.org/", "http://statmt.org/")
DATA = ("https://data.statmt.org/", "http://data.statmt.org/")


def _urls(hosts, path):
    return tuple(host + path for host in hosts)


ARCHIVES = (
    Archive("training-parallel-europarl-v7.tgz", _urls(WWW, "wmt13/training-parallel-europarl-v7.tgz")),
    Archive("training-parallel-commoncrawl.tgz", _urls(WWW, "wmt13/training-parallel-commoncrawl.tgz")),
    Archive("training-parallel-nc-v12.tgz", _urls(DATA, "wmt17/translation-task/training-parallel-nc-v12.tgz")),
    Archive("dev.tgz", _urls(DATA, "wmt17/translation-task/dev.tgz")),
    Archive("test-full.tgz", _urls(WWW, "wmt14/test-full.tgz")),
)
CORPORA = {  # archive -> corpus file prefix inside it
    "training-parallel-europarl-v7.tgz": "europarl-v7.de-en",
    "training-parallel-commoncrawl.tgz": "commoncrawl.de-en",
    "training-parallel-nc-v12.tgz": "news-commentary-v12.de-en",
}
SGM = {  # split -> (archive, {lang: sgm file})
    "valid": ("dev.tgz", {"en": "newstest2013-src.en.sgm", "de": "newstest2013-ref.de.sgm"}),
    "test": ("test-full.tgz", {"en": "newstest2014-deen-src.en.sgm", "de": "newstest2014-deen-ref.de.sgm"}),
}
MAX_LEN = 250


def members() -> Dict[str, List[str]]:
    wanted = {name: [f"*{prefix}.{lang}" for lang in (SRC, TGT)] for name, prefix in CORPORA.items()}
    for archive, files in SGM.values():
        wanted[archive] = [f"*/{name}" for name in files.values()]
    return wanted


def normalize(lines: Sequence[str], lang: str) -> List[str]:
    """``normalize-punctuation.perl -l LANG | remove-non-printing-char.perl``."""
    import regex
    from sacremoses import MosesPunctNormalizer

    normalizer = MosesPunctNormalizer(lang=lang)
    non_printing = regex.compile(r"\p{C}")
    return [non_printing.sub(" ", normalizer.normalize(line)) for line in lines]


def make_text(folders: Dict[str, Path], tmp: Path, workers: int, moses: bool) -> None:
    """``tmp/{train,valid,test}.{en,de}``: tokenised for BPE, plain for sentencepiece."""
    def finish(lines: List[str], lang: str) -> List[str]:
        return tokenize(lines, lang, workers, aggressive_dash_splits=True) if moses else lines

    step = "normalise and tokenise" if moses else "normalise"
    if pending(f"{step} train", [tmp / f"train.{lang}" for lang in (SRC, TGT)]):
        sides = {SRC: [], TGT: []}
        for name, prefix in CORPORA.items():
            pair = read_pair([folders[name] / f"{prefix}.{lang}" for lang in (SRC, TGT)])
            for lang, lines in zip((SRC, TGT), pair):
                sides[lang] += normalize(lines, lang)
        for lang, lines in sides.items():
            prepare.write_lines(tmp / f"train.{lang}", finish(lines, lang))
    for split, (archive, files) in SGM.items():
        dests = [tmp / f"{split}.{lang}" for lang in (SRC, TGT)]
        if pending(f"read {files[SRC]} and {files[TGT]}", dests):
            pair = sgm_pair([folders[archive] / files[lang] for lang in (SRC, TGT)])
            for dest, lines, lang in zip(dests, pair, (SRC, TGT)):
                prepare.write_lines(dest, finish(lines, lang))


def subword_bpe(layout: Layout, merges: int) -> None:
    codes, tmp = layout.text_dir / "code", layout.tmp_dir
    if pending(f"learn joint BPE ({merges} merges)", [codes]):
        prepare.learn_joint_bpe([tmp / f"train.{lang}" for lang in (SRC, TGT)], codes, merges)
    for split in prepare.SPLITS:
        for lang in (SRC, TGT):
            dest = tmp / f"bpe.{split}.{lang}"
            if pending(f"apply BPE to {split}.{lang}", [dest]):
                prepare.apply_bpe(codes, tmp / f"{split}.{lang}", dest)


def sentencepiece(layout: Layout, vocab_size: int, sample: int, workers: int) -> None:
    import sentencepiece as spm

    model, tmp = layout.text_dir / "spm.model", layout.tmp_dir
    if pending(f"train sentencepiece ({vocab_size} pieces)", [model]):
        staging = layout.text_dir / ".spm-staging"
        spm.SentencePieceTrainer.train(
            input=[str(tmp / f"train.{lang}") for lang in (SRC, TGT)], model_prefix=str(staging),
            vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
            input_sentence_size=sample, shuffle_input_sentence=True, num_threads=workers)
        Path(f"{staging}.vocab").replace(layout.text_dir / "spm.vocab")
        Path(f"{staging}.model").replace(model)
    processor = spm.SentencePieceProcessor(model_file=str(model))
    for split in prepare.SPLITS:
        for lang in (SRC, TGT):
            dest = tmp / f"bpe.{split}.{lang}"
            if pending(f"apply sentencepiece to {split}.{lang}", [dest]):
                pieces = processor.encode(prepare.read_lines(tmp / f"{split}.{lang}"), out_type=str)
                prepare.write_lines(dest, (" ".join(p) for p in pieces))


def finish_splits(layout: Layout) -> None:
    """Clean the train pairs; valid and test stay whole."""
    tmp, text = layout.tmp_dir, layout.text_dir
    if pending("clean train pairs (length 1-250, ratio 1.5)", [text / f"train.{lang}" for lang in (SRC, TGT)]):
        src, tgt = prepare.clean_pairs(*read_pair([tmp / f"bpe.train.{lang}" for lang in (SRC, TGT)]),
                                       ratio=1.5, min_len=1, max_len=MAX_LEN)
        prepare.write_lines(text / f"train.{SRC}", src)
        prepare.write_lines(text / f"train.{TGT}", tgt)
    for split in ("valid", "test"):
        for lang in (SRC, TGT):
            dest = text / f"{split}.{lang}"
            if pending(f"copy {split}.{lang}", [dest]):
                prepare.write_lines(dest, prepare.read_lines(tmp / f"bpe.{split}.{lang}"))


def prepare_wmt14(args) -> Path:
    layout = Layout(args.out, NAME)
    params = ({"spm_vocab_size": args.spm_vocab_size, "spm_sample": args.spm_sample} if args.spm
              else {"bpe_merges": args.bpe_merges})
    check_params(layout, params)
    folders = fetch_and_extract(layout, args, ARCHIVES, members())
    make_text(folders, layout.tmp_dir, args.workers, moses=not args.spm)
    if args.spm:
        sentencepiece(layout, args.spm_vocab_size, args.spm_sample, args.workers)
    else:
        subword_bpe(layout, args.bpe_merges)
    finish_splits(layout)
    return binarize_pair(layout, SRC, TGT, args.workers)


def parser():
    p = build_parser("python -m rdrop_fairseq.recipes.datasets.wmt14", __doc__, ARCHIVES)
    p.add_argument("--bpe-merges", type=prepare.positive_int, default=32000,
                   help="joint BPE merge operations (default: 32000)")
    p.add_argument("--spm", action="store_true", help="sentencepiece instead of Moses tokenisation + BPE")
    p.add_argument("--spm-vocab-size", type=prepare.positive_int, default=32000, help="with --spm (default: 32000)")
    p.add_argument("--spm-sample", type=prepare.positive_int, default=10_000_000,
                   help="with --spm: sentences sampled to train the model (default: 10M)")
    return p


def main(argv=None):
    run(parser(), prepare_wmt14, argv)


if __name__ == "__main__":
    main()
