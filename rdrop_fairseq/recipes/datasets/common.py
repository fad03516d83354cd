"""What the corpus modules share: the command line, the output layout, finding
and unpacking archives, parallel tokenisation and step skipping.

A step is skipped when all its outputs exist; every output is written under a
temporary name and renamed when complete (``prepare.atomic_output``,
``download.extract``, ``prepare.binarize``), so an output that exists is whole.
"""
import argparse
import json
import logging
import multiprocessing
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from .. import prepare
from ..download import (MIRROR_ENV, Archive, CorruptArchiveError, DownloadError, check_local_archive, extract,
                        fetch, parse_hash_overrides, remove_if_cached, with_hashes)

logger = logging.getLogger("rdrop_fairseq.recipes.datasets")

TOKENIZE_CHUNK = 20000
SEG = re.compile(r"<seg id=\"?[^\">]*\"?>\s*(.*?)\s*</seg>")


@dataclass(frozen=True)
class Layout:
    """``OUT/<name>/`` for text, ``OUT/data-bin/<name>/`` for fairseq's binaries."""
    out: Path
    name: str

    @property
    def text_dir(self) -> Path:
        return self.out / self.name

    @property
    def orig_dir(self) -> Path:
        return self.text_dir / "orig"

    @property
    def tmp_dir(self) -> Path:
        return self.text_dir / "tmp"

    @property
    def bin_dir(self) -> Path:
        return self.out / "data-bin" / self.name


def path_given(text: str) -> Path:
    """An argparse type: a path, not the empty string (which Path reads as the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("needs a path, not an empty string")
    return Path(text)


PROG_ENV = "RDROP_SCRIPT_PROG"  # set by scripts/prepare-*.sh: the command the user typed


def build_parser(prog: str, description: str, archives: Sequence[Archive]) -> argparse.ArgumentParser:
    names = ", ".join(a.name for a in archives)
    parser = argparse.ArgumentParser(prog=os.environ.get(PROG_ENV) or prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=path_given, default=Path("data"),
                        help="output root: text in OUT/<name>/, binaries in OUT/data-bin/<name>/ (default: ./data)")
    parser.add_argument("--archive", type=path_given, action="append", default=[], metavar="PATH",
                        help=f"an already downloaded archive ({names}); repeat for several")
    parser.add_argument("--mirror", type=Path, default=os.environ.get(MIRROR_ENV) or None, metavar="DIR",
                        help=f"a folder holding the archives under their upstream names (default: ${MIRROR_ENV})")
    parser.add_argument("--download-dir", type=path_given, metavar="DIR",
                        help="where downloads are kept (default: OUT/downloads)")
    parser.add_argument("--hash", action="append", default=[], metavar="NAME=ALG:HEX",
                        help="expected hash of an archive, e.g. de-en.tgz=sha256:..., or NAME=none to skip the check")
    parser.add_argument("--workers", type=prepare.positive_int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="processes for tokenisation and fairseq-preprocess")
    parser.set_defaults(known_archives=tuple(archives))
    return parser


def resolve_archives(args: argparse.Namespace, archives: Sequence[Archive]) -> Dict[str, Optional[Path]]:
    """Map each archive name to the ``--archive`` file given for it, if any.  With a
    single archive any file name is accepted; with several the names must match."""
    archives = list(archives)
    given: Dict[str, Optional[Path]] = {a.name: None for a in archives}
    for path in args.archive:
        name = archives[0].name if len(archives) == 1 else path.name
        if name not in given:
            raise ValueError(f"--archive {path}: expected a file named one of {sorted(given)}")
        given[name] = path
    return given


def fetch_and_extract(layout: Layout, args: argparse.Namespace, archives: Sequence[Archive],
                      patterns: Mapping[str, Sequence[str]]) -> Dict[str, Path]:
    """Unpack the wanted members of each archive into ``orig/<archive stem>/``."""
    archives = with_hashes(archives, parse_hash_overrides(args.hash))
    local = resolve_archives(args, archives)
    cache = args.download_dir or layout.out / "downloads"
    folders = {}
    for archive in archives:
        dest = layout.orig_dir / archive.name.split(".")[0]
        if not dest.is_dir():
            path = fetch(archive, cache, local=local[archive.name], mirror=args.mirror)
            try:
                extract(path, patterns[archive.name], dest)
            except CorruptArchiveError as err:
                from_user = local[archive.name] is not None or (
                    args.mirror is not None and Path(path).parent.resolve() == Path(args.mirror).resolve())
                if from_user:  # a file the user gave is never deleted, wherever it is
                    raise CorruptArchiveError(f"{err}; it is left as it is: give a complete copy") from err
                remove_if_cached(path, cache)
                raise CorruptArchiveError(f"{err}; the download was removed and the next run fetches it "
                                          "again") from err
        else:
            logger.info("skip %s: %s exists", archive.name, dest)
        folders[archive.name] = dest
    return folders


def check_params(layout: Layout, params: Mapping) -> None:
    """Refuse to mix outputs made with other settings in one folder."""
    path = layout.text_dir / "params.json"
    params = json.loads(json.dumps(params))
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous == params:
            return
        # the unpacked archives (orig/) do not depend on the settings; everything else does
        made = [p for p in layout.text_dir.iterdir() if p.name not in (path.name, "orig")]
        if made or layout.bin_dir.exists():
            raise ValueError(f"{layout.text_dir} was prepared with {previous}, not {params}; "
                             f"choose another --out or delete {layout.text_dir} and {layout.bin_dir}")
        logger.info("%s: nothing was prepared with %s yet; preparing with %s", layout.text_dir, previous, params)
    with prepare.atomic_output(path) as handle:
        json.dump(params, handle, indent=1, sort_keys=True)


def pending(step: str, outputs: Iterable[Path]) -> bool:
    """True when ``step`` must run; logs the skip otherwise."""
    outputs = list(outputs)
    if all(Path(p).exists() for p in outputs):
        logger.info("skip %s: %s exist", step, ", ".join(str(p) for p in outputs))
        return False
    logger.info("%s", step)
    return True


def _tokenize_chunk(job):
    lines, lang, options = job
    from sacremoses import MosesTokenizer

    escape = options.pop("escape")
    tokens = prepare.moses_tokenize(lines, lang, **options)
    if not escape:
        return list(tokens)
    # sacremoses escapes last, so escaping afterwards gives what escape=True gives.
    escaper = MosesTokenizer(lang=lang)
    return [escaper.escape_xml(line) for line in tokens]


def tokenize(lines: Sequence[str], lang: str, workers: int = 1, escape: bool = True,
             lowercase: bool = False, aggressive_dash_splits: bool = False) -> List[str]:
    """``tokenizer.perl -l LANG`` (with ``-a`` for ``aggressive_dash_splits``), which
    escapes ``& < > ' " [ ] |`` as fairseq's prepared data has them."""
    options = dict(escape=escape, lowercase=lowercase, aggressive_dash_splits=aggressive_dash_splits)
    jobs = [(lines[i:i + TOKENIZE_CHUNK], lang, dict(options)) for i in range(0, len(lines), TOKENIZE_CHUNK)]
    if workers <= 1 or len(jobs) <= 1:
        chunks = map(_tokenize_chunk, jobs)
        return [line for chunk in chunks for line in chunk]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return [line for chunk in pool.imap(_tokenize_chunk, jobs) for line in chunk]


def sgm_segments(path: Path) -> List[str]:
    """Text of the ``<seg id=..>`` elements of an sgm/xml file, with ’ as ' (fairseq's recipe)."""
    segments = []
    for line in prepare.read_lines(path):
        if "<seg id" in line:
            match = SEG.search(line)
            if match is None:
                raise ValueError(f"{path}: cannot read segment {line[:80]!r}")
            segments.append(match.group(1).replace("\u2019", "'"))
    if not segments:
        raise ValueError(f"{path}: no <seg id=...> lines")
    return segments


def sgm_pair(paths: Sequence[Path]) -> List[List[str]]:
    """The segments of a source and a reference sgm/xml file, which must hold as many."""
    sides = [sgm_segments(p) for p in paths]
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"{paths[0]} and {paths[1]} differ in segment count ({len(sides[0])} vs {len(sides[1])})")
    return sides


def read_pair(paths: Sequence[Path]) -> List[List[str]]:
    sides = [prepare.read_lines(p) for p in paths]
    if len({len(s) for s in sides}) != 1:
        raise ValueError(f"{paths[0]} and {paths[1]} differ in line count "
                         f"({len(sides[0])} vs {len(sides[1])})")
    return sides


def bpe_and_binarize(layout: Layout, src: str, tgt: str, merges: int, workers: int) -> Path:
    """Joint BPE learnt on ``tmp/train.*``, applied to every split into the text
    folder, then ``fairseq-preprocess --joined-dictionary``."""
    codes = layout.text_dir / "code"
    train = [layout.tmp_dir / f"train.{lang}" for lang in (src, tgt)]
    if pending(f"learn joint BPE ({merges} merges)", [codes]):
        prepare.learn_joint_bpe(train, codes, merges)
    for split in prepare.SPLITS:
        for lang in (src, tgt):
            dest = layout.text_dir / f"{split}.{lang}"
            if pending(f"apply BPE to {split}.{lang}", [dest]):
                prepare.apply_bpe(codes, layout.tmp_dir / f"{split}.{lang}", dest)
    return binarize_pair(layout, src, tgt, workers)


def binarize_pair(layout: Layout, src: str, tgt: str, workers: int) -> Path:
    if pending("fairseq-preprocess --joined-dictionary", [layout.bin_dir]):
        prepare.binarize(layout.text_dir, layout.bin_dir, src, tgt, workers=workers)
    return layout.bin_dir


def run(parser: argparse.ArgumentParser, prepare_fn: Callable[[argparse.Namespace], Path], argv=None) -> None:
    """Parse, run, and print the data-bin folder; expected failures become one
    ``error:`` line (exit 1) instead of a traceback."""
    args = parser.parse_args(argv)
    for name, path in (("--out", args.out), ("--download-dir", args.download_dir)):
        if path is not None and path.exists() and not path.is_dir():
            parser.error(f"{name} {path}: not a folder")
    if args.mirror is not None and not Path(args.mirror).is_dir():
        words = sys.argv[1:] if argv is None else list(argv)
        named = any(word == "--mirror" or word.startswith("--mirror=") for word in words)
        parser.error(f"{'--mirror' if named else '$' + MIRROR_ENV} {args.mirror}: no such folder")
    # here, before a preparation writes its settings (params.json) or anything else
    try:
        with_hashes(args.known_archives, parse_hash_overrides(args.hash))
        for path in args.archive:
            check_local_archive(path)
        resolve_archives(args, args.known_archives)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        force=True)
    try:
        with prepare.stop_on_signals():  # a stopped preparation removes its unfinished output
            bin_dir = prepare_fn(args)
    except (DownloadError, OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except subprocess.CalledProcessError as err:
        print(f"{parser.prog}: error: {err.cmd[2]} failed (exit {err.returncode}); see its log above",
              file=sys.stderr)
        sys.exit(1)
    print(bin_dir)
