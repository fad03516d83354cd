"""Text preparation steps shared by the scripts: Moses tokenisation (sacremoses),
length/ratio cleaning, joint BPE (subword-nmt) and fairseq binarisation.

Every step writes its outputs under a temporary name and renames them when
complete, so an interrupted run never leaves a file that looks finished.

    python -m rdrop_fairseq.prepare parallel RAW_DIR OUT_DIR --src de --tgt en
"""
import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

logger = logging.getLogger("rdrop_fairseq.prepare")

SPLITS = ("train", "valid", "test")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "w"):
    """Open ``path`` for writing under a temporary name; rename it only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def print_json(data, path: Optional[Path] = None, sort_keys: bool = False) -> None:
    """Print ``data`` as indented JSON and, if ``path`` is given, write the same text there atomically."""
    text = json.dumps(data, indent=1, sort_keys=sort_keys)
    if path:
        with atomic_output(path) as handle:
            handle.write(text + "\n")
    print(text)


def read_lines(path: Path) -> List[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def write_lines(path: Path, lines: Iterable[str]) -> None:
    with atomic_output(path) as handle:
        for line in lines:
            handle.write(line + "\n")


def moses_tokenize(lines: Iterable[str], lang: str, lowercase: bool = False,
                   aggressive_dash_splits: bool = False, normalize: bool = False) -> Iterator[str]:
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    normalizer = MosesPunctNormalizer(lang=lang) if normalize else None
    for line in lines:
        if normalizer is not None:
            line = normalizer.normalize(line)
        line = tokenizer.tokenize(line.strip(), escape=False, return_str=True,
                                  aggressive_dash_splits=aggressive_dash_splits)
        yield line.lower() if lowercase else line


def clean_pairs(src: Sequence[str], tgt: Sequence[str], ratio: float = 1.5,
                min_len: int = 1, max_len: int = 175):
    """Moses ``clean-corpus-n.perl``: keep pairs with both lengths in
    [min_len, max_len] words and a length ratio of at most ``ratio``."""
    kept_src, kept_tgt = [], []
    for s, t in zip(src, tgt):
        ls, lt = len(s.split()), len(t.split())
        if not (min_len <= ls <= max_len and min_len <= lt <= max_len):
            continue
        if ls / lt > ratio or lt / ls > ratio:
            continue
        kept_src.append(s)
        kept_tgt.append(t)
    return kept_src, kept_tgt


def learn_joint_bpe(train_files: Sequence[Path], codes: Path, merges: int) -> None:
    from subword_nmt.learn_bpe import learn_bpe

    with tempfile.TemporaryFile("w+", encoding="utf-8") as joined:
        for path in train_files:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    joined.write(line)
        joined.seek(0)
        with atomic_output(codes) as out:
            learn_bpe(joined, out, merges)


def apply_bpe(codes: Path, source: Path, dest: Path) -> None:
    from subword_nmt.apply_bpe import BPE

    with open(codes, encoding="utf-8") as handle:
        bpe = BPE(handle)
    write_lines(dest, (bpe.process_line(line + "\n").rstrip("\n") for line in read_lines(source)))


def binarize(text_dir: Path, dest: Path, src: str, tgt: Optional[str] = None,
             workers: int = 1, splits: Sequence[str] = SPLITS, extra: Sequence[str] = ()) -> None:
    """``fairseq-preprocess``: joined dictionary for a pair, ``--only-source`` for a LM.

    It writes into a temporary folder that replaces ``dest`` only when complete."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    prefixes = []
    for split, flag in zip(SPLITS, ("--trainpref", "--validpref", "--testpref")):
        if split in splits:
            prefixes += [flag, str(Path(text_dir) / split)]
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--destdir", str(staging),
           "--workers", str(workers), *prefixes]
    if tgt is None:
        cmd += ["--only-source"]
    else:
        cmd += ["--source-lang", src, "--target-lang", tgt, "--joined-dictionary"]
    cmd += list(extra)
    try:
        subprocess.run(cmd, check=True)
        os.chmod(staging, 0o777 & ~_umask())
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def prepare_parallel(raw_dir: Path, out_dir: Path, src: str, tgt: str, bpe_merges: int = 8000,
                     max_train_pairs: int = 0, lowercase: bool = False, workers: int = 1) -> Path:
    """Tokenise, learn and apply joint BPE and binarise ``{train,valid,test}.{src,tgt}``.

    Returns the binarised folder (``out_dir/bin``).  Finished steps are skipped."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    for split in SPLITS:
        for lang in (src, tgt):
            path = raw_dir / f"{split}.{lang}"
            if not path.is_file() or path.stat().st_size == 0:
                raise FileNotFoundError(f"missing or empty corpus file: {path}")
    tok_dir, bpe_dir, bin_dir = out_dir / "tok", out_dir / "bpe", out_dir / "bin"
    for split in SPLITS:
        pair = [read_lines(raw_dir / f"{split}.{lang}") for lang in (src, tgt)]
        if len(pair[0]) != len(pair[1]):
            raise ValueError(f"{raw_dir}/{split}.{src} and .{tgt} differ in line count")
        if split == "train" and max_train_pairs:
            pair = [lines[:max_train_pairs] for lines in pair]
        for lang, lines in zip((src, tgt), pair):
            dest = tok_dir / f"{split}.{lang}"
            if not dest.exists():
                write_lines(dest, moses_tokenize(lines, lang, lowercase=lowercase))
    codes = out_dir / "bpe.codes"
    if not codes.exists():
        learn_joint_bpe([tok_dir / f"train.{src}", tok_dir / f"train.{tgt}"], codes, bpe_merges)
    for split in SPLITS:
        for lang in (src, tgt):
            dest = bpe_dir / f"{split}.{lang}"
            if not dest.exists():
                apply_bpe(codes, tok_dir / f"{split}.{lang}", dest)
    if not (bin_dir / "dict.{}.txt".format(src)).exists():
        binarize(bpe_dir, bin_dir, src, tgt, workers=workers)
    return bin_dir


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    par = sub.add_parser("parallel", help="tokenise, BPE and binarise a parallel corpus folder")
    par.add_argument("raw_dir", type=Path, help="folder with {train,valid,test}.{SRC,TGT}")
    par.add_argument("out_dir", type=Path)
    par.add_argument("--src", required=True)
    par.add_argument("--tgt", required=True)
    par.add_argument("--bpe-merges", type=int, default=8000)
    par.add_argument("--max-train-pairs", type=int, default=0, help="0 keeps all")
    par.add_argument("--lowercase", action="store_true")
    par.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        out = prepare_parallel(args.raw_dir, args.out_dir, args.src, args.tgt, args.bpe_merges,
                               args.max_train_pairs, args.lowercase, args.workers)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(out)


if __name__ == "__main__":
    main()
