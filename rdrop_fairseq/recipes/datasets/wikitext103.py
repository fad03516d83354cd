"""WikiText-103 for language modelling, as fairseq's
``examples/language_model`` prepares it: the word-level ``wiki.{train,valid,test}.tokens``
binarised with ``fairseq-preprocess --only-source``.

The original S3 address now answers 403; the archive is fetched from Stephen
Merity's mirror first, and its md5 (the one torchtext and others publish for
``wikitext-103-v1.zip``) is checked.

    python -m rdrop_fairseq.recipes.datasets.wikitext103 --out data [--archive wikitext-103-v1.zip]
"""
import tempfile
from pathlib import Path

from .. import prepare
from ..download import Archive
from .common import Layout, build_parser, check_params, fetch_and_extract, pending, run

NAME = "wikitext-103"
ARCHIVE = Archive(
    "wikitext-103-v1.zip",
    ("https://wikitext.smerity.com/wikitext-103-v1.zip",
     "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"),
    known_hash="md5:9ddaacaf6af0710eda8c456decff7832",
)
MEMBERS = [f"wikitext-103/wiki.{split}.tokens" for split in prepare.SPLITS]


def prepare_wikitext103(args) -> Path:
    layout = Layout(args.out, NAME)
    check_params(layout, {})
    orig = fetch_and_extract(layout, args, [ARCHIVE], {ARCHIVE.name: MEMBERS})[ARCHIVE.name]
    if pending("fairseq-preprocess --only-source", [layout.bin_dir]):
        # fairseq-preprocess reads PREFIX itself for --only-source; give it the names it wants.
        with tempfile.TemporaryDirectory(dir=layout.text_dir) as prefixes:
            for split in prepare.SPLITS:
                (Path(prefixes) / split).symlink_to((orig / f"wiki.{split}.tokens").resolve())
            prepare.binarize(Path(prefixes), layout.bin_dir, src=None, tgt=None, workers=args.workers)
    return layout.bin_dir


def parser():
    return build_parser("python -m rdrop_fairseq.recipes.datasets.wikitext103", __doc__, [ARCHIVE])


def main(argv=None):
    run(parser(), prepare_wikitext103, argv)


if __name__ == "__main__":
    main()
