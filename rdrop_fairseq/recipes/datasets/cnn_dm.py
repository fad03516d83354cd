"""CNN/DailyMail for BART fine-tuning, in the format of fairseq's
``examples/bart/README.summarization.md``: ``{train,val,test}.{source,target}``, one
non-tokenised, cased article or summary per line, GPT-2 BPE-encoded and binarised
with ``fairseq-preprocess --joined-dictionary --srcdict dict.txt`` (one dictionary, GPT-2's).

The stories come from the ``cnn_stories.tgz`` and ``dailymail_stories.tgz`` of
Hermann et al. (2015), split by abisee/cnn-dailymail's URL lists (a story file is
named by the SHA1 of its URL).  As the non-tokenising fork of abisee's
``make_datafiles.py`` that the README points to: a line without an end mark gets
" .", the article is its lines joined by spaces, the summary its ``@highlight``
lines joined by spaces.

    python -m rdrop_fairseq.recipes.datasets.cnn_dm --out data [--archive cnn_stories.tgz ...] [--mirror DIR]

Output: ``OUT/cnn_dm/{train,val,test}.{source,target}``, the GPT-2 files that encoded them
in ``OUT/cnn_dm/gpt2/`` and ``OUT/data-bin/cnn_dm``.
No hash is published for these files: the tarballs are checked by reading them to
the end, or against ``--hash NAME=sha256:...``.
"""
import hashlib
from pathlib import Path
from typing import List, Tuple

from .. import prepare
from ..download import Archive, fetch, parse_hash_overrides, with_hashes
from . import gpt2
from .common import Layout, build_parser, check_params, fetch_and_extract, pending, resolve_archives, run

NAME = "cnn_dm"
STORIES_URL = "https://huggingface.co/datasets/cnn_dailymail/resolve/11343c3752184397d56efc19a8a7cceb68089318/data"
URL_LISTS_URL = "https://raw.githubusercontent.com/abisee/cnn-dailymail/master/url_lists"
STORY_ARCHIVES = [Archive(f"{site}_stories.tgz", (f"{STORIES_URL}/{site}_stories.tgz",))
                  for site in ("cnn", "dailymail")]
SPLITS = {"train": "train", "val": "valid", "test": "test"}  # recipe name -> fairseq name
URL_LISTS = [Archive(f"all_{split}.txt", (f"{URL_LISTS_URL}/all_{split}.txt",)) for split in SPLITS]
ARCHIVES = STORY_ARCHIVES + URL_LISTS + list(gpt2.ARCHIVES)
# abisee's END_TOKENS: a line ending otherwise is missing its period.
END_TOKENS = (".", "!", "?", "...", "'", "`", '"', "\u2019", "\u201d", ")")


def fix_missing_period(line: str) -> str:
    if "@highlight" in line or not line or line.endswith(END_TOKENS):
        return line
    return line + " ."


def article_and_summary(story: str) -> Tuple[str, str]:
    # "\n" only, as a file is read line by line; str.splitlines also splits at U+2028, \x0c, ...
    lines = [fix_missing_period(line.strip()) for line in story.split("\n")]
    article, highlights, next_is_highlight = [], [], False
    for line in lines:
        if not line:
            continue
        if line.startswith("@highlight"):
            next_is_highlight = True
        elif next_is_highlight:
            highlights.append(line)
        else:
            article.append(line)
    return " ".join(article), " ".join(highlights)


def story_name(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest() + ".story"


def write_split(urls: List[str], folders: List[Path], text_dir: Path, split: str) -> None:
    articles, summaries = [], []
    for url in urls:
        paths = [folder / story_name(url) for folder in folders if (folder / story_name(url)).is_file()]
        if not paths:
            raise FileNotFoundError(f"all_{split}.txt: no story {story_name(url)} for {url} in "
                                    f"{' or '.join(map(str, folders))}")
        article, summary = article_and_summary(paths[0].read_text(encoding="utf-8"))
        articles.append(article)
        summaries.append(summary)
    prepare.write_lines(text_dir / f"{split}.target", summaries)
    prepare.write_lines(text_dir / f"{split}.source", articles)


def prepare_cnn_dm(args) -> Path:
    layout = Layout(args.out, NAME)
    archives = with_hashes(ARCHIVES, parse_hash_overrides(args.hash))
    local = resolve_archives(args, archives)
    check_params(layout, {})
    cache = args.download_dir or args.out / "downloads"
    story_dirs = fetch_and_extract(layout, gpt2.without_gpt2_files(args, [a.name for a in STORY_ARCHIVES]),
                                   STORY_ARCHIVES,
                                   {a.name: [f"{a.name.split('_')[0]}/stories/*.story"] for a in STORY_ARCHIVES})
    gpt2_files = gpt2.fetch_files(archives, local, cache, args.mirror)
    for name in (gpt2.ENCODER_JSON.name, gpt2.VOCAB_BPE.name):  # evaluate-cnndm.sh decodes with them
        if pending(f"copy {name}", [layout.text_dir / "gpt2" / name]):
            with prepare.atomic_output(layout.text_dir / "gpt2" / name, "wb") as out:
                out.write(gpt2_files[name].read_bytes())
    for split in SPLITS:
        if pending(f"{split}.source/.target from the stories", [layout.text_dir / f"{split}.{side}"
                                                                for side in ("source", "target")]):
            url_list = next(a for a in archives if a.name == f"all_{split}.txt")
            urls = [u for u in prepare.read_lines(fetch(url_list, cache, local[url_list.name], args.mirror)) if u]
            write_split(urls, list(story_dirs.values()), layout.text_dir, split)
    bpe = layout.text_dir / "bpe"
    for split, fairseq_split in SPLITS.items():
        for side in ("source", "target"):
            dest = bpe / f"{fairseq_split}.{side}"
            if pending(f"GPT-2 BPE {split}.{side}", [dest]):
                gpt2.write_encoded(dest, prepare.read_lines(layout.text_dir / f"{split}.{side}"), gpt2_files,
                                   args.workers)
    if pending("fairseq-preprocess --srcdict dict.txt", [layout.bin_dir]):
        prepare.binarize(bpe, layout.bin_dir, "source", "target", workers=args.workers,
                         extra=["--srcdict", str(gpt2_files["dict.txt"])])
    return layout.bin_dir


def parser():
    return build_parser("python -m rdrop_fairseq.recipes.datasets.cnn_dm", __doc__, ARCHIVES)


def main(argv=None):
    run(parser(), prepare_cnn_dm, argv)


if __name__ == "__main__":
    main()
