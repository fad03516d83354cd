"""prepare_parallel's step records: a re-run skips a step only when it was made with the same settings."""
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rdrop_fairseq.recipes import prepare

LINES = {"train": 60, "valid": 6, "test": 6}
WORDS = {
    "de": "Der Hund läuft schnell über die grüne Wiese , und Katzen schlafen lange im warmen Haus ; "
          "Kinder spielen draußen mit bunten Bällen !".split(),
    "en": "The dog runs quickly over the green meadow , and cats sleep long in the warm House ; "
          "Children play outside with colourful Balls !".split(),
    "fr": "Le chien court vite sur la prairie verte , et les Chats dorment longtemps dans la maison ; "
          "les Enfants jouent dehors avec des balles !".split(),
}


def write_corpus(raw: Path, langs=("de", "en"), seed: int = 0) -> Path:
    rng = random.Random(seed)
    for split, count in LINES.items():
        lengths = [rng.randint(3, 12) for _ in range(count)]
        for lang in langs:
            words = WORDS[lang]
            pick = random.Random(f"{seed}-{split}-{lang}")
            prepare.write_lines(raw / f"{split}.{lang}",
                                (" ".join(pick.choice(words) for _ in range(n)) + "." for n in lengths))
    return raw


def files(root: Path, skip=("preprocess.log",)):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}


def mtimes(root: Path):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def fake_binarize(text_dir, dest, src, tgt=None, workers=1, splits=prepare.SPLITS, extra=()):
    """A fast stand-in for fairseq-preprocess: a joined dictionary and the text as "binaries"."""
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)  # as binarize: dest is replaced whole
    dest.mkdir(parents=True)
    counts = Counter(w for lang in (src, tgt) for line in prepare.read_lines(Path(text_dir) / f"train.{lang}")
                     for w in line.split())
    for lang in (src, tgt):
        prepare.write_lines(dest / f"dict.{lang}.txt", (f"{w} {n}" for w, n in sorted(counts.items())))
        for split in splits:
            (dest / f"{split}.{src}-{tgt}.{lang}.bin").write_bytes((Path(text_dir) / f"{split}.{lang}").read_bytes())


class Calls(Counter):
    """Calls per function, and the merges asked of learn_joint_bpe."""
    def __init__(self):
        super().__init__()
        self.merges = []

    def clear(self):
        super().clear()
        self.merges.clear()


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of each step's work function (binarize: the fast stand-in)."""
    counter = Calls()
    merges = counter.merges

    def spy(name, function):
        def wrapper(*args, **kwargs):
            counter[name] += 1
            return function(*args, **kwargs)
        monkeypatch.setattr(prepare, name, wrapper)

    spy("moses_tokenize", prepare.moses_tokenize)
    spy("apply_bpe", prepare.apply_bpe)
    spy("binarize", fake_binarize)
    learn = prepare.learn_joint_bpe

    def learn_spy(train_files, codes, n):
        merges.append(n)
        return learn(train_files, codes, n)
    spy("learn_joint_bpe", learn_spy)
    return counter


def warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "rdrop_fairseq.recipes.prepare" and r.levelno >= logging.WARNING]


def run(raw, out, **settings):
    settings = {"bpe_merges": 40, **settings}
    src, tgt = settings.pop("src", "de"), settings.pop("tgt", "en")
    return prepare.prepare_parallel(raw, out, src, tgt, **settings)


@pytest.fixture
def raw(tmp_path):
    return write_corpus(tmp_path / "raw")


# ------------------------------------------------------------------ (1) identical settings


def test_an_identical_rerun_skips_every_step_with_fairseq_binaries(raw, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    bin_dir = run(raw, out, workers=2)
    assert bin_dir == out / "bin"
    made = {p.name for p in bin_dir.iterdir()}
    assert {"dict.de.txt", "dict.en.txt", "train.de-en.de.bin", "test.de-en.en.idx"} <= made
    assert sorted(p.name for p in (out / ".steps").iterdir()) == ["bin.json", "bpe.json", "tok.json"]
    before = mtimes(out)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished step was redone")
    for name in ("moses_tokenize", "learn_joint_bpe", "apply_bpe", "binarize"):
        monkeypatch.setattr(prepare, name, refuse)
    os.utime(raw / "train.de")  # a new mtime, the same bytes: the corpus is identified by content
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rdrop_fairseq.recipes.prepare"):
        assert run(raw, out, workers=1) == bin_dir  # workers do not change the output
    assert mtimes(out) == before
    assert [r.getMessage().split(":")[1] for r in caplog.records if r.name == "rdrop_fairseq.recipes.prepare"] == \
        [" skip tokenisation", " skip BPE", " skip binarisation"]


def test_a_copied_corpus_is_the_same_corpus(raw, tmp_path, calls):
    out = tmp_path / "out"
    run(raw, out)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in raw.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    calls.clear()
    run(copy, out)
    assert not calls


def test_each_step_keeps_the_pairs_and_splits_apart_and_bpe_is_learned_on_train_only(raw, tmp_path, calls):
    out = tmp_path / "out"
    run(raw, out, lowercase=True, max_train_pairs=50)
    for split in prepare.SPLITS:
        tok = {lang: prepare.read_lines(out / "tok" / f"{split}.{lang}") for lang in ("de", "en")}
        assert len(tok["de"]) == len(tok["en"]) == (50 if split == "train" else LINES[split])
        for lang, lines in tok.items():
            raw_lines = prepare.read_lines(raw / f"{split}.{lang}")[:len(lines)]
            assert lines == [line.replace(".", " .").lower() for line in raw_lines]  # both sides lowercased
            bpe = prepare.read_lines(out / "bpe" / f"{split}.{lang}")
            assert [line.replace("@@ ", "") for line in bpe] == lines
    codes = tmp_path / "codes"
    prepare.learn_joint_bpe([out / "tok" / "train.de", out / "tok" / "train.en"], codes, 40)
    assert (out / "bpe.codes").read_bytes() == codes.read_bytes()


# ------------------------------------------------------------------ (2) other BPE merges


def test_other_bpe_merges_redo_bpe_and_binarisation_only(raw, tmp_path, calls, caplog):
    out = tmp_path / "out"
    run(raw, out, bpe_merges=40)
    old_codes = (out / "bpe.codes").read_bytes()
    tok_times = mtimes(out / "tok")
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rdrop_fairseq.recipes.prepare"):
        run(raw, out, bpe_merges=25)
    assert calls["moses_tokenize"] == 0 and calls["binarize"] == 1 and calls.merges[-1] == 25
    assert mtimes(out / "tok") == tok_times
    assert warnings(caplog) == ["prepare: bpe.codes was made with bpe_merges=40, now 25: redoing BPE and binarisation"]
    assert (out / "bpe.codes").read_bytes() != old_codes

    fresh = tmp_path / "fresh"
    run(raw, fresh, bpe_merges=25)
    assert files(out) == files(fresh)


# ------------------------------------------------------------------ (3) tokenisation settings and the corpus


def edit_in_place(raw):
    # the same size, other words: the corpus is identified by content, not by size
    lines = prepare.read_lines(raw / "train.en")
    lines[0] = " ".join(reversed(lines[0].split()))
    prepare.write_lines(raw / "train.en", lines)


def append_pair(raw):
    for lang in ("de", "en"):
        with open(raw / f"train.{lang}", "a", encoding="utf-8") as handle:
            handle.write(f"{WORDS[lang][0]} {WORDS[lang][1]} !\n")


@pytest.mark.parametrize("change, settings, why", [
    ("lowercase", {"lowercase": True}, "lowercase=False, now True"),
    ("max_train_pairs", {"max_train_pairs": 20}, "max_train_pairs=0, now 20"),
    ("corpus", {}, "a different corpus (train.de, train.en)"),
    ("edited corpus", {}, "a different corpus (train.en)"),
])
def test_changed_tokenisation_redoes_every_step(raw, tmp_path, calls, caplog, change, settings, why):
    out = tmp_path / "out"
    run(raw, out)
    if change == "corpus":
        append_pair(raw)
    elif change == "edited corpus":
        edit_in_place(raw)
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rdrop_fairseq.recipes.prepare"):
        run(raw, out, **settings)
    assert calls["moses_tokenize"] == 6 and calls["learn_joint_bpe"] == 1 and calls["binarize"] == 1
    assert warnings(caplog) == [f"prepare: tok/ was made with {why}: redoing tokenisation, BPE and binarisation"]

    fresh = tmp_path / "fresh"
    run(raw, fresh, **settings)
    assert files(out) == files(fresh)


def test_another_language_pair_leaves_no_file_of_the_old_one(tmp_path, calls, caplog):
    raw = write_corpus(tmp_path / "raw", langs=("de", "en", "fr"))
    out = tmp_path / "out"
    run(raw, out, src="de")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rdrop_fairseq.recipes.prepare"):
        run(raw, out, src="fr")
    assert warnings(caplog)[0].startswith("prepare: tok/ was made with src=de, now fr; a different corpus (")
    assert not [name for name in files(out) if ".de" in name]
    fresh = tmp_path / "fresh"
    run(raw, fresh, src="fr")
    assert files(out) == files(fresh)


# ------------------------------------------------------------------ (4) outputs without a record


def test_outputs_without_a_record_are_redone(raw, tmp_path, calls, caplog):
    fresh = tmp_path / "fresh"
    run(raw, fresh)
    # What an older version or an interrupted run may leave: plausible files, no records.
    out = tmp_path / "out"
    prepare.write_lines(out / "tok" / "train.de", ["half a file"])
    prepare.write_lines(out / "tok" / "stale.xx", ["from another run"])
    prepare.write_lines(out / "bpe.codes", ["#version: 0.2", "a b"])
    prepare.write_lines(out / "bin" / "dict.de.txt", ["old 1"])
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rdrop_fairseq.recipes.prepare"):
        run(raw, out)
    assert calls["moses_tokenize"] == 6 and calls["learn_joint_bpe"] == 1 and calls["binarize"] == 1
    assert warnings(caplog) == ["prepare: tok/ has no record of its settings (an older version or an interrupted "
                                "run): redoing tokenisation, BPE and binarisation"]
    assert files(out) == files(fresh)


def test_a_missing_record_redoes_its_step_and_the_later_ones(raw, tmp_path, calls):
    out = tmp_path / "out"
    run(raw, out)
    (out / ".steps" / "bpe.json").unlink()
    calls.clear()
    run(raw, out)
    assert calls["moses_tokenize"] == 0 and calls["learn_joint_bpe"] == 1 and calls["binarize"] == 1


@pytest.mark.parametrize("deleted, redone, why", [
    ("bin", 1, "bin/ is missing"),
    ("bin/valid.de-en.en.bin", 1, "bin/valid.de-en.en.bin is missing"),
    ("bpe/train.de", 2, "bpe/train.de is missing"),
    ("tok", 3, "tok/ is missing"),
])
def test_a_deleted_output_is_made_again(raw, tmp_path, calls, caplog, deleted, redone, why):
    out = tmp_path / "out"
    run(raw, out)
    fresh = files(out)
    path = out / deleted
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    calls.clear()
    caplog.clear()
    run(raw, out)
    ran = [calls["moses_tokenize"] > 0, calls["learn_joint_bpe"] == 1, calls["binarize"] == 1]
    assert ran == [False] * (3 - redone) + [True] * redone
    assert len(warnings(caplog)) == 1 and why in warnings(caplog)[0]
    assert files(out) == fresh


def test_a_record_from_another_chain_is_not_trusted(raw, tmp_path, calls):
    """Records of bpe/bin copied from a run on another corpus do not match this tok/."""
    other = tmp_path / "other"
    run(write_corpus(tmp_path / "raw2", seed=1), other)
    out = tmp_path / "out"
    run(raw, out)
    for name in ("bpe.json", "bin.json"):
        (out / ".steps" / name).write_bytes((other / ".steps" / name).read_bytes())
    calls.clear()
    run(raw, out)
    assert calls["moses_tokenize"] == 0 and calls["learn_joint_bpe"] == 1 and calls["binarize"] == 1


# ------------------------------------------------------------------ (5) interrupted steps


def fail_on_call(monkeypatch, name, call):
    function, count = getattr(prepare, name), Counter()

    def wrapper(*args, **kwargs):
        count[name] += 1
        if count[name] == call:
            raise KeyboardInterrupt(f"{name} interrupted")
        return function(*args, **kwargs)
    monkeypatch.setattr(prepare, name, wrapper)


@pytest.mark.parametrize("name, call, kept", [
    ("moses_tokenize", 4, []),
    ("apply_bpe", 3, ["tok.json"]),
    ("binarize", 1, ["bpe.json", "tok.json"]),
])
def test_an_interrupted_step_leaves_no_record_and_is_redone(raw, tmp_path, calls, monkeypatch, name, call, kept):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        fail_on_call(patch, name, call)
        with pytest.raises(KeyboardInterrupt):
            run(raw, out)
    assert sorted(p.name for p in (out / ".steps").glob("*")) == kept
    assert not list(out.rglob("*.part"))
    calls.clear()
    run(raw, out)
    assert calls["moses_tokenize"] == (0 if kept else 6)
    assert calls["learn_joint_bpe"] == (0 if "bpe.json" in kept else 1)
    assert calls["binarize"] == 1
    fresh = tmp_path / "fresh"
    run(raw, fresh)
    assert files(out) == files(fresh)


def test_an_interrupted_change_does_not_revive_the_old_outputs(raw, tmp_path, calls, monkeypatch):
    """BPE redone with 25 merges, binarisation interrupted: bin/ of 40 merges is not taken as finished,
    and going back to 40 merges redoes BPE."""
    out = tmp_path / "out"
    run(raw, out, bpe_merges=40)
    with monkeypatch.context() as patch:
        fail_on_call(patch, "binarize", 1)
        with pytest.raises(KeyboardInterrupt):
            run(raw, out, bpe_merges=25)
    assert not (out / ".steps" / "bin.json").exists()
    calls.clear()
    run(raw, out, bpe_merges=40)
    assert calls["moses_tokenize"] == 0 and calls.merges == [40] and calls["binarize"] == 1
    fresh = tmp_path / "fresh"
    run(raw, fresh, bpe_merges=40)
    assert files(out) == files(fresh)


def test_records_are_small_json_files(raw, tmp_path, calls):
    out = tmp_path / "out"
    run(raw, out, bpe_merges=30, lowercase=True)
    tok = json.loads((out / ".steps" / "tok.json").read_text())
    assert tok["settings"]["lowercase"] is True and tok["after"] is None
    assert tok["settings"]["corpus"]["train.de"]["size"] == (raw / "train.de").stat().st_size
    bpe = json.loads((out / ".steps" / "bpe.json").read_text())
    assert bpe["settings"]["bpe_merges"] == 30 and len(bpe["after"]) == 64


# ------------------------------------------------------------------ the command line


def test_the_command_line_reruns_and_reports_changes(raw, tmp_path, calls, capsys, caplog):
    out = tmp_path / "out"
    argv = ["parallel", str(raw), str(out), "--src", "de", "--tgt", "en", "--bpe-merges", "30"]
    prepare.main(argv)
    assert capsys.readouterr().out.strip() == str(out / "bin")
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rdrop_fairseq.recipes.prepare"):
        prepare.main(argv[:-1] + ["20"])
    assert capsys.readouterr().out.strip() == str(out / "bin")
    assert calls["moses_tokenize"] == 0 and calls.merges == [20]
    assert warnings(caplog) == ["prepare: bpe.codes was made with bpe_merges=30, now 20: redoing BPE and binarisation"]


def test_the_command_line_rejects_pairs_of_different_lengths(raw, tmp_path, calls, capsys):
    prepare.write_lines(raw / "valid.en", prepare.read_lines(raw / "valid.en")[:-1])
    with pytest.raises(SystemExit):
        prepare.main(["parallel", str(raw), str(tmp_path / "out"), "--src", "de", "--tgt", "en"])
    assert "valid.de and .en differ in line count" in capsys.readouterr().err
    assert not (tmp_path / "out" / ".steps" / "tok.json").exists()


def test_the_command_line_names_an_empty_corpus_file_before_any_work(raw, tmp_path, calls, capsys):
    (raw / "test.en").write_text("")
    with pytest.raises(SystemExit):
        prepare.main(["parallel", str(raw), str(tmp_path / "out"), "--src", "de", "--tgt", "en"])
    assert f"missing or empty corpus file: {raw / 'test.en'}" in capsys.readouterr().err
    assert not calls and not (tmp_path / "out").exists()


def test_the_command_line_names_an_out_dir_that_is_a_file(raw, tmp_path, calls, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(SystemExit):
        prepare.main(["parallel", str(raw), str(out), "--src", "de", "--tgt", "en"])
    assert str(out) in capsys.readouterr().err


def test_an_interrupted_write_keeps_the_old_file_whole(tmp_path):
    path = tmp_path / "tok" / "train.de"
    prepare.write_lines(path, ["old one", "old two"])

    def lines():
        yield "new one"
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prepare.write_lines(path, lines())
    assert path.read_text(encoding="utf-8") == "old one\nold two\n"
    assert [p.name for p in path.parent.iterdir()] == ["train.de"]


@pytest.mark.parametrize("option, value, said", [
    ("--max-train-pairs", "-5", "must be a non-negative integer, not -5"),  # lines[:-5] would drop the last 5 pairs
    ("--bpe-merges", "0", "must be a positive integer, not 0"),
    ("--workers", "0", "must be a positive integer, not 0"),
])
def test_the_command_line_rejects_counts_out_of_range(raw, tmp_path, calls, capsys, option, value, said):
    with pytest.raises(SystemExit):
        prepare.main(["parallel", str(raw), str(tmp_path / "out"), "--src", "de", "--tgt", "en", option, value])
    assert f"{option}: {said}" in capsys.readouterr().err
    assert not calls and not (tmp_path / "out").exists()


def test_lines_end_at_newline_only_and_carry_no_carriage_return(tmp_path):
    # a stray \r on different lines of each side kept the line counts equal and misaligned the pairs
    (tmp_path / "x.de").write_bytes("eins\rhalb\nzwei\r\ndrei\n".encode())
    (tmp_path / "x.en").write_bytes("one half\ntwo\nthree\r\n".encode())
    assert prepare.read_lines(tmp_path / "x.de") == ["eins halb", "zwei", "drei"]
    assert prepare.read_lines(tmp_path / "x.en") == ["one half", "two", "three"]



@pytest.mark.parametrize("module, extra", [("bleu", ["--lang", "en"]), ("validate_log", []), ("rouge", ["--references"])])
def test_a_file_that_is_not_utf8_is_named(tmp_path, capsys, module, extra):
    import importlib

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("H-0\t-0.1\tGroß\n".encode("latin-1"))
    argv = [str(bad), *extra, *([str(bad)] if module == "rouge" else [])]
    with pytest.raises(SystemExit):
        importlib.import_module(f"rdrop_fairseq.recipes.{module}").main(argv)
    assert f"{bad}: not UTF-8 text" in capsys.readouterr().err


def test_the_undecodable_line_is_found_past_the_read_buffer(tmp_path):
    from rdrop_fairseq.recipes.prepare import read_lines

    bad = tmp_path / "corpus.txt"
    bad.write_bytes(b"plain ascii line\n" * 5000 + "Gro\u00df\n".encode("latin-1"))
    with pytest.raises(ValueError) as raised:
        read_lines(bad)
    assert str(raised.value) == f"{bad}: not UTF-8 text (line 5001, byte 4: invalid continuation byte)"


def test_a_stop_signal_raises_system_exit_so_a_half_written_output_is_removed(tmp_path):
    import signal

    path, said, before = tmp_path / "train.de", [], signal.getsignal(signal.SIGTERM)

    def lines():
        yield "one"
        os.kill(os.getpid(), signal.SIGTERM)
        yield "two"
    with pytest.raises(SystemExit) as exit_info, prepare.stop_on_signals(said.append):
        prepare.write_lines(path, lines())
    assert exit_info.value.code == 128 + signal.SIGTERM and said == ["SIGTERM"]
    assert not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_forked_worker_ends_on_a_stop_signal_without_the_parents_cleanup(tmp_path):
    # tokenisation workers are forked inside stop_on_signals: a hangup reaches them too, and each would
    # otherwise say it is stopping and unwind the parent's code
    script = tmp_path / "fork.py"
    script.write_text(
        "import os, signal, time\n"
        "from rdrop_fairseq.recipes import prepare\n"
        "with prepare.stop_on_signals(lambda name: print('stop', name, flush=True)):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(5)\n"
        "        os._exit(0)\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "    print('worker ended by SIGTERM:', os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.stdout == "worker ended by SIGTERM: True\n", proc.stdout + proc.stderr


def test_clean_pairs_is_moses_clean_corpus_n():
    # clean-corpus-n.perl: word counts within [min, max] on both sides, inclusive, and neither side more
    # than `ratio` times as long as the other, no word over 1000 characters; runs of spaces are one separator.
    pairs = [("a b c", "x y"),          # 1.5: kept
             ("a b c d", "x y"),        # 2.0: dropped
             ("x y", "a b c d"),        # 2.0 the other way: dropped
             ("a  b   c", "x y"),       # 3 words, not 6
             ("a", "x"),                # min_len: kept
             ("", "x"),                 # empty: dropped
             ("a b c d", "w x y z"),    # max_len: kept
             ("a b c d e", "v w x y z"),  # over max_len: dropped
             ("a " + "b" * 1000, "x y"),  # a word of 1000 characters: kept
             ("a b", "x " + "y" * 1001)]  # one of 1001: dropped
    kept = prepare.clean_pairs([s for s, _ in pairs], [t for _, t in pairs], ratio=1.5, min_len=1, max_len=4)
    assert list(zip(*kept)) == [pairs[0], pairs[3], pairs[4], pairs[6], pairs[8]]
    assert prepare.clean_pairs(["a b"], ["x y"], min_len=3) == ([], [])
    with pytest.raises(ValueError, match="min_len must be at least 1"):
        prepare.clean_pairs(["a"], [""], min_len=0)
