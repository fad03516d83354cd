"""Text preparation steps shared by the scripts: Moses tokenisation (sacremoses),
length/ratio cleaning, joint BPE (subword-nmt) and fairseq binarisation.

Every file is written under a temporary name and renamed when complete.  Each
step of ``prepare_parallel`` then records the settings it was made with in
``OUT_DIR/.steps/<step>.json`` (see ``run_steps``); a re-run skips a step only
when that record matches the current settings, and otherwise redoes it and
every later step.

    python -m rdrop_fairseq.recipes.prepare parallel RAW_DIR OUT_DIR --src de --tgt en
"""
import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

logger = logging.getLogger("rdrop_fairseq.recipes.prepare")

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
    """Print ``data`` as indented JSON and, if ``path`` is given, write the same text there atomically.
    A NaN or infinite number (a diverged run's loss) is written as ``null``: strict JSON has no NaN."""
    text = json.dumps(_finite_or_none(data), indent=1, sort_keys=sort_keys, allow_nan=False)
    if path:
        with atomic_output(path) as handle:
            handle.write(text + "\n")
    print(text)


def _finite_or_none(data):
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite_or_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_none(value) for value in data]
    return data


def text_line(line: str) -> str:
    """``line`` without its line end (``\n`` or ``\r\n``), a carriage return inside it made a
    space: fairseq reads text with universal newlines, where it would split the line in two."""
    return line.rstrip("\n").rstrip("\r").replace("\r", " ")


def read_lines(path: Path) -> List[str]:
    """The lines of a UTF-8 text file, split at ``\n`` only, as the recipes' Perl and awk do
    (see :func:`text_line`).  A file that is not UTF-8 is named in the error."""
    try:
        with open(path, encoding="utf-8", newline="\n") as handle:
            return [text_line(line) for line in handle]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({_first_undecodable(path) or err.reason})") from err


def _first_undecodable(path: Path) -> str:
    # the decoder's offsets count from its read buffer, not the file: find the line again
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {number}, byte {err.start + 1}: {err.reason}"
    return ""


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
                min_len: int = 1, max_len: int = 175, max_word_length: int = 1000):
    """Moses ``clean-corpus-n.perl``: keep pairs with both lengths in
    [min_len, max_len] words, a length ratio of at most ``ratio``, and no word
    longer than ``max_word_length`` characters (its fixed limit, 1000)."""
    if min_len < 1:
        raise ValueError(f"min_len must be at least 1, not {min_len}: the length ratio needs a word on each side")
    kept_src, kept_tgt = [], []
    for s, t in zip(src, tgt):
        words_s, words_t = s.split(), t.split()
        ls, lt = len(words_s), len(words_t)
        if not (min_len <= ls <= max_len and min_len <= lt <= max_len):
            continue
        if ls / lt > ratio or lt / ls > ratio:
            continue
        if max(map(len, words_s + words_t)) > max_word_length:
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


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of merges, words, sentences, processes or beams)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "a non-negative integer")


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {what}, not {value}")
    return value


STOP_SIGNALS = ("SIGTERM", "SIGHUP")  # Ctrl-C's SIGINT raises KeyboardInterrupt already


@contextlib.contextmanager
def stop_on_signals(on_stop: Optional[Callable[[str], Any]] = None):
    """Within it, SIGTERM and SIGHUP (``kill PID``, a scheduler's stop, a closed terminal) raise SystemExit
    (exit status 128 + the signal's number), as Ctrl-C raises KeyboardInterrupt, so that cleanups run
    (a half-written output is removed, a child command is stopped); ``on_stop`` gets the signal's name first."""
    owner = os.getpid()

    def stop(signum, _frame):
        if os.getpid() != owner:  # a forked worker (tokenisation) inherited the handler: it just ends
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if on_stop is not None:
            on_stop(signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    signums = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, stop) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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


STEPS_DIR = ".steps"
# Bump when a step's code changes its output, so that older outputs are redone.
RECIPE_VERSION = 1


@dataclass
class Step:
    """One step of a preparation: ``run()`` writes ``outputs`` (paths relative to
    the output folder, each replaced whole) from the previous step's outputs;
    ``settings`` is everything besides those inputs that changes the outputs."""
    name: str  # the record: OUT_DIR/.steps/<name>.json
    title: str  # for messages: "tokenisation"
    outputs: Sequence[str]  # "tok/", "bpe.codes": the first names the step in messages
    settings: Mapping[str, Any]
    run: Callable[[], None]
    files: Sequence[str] = ()  # what a finished step holds (besides ``outputs``), e.g. "tok/train.de"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _read_record(path: Path) -> Optional[dict]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _digest(record: Mapping) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _differences(old: Mapping, new: Mapping) -> List[str]:
    """What changed between two records, as phrases that follow "was made with"."""
    if old.get("version") != new.get("version"):
        return [f"recipe version {old.get('version')}, now {new.get('version')}"]
    found = []
    before, after = old.get("settings") or {}, new["settings"]
    for key in sorted(set(before) | set(after), key=lambda k: (isinstance(after.get(k), dict), k)):
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        if isinstance(was, dict) and isinstance(now, dict):
            names = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
            found.append(f"a different {key} ({', '.join(names)})")
        else:
            found.append(f"{key}={was}, now {now}")
    if not found and old.get("after") != new.get("after"):
        found.append("other outputs of the step before it")
    return found


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def run_steps(out_dir: Path, steps: Sequence[Step]) -> None:
    """Run ``steps`` in order, skipping those already made with the same settings.

    After a step has written all its outputs, ``out_dir/.steps/<name>.json`` records
    its settings and a hash of the previous step's record (so the chain covers
    every earlier setting).  A step whose record is missing (an older version, an
    interrupted run) or differs, or one of whose files is gone, is redone: the records
    of it and of every later step are deleted first, then its outputs, so neither stale
    nor partial outputs are ever taken as finished and every later step is redone too."""
    out_dir = Path(out_dir)
    records = out_dir / STEPS_DIR
    previous, redoing = None, False
    for index, step in enumerate(steps):
        record = json.loads(json.dumps({"version": RECIPE_VERSION, "settings": dict(step.settings),
                                        "after": previous}))
        path = records / f"{step.name}.json"
        old = _read_record(path)
        label = step.outputs[0]
        missing = ([name for name in step.outputs if not (out_dir / name).exists()]
                   or [name for name in step.files if not (out_dir / name).exists()])
        if old == record and not missing:
            logger.info("prepare: skip %s: %s was made with the same settings", step.title, label)
        else:
            if redoing:  # the step before it was redone: said already
                why = None
            elif old == record:
                why = f"{_and(missing)} {'is' if len(missing) == 1 else 'are'} missing"
            elif old is not None:
                why = f"{label} was made with {'; '.join(_differences(old, record))}"
            elif any((out_dir / output).exists() for output in step.outputs):
                why = f"{label} has no record of its settings (an older version or an interrupted run)"
            else:
                why = None  # a first run
            if why:
                logger.warning("prepare: %s: redoing %s", why, _and([s.title for s in steps[index:]]))
            else:
                logger.info("prepare: %s", step.title)
            redoing = True
            for later in steps[index:]:
                _remove(records / f"{later.name}.json")
            for output in step.outputs:
                _remove(out_dir / output)
            step.run()
            with atomic_output(path) as handle:
                json.dump(record, handle, indent=1, sort_keys=True)
                handle.write("\n")
        previous = _digest(record)


def file_identity(path: Path) -> Dict[str, Any]:
    """A raw file as a step record sees it: its size and SHA-256, so an edited
    corpus is noticed while a copy or a touch (new mtime, same bytes) is not."""
    import pooch  # imported where used, as in download.py

    return {"size": Path(path).stat().st_size, "sha256": pooch.file_hash(str(path), alg="sha256")}


def package_version(*distributions: str) -> Optional[str]:
    """The version of the first of ``distributions`` that is installed (fairseq comes as fairseq-fixed
    too), None if none is."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def prepare_parallel(raw_dir: Path, out_dir: Path, src: str, tgt: str, bpe_merges: int = 8000,
                     max_train_pairs: int = 0, lowercase: bool = False, workers: int = 1) -> Path:
    """Tokenise, learn and apply joint BPE and binarise ``{train,valid,test}.{src,tgt}``.

    Returns the binarised folder (``out_dir/bin``).  A step is skipped when its
    record in ``out_dir/.steps`` says it was made with the same settings and raw
    files (by content); otherwise it and the steps after it are redone."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    names = [f"{split}.{lang}" for split in SPLITS for lang in (src, tgt)]
    for name in names:
        path = raw_dir / name
        if not path.is_file() or path.stat().st_size == 0:
            raise FileNotFoundError(f"missing or empty corpus file: {path}")
    tok_dir, bpe_dir, bin_dir, codes = out_dir / "tok", out_dir / "bpe", out_dir / "bin", out_dir / "bpe.codes"

    def tokenize():
        for split in SPLITS:
            pair = [read_lines(raw_dir / f"{split}.{lang}") for lang in (src, tgt)]
            if len(pair[0]) != len(pair[1]):
                raise ValueError(f"{raw_dir}/{split}.{src} and .{tgt} differ in line count")
            if split == "train" and max_train_pairs:
                pair = [lines[:max_train_pairs] for lines in pair]
            for lang, lines in zip((src, tgt), pair):
                write_lines(tok_dir / f"{split}.{lang}", moses_tokenize(lines, lang, lowercase=lowercase))

    def bpe():
        learn_joint_bpe([tok_dir / f"train.{src}", tok_dir / f"train.{tgt}"], codes, bpe_merges)
        for name in names:
            apply_bpe(codes, tok_dir / name, bpe_dir / name)

    run_steps(out_dir, [
        Step("tok", "tokenisation", ["tok/"],
             {"src": src, "tgt": tgt, "lowercase": lowercase, "max_train_pairs": max_train_pairs,
              "sacremoses": package_version("sacremoses"), "corpus": {n: file_identity(raw_dir / n) for n in names}},
             tokenize, [f"tok/{n}" for n in names]),
        Step("bpe", "BPE", ["bpe.codes", "bpe/"],
             {"bpe_merges": bpe_merges, "subword_nmt": package_version("subword-nmt")}, bpe, [f"bpe/{n}" for n in names]),
        Step("bin", "binarisation", ["bin/"], {"joined_dictionary": True},
             lambda: binarize(bpe_dir, bin_dir, src, tgt, workers=workers),
             [f"bin/dict.{lang}.txt" for lang in (src, tgt)]
             + [f"bin/{split}.{src}-{tgt}.{lang}.bin" for split in SPLITS for lang in (src, tgt)]),
    ])
    return bin_dir


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.recipes.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    par = sub.add_parser("parallel", help="tokenise, BPE and binarise a parallel corpus folder")
    par.add_argument("raw_dir", type=Path, help="folder with {train,valid,test}.{SRC,TGT}")
    par.add_argument("out_dir", type=Path)
    par.add_argument("--src", required=True)
    par.add_argument("--tgt", required=True)
    par.add_argument("--bpe-merges", type=positive_int, default=8000)
    par.add_argument("--max-train-pairs", type=non_negative_int, default=0, help="0 keeps all")
    par.add_argument("--lowercase", action="store_true")
    par.add_argument("--workers", type=positive_int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        out = prepare_parallel(args.raw_dir, args.out_dir, args.src, args.tgt, args.bpe_merges,
                               args.max_train_pairs, args.lowercase, args.workers)
    except (OSError, ValueError) as err:  # OSError: OUT_DIR is a file, not writable, ...
        parser.error(str(err))
    print(out)


if __name__ == "__main__":
    main()
