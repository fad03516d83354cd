import shutil
from pathlib import Path

import pytest

from fixtures_upstream import LONG_MARKER, RATIO_MARKER, build_iwslt14, mtimes, run_script
from rdrop_fairseq.recipes.datasets import iwslt14

pytestmark = pytest.mark.e2e
SCRIPT = "prepare-iwslt14.sh"
MERGES = "300"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("iwslt14")
    fixture = build_iwslt14(root)
    out = root / "data"
    proc = run_script(SCRIPT, "--out", out, "--archive", fixture.archive, "--bpe-merges", MERGES, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return fixture, out, proc


def lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


def test_layout_and_printed_path(prepared):
    _, out, proc = prepared
    assert proc.stdout.strip().splitlines()[-1] == str(out / "data-bin" / "iwslt14.de-en")


def test_every_23rd_kept_pair_is_valid_and_test_is_the_five_ted_sets(prepared):
    fixture, out, _ = prepared
    text = out / "iwslt14.de-en"
    kept = fixture.kept_train_pairs
    for lang in ("de", "en"):
        assert len(lines(text / f"valid.{lang}")) == kept // 23
        assert len(lines(text / f"train.{lang}")) == kept - kept // 23
        assert len(lines(text / f"test.{lang}")) == fixture.test_segments
    train = (text / "train.en").read_text(encoding="utf-8") + (text / "valid.en").read_text(encoding="utf-8")
    assert LONG_MARKER not in train.replace("@@ ", "") and RATIO_MARKER not in train.replace("@@ ", "")
    assert "<url>" not in train and "talkid" not in train and "keywords" not in train


def test_text_is_tokenised_lowercased_and_bpe_split(prepared):
    _, out, _ = prepared
    test_en = (out / "iwslt14.de-en" / "test.en").read_text(encoding="utf-8")
    assert "@@ " in test_en
    assert test_en == test_en.lower()
    # ’ became ' and Moses escaped it, as in fairseq's data.
    assert "it &apos;s" in test_en.replace("@@ ", "")


def test_joined_dictionary_and_binaries(prepared):
    from fairseq.data import Dictionary, data_utils

    _, out, _ = prepared
    bin_dir = out / "data-bin" / "iwslt14.de-en"
    assert (bin_dir / "dict.de.txt").read_text() == (bin_dir / "dict.en.txt").read_text()
    dictionary = Dictionary.load(str(bin_dir / "dict.de.txt"))
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            data = data_utils.load_indexed_dataset(str(bin_dir / f"{split}.de-en.{lang}"), dictionary)
            assert len(data) == len(lines(out / "iwslt14.de-en" / f"{split}.{lang}"))


def test_rerun_skips_finished_steps(prepared):
    fixture, out, _ = prepared
    before = mtimes(out)
    proc = run_script(SCRIPT, "--out", out, "--archive", fixture.archive, "--bpe-merges", MERGES)
    assert proc.returncode == 0, proc.stderr
    assert "skip fairseq-preprocess --joined-dictionary" in proc.stderr
    assert "skip learn joint BPE" in proc.stderr
    assert mtimes(out) == before


def test_a_lost_intermediate_file_is_made_again(prepared, tmp_path, capsys):
    fixture, out, _ = prepared
    copy = tmp_path / "data"
    shutil.copytree(out, copy, symlinks=True)
    for name in ("valid.de", "test.en"):
        (copy / "iwslt14.de-en" / "tmp" / name).unlink()
    iwslt14.main(["--out", str(copy), "--archive", str(fixture.archive), "--bpe-merges", MERGES, "--workers", "1"])
    assert capsys.readouterr().out.strip() == str(copy / "data-bin" / "iwslt14.de-en")
    for name in ("valid.de", "test.en"):
        assert lines(copy / "iwslt14.de-en" / "tmp" / name) == lines(out / "iwslt14.de-en" / "tmp" / name)


def test_other_settings_in_the_same_folder_are_refused(prepared, capsys):
    fixture, out, _ = prepared
    with pytest.raises(SystemExit):
        iwslt14.main(["--out", str(out), "--archive", str(fixture.archive), "--bpe-merges", "123"])
    assert "prepared with {'bpe_merges': 300" in capsys.readouterr().err
    # other train lines: the kept tokenised text would not be remade
    with pytest.raises(SystemExit):
        iwslt14.main(["--out", str(out), "--archive", str(fixture.archive), "--bpe-merges", MERGES,
                      "--drop-meta-lines"])
    assert "'drop_meta_lines': False}, not {'bpe_merges': 300, 'drop_meta_lines': True}" in capsys.readouterr().err


def test_truncated_archive_is_rejected_and_leaves_no_output(prepared, tmp_path, capsys):
    fixture, _, _ = prepared
    out = tmp_path / "data"
    truncated = out / "downloads" / "de-en.tgz"  # where downloads go: still the user's own file
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(fixture.archive.read_bytes()[:-3000])
    with pytest.raises(SystemExit) as exit_info:
        iwslt14.main(["--out", str(out), "--archive", str(truncated)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"error: {truncated}: truncated or corrupt archive" in err and "left as it is: give a complete copy" in err
    assert truncated.exists()  # the user's own file is reported, never deleted
    files = [str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()]
    assert sorted(files) == ["downloads/de-en.tgz", "iwslt14.de-en/params.json"]
    # nothing was prepared, so other settings are not refused
    with pytest.raises(SystemExit):
        iwslt14.main(["--out", str(out), "--archive", str(truncated), "--bpe-merges", "123"])
    assert "truncated or corrupt archive" in capsys.readouterr().err


def test_a_corrupt_download_is_removed_and_said_to_be(prepared, tmp_path, capsys):
    import hashlib

    fixture, _, _ = prepared
    out = tmp_path / "data"
    cached = out / "downloads" / "de-en.tgz"  # a download of this module's, whose hash checks out
    cached.parent.mkdir(parents=True)
    cached.write_bytes(fixture.archive.read_bytes()[:-3000])
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    with pytest.raises(SystemExit):
        iwslt14.main(["--out", str(out), "--hash", f"de-en.tgz=sha256:{digest}"])
    err = capsys.readouterr().err
    assert "truncated or corrupt archive" in err and "the download was removed and the next run fetches it again" in err
    assert not cached.exists()


def test_train_filter_and_valid_split():
    raw = ["<url>http://x</url>", "<speaker>A</speaker>", "<title>Hi</title>", "<talkid>7</talkid>",
           "<description>TED Talk</description>", "<keywords>talks</keywords>", "text"]
    assert list(iwslt14.train_text(raw)) == ["<speaker>A</speaker>", "Hi", "TED Talk", "text"]
    assert list(iwslt14.train_text(raw, drop_meta=True)) == ["Hi", "TED Talk", "text"]
    train, valid = iwslt14.split_valid([str(i) for i in range(1, 50)])
    assert valid == ["23", "46"] and len(train) == 47 and "23" not in train


def train_valid_of(pairs, tmp_path):
    """The tmp/ folder that make_train_valid makes from these (de, en) training pairs."""
    orig, tmp = tmp_path / "orig", tmp_path / "tmp"
    orig.mkdir()
    tmp.mkdir()
    for column, lang in enumerate(("de", "en")):
        (orig / f"train.tags.de-en.{lang}").write_text("".join(p[column] + "\n" for p in pairs), encoding="utf-8")
    iwslt14.make_train_valid(orig, tmp, 1, drop_meta=False)
    return tmp


def test_train_pairs_are_cleaned_to_fairseqs_limits_then_lowercased(tmp_path):
    # prepare-iwslt14.sh: clean-corpus-n.perl -ratio 1.5 ... 1 175, then lowercase.perl on train and valid
    def words(count, word):
        return " ".join([word] * count)

    pairs = [(words(175, "Haus"), words(175, "House")), (words(176, "Haus"), words(176, "House")),
             (words(10, "Haus"), words(15, "House")), (words(10, "Haus"), words(16, "House"))]
    pairs += [(f"Satz {i} .", f"Sentence {i} .") for i in range(30)]
    tmp = train_valid_of(pairs, tmp_path)
    kept = [pairs[0], pairs[2]] + pairs[4:]
    for column, lang in enumerate(("de", "en")):
        expected = [p[column].lower() for p in kept]
        assert lines(tmp / f"valid.{lang}") == [expected[22]]
        assert lines(tmp / f"train.{lang}") == expected[:22] + expected[23:]


def test_each_side_is_tokenised_and_escaped_for_its_own_language(tmp_path):
    # tokenizer.perl -l en splits "it's" as "it 's", -l de as "geht ' s"; both escape the apostrophe
    pairs = [("Wie geht's ?", "It's fine .")] * 2
    tmp = train_valid_of(pairs, tmp_path)
    assert lines(tmp / "train.de") == ["wie geht &apos; s ?"] * 2
    assert lines(tmp / "train.en") == ["it &apos;s fine ."] * 2


def test_train_sides_that_differ_in_length_after_the_tag_filter_are_refused(tmp_path):
    orig, tmp = tmp_path / "orig", tmp_path / "tmp"
    orig.mkdir()
    tmp.mkdir()
    (orig / "train.tags.de-en.de").write_text("<url>http://x</url>\nHallo .\nWelt .\n", encoding="utf-8")
    (orig / "train.tags.de-en.en").write_text("Hello .\nWorld .\nAgain .\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.tags\.de-en\.\{de,en\} differ in line count"):
        iwslt14.make_train_valid(orig, tmp, 1, drop_meta=False)
    assert not list(tmp.iterdir())


def test_test_is_the_five_ted_sets_in_fairseqs_order(tmp_path):
    # prepare-iwslt14.sh: cat dev2010 TEDX.dev2012 tst2010 tst2011 tst2012 > test
    order = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
             "IWSLT14.TED.tst2012")
    orig, tmp = tmp_path / "orig", tmp_path / "tmp"
    orig.mkdir()
    tmp.mkdir()
    for name in sorted(order, reverse=True):
        for lang in ("de", "en"):
            segments = "".join(f'<seg id="{i}"> {name} {lang} {i} </seg>\n' for i in (1, 2))
            (orig / f"{name}.de-en.{lang}.xml").write_text(f"<doc>\n{segments}</doc>\n", encoding="utf-8")
    iwslt14.make_test(orig, tmp, 1)
    for lang in ("de", "en"):
        assert lines(tmp / f"test.{lang}") == [f"{name.lower()} {lang} {i}" for name in order for i in (1, 2)]


def test_a_test_set_whose_sides_differ_in_segment_count_is_refused(tmp_path):
    orig, tmp = tmp_path / "orig", tmp_path / "tmp"
    orig.mkdir()
    tmp.mkdir()
    for name in iwslt14.TEST_SETS:
        for lang in ("de", "en"):
            ids = (1, 2) if (name, lang) != ("IWSLT14.TED.tst2011", "en") else (1,)
            segments = "".join(f'<seg id="{i}"> {lang} {i} </seg>\n' for i in ids)
            (orig / f"{name}.de-en.{lang}.xml").write_text(f"<doc>\n{segments}</doc>\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tst2011\.de-en\.de\.xml and .*tst2011\.de-en\.en\.xml differ in "
                                         r"segment count \(2 vs 1\)"):
        iwslt14.make_test(orig, tmp, 1)
    assert not list(tmp.iterdir())


def test_default_bpe_merges_are_fairseqs():
    # BPE_TOKENS=10000 in fairseq's examples/translation/prepare-iwslt14.sh
    assert iwslt14.parser().parse_args(["--out", "data"]).bpe_merges == 10000
