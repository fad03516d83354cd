import html
import re
from pathlib import Path

import pytest

from fixtures_upstream import LONG_MARKER, RATIO_MARKER, build_wmt14, run_script
from rdrop_fairseq.recipes.datasets import wmt14

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return build_wmt14(tmp_path_factory.mktemp("wmt14"))


def lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


def letters_and_digits(line):
    """What normalisation, tokenisation and escaping leave of a line."""
    return re.sub(r"\W", "", html.unescape(line))


def check_corpus(fixture, out):
    text, bin_dir = out / "wmt14.en-de", out / "data-bin" / "wmt14.en-de"
    # train is the three corpora, in order; valid newstest2013, test newstest2014; each side its own language
    for split, sides in fixture.text.items():
        for lang, given in sides.items():
            made = [letters_and_digits(line) for line in lines(text / "tmp" / f"{split}.{lang}")]
            assert made == [letters_and_digits(line) for line in given], (split, lang)
    train = {lang: lines(text / f"train.{lang}") for lang in ("en", "de")}
    assert len(train["en"]) == len(train["de"])
    # Cleaning after subword splitting may drop a few good pairs; the bad ones must go.
    assert 0.8 * fixture.train_pairs <= len(train["en"]) <= fixture.train_pairs
    joined = "\n".join(train["en"] + train["de"])
    assert LONG_MARKER not in joined and RATIO_MARKER not in joined
    assert "\u200b" not in joined and "\u0007" not in joined
    for lang in ("en", "de"):
        assert len(lines(text / f"valid.{lang}")) == fixture.valid_segments
        assert len(lines(text / f"test.{lang}")) == fixture.test_segments
    assert (bin_dir / "dict.en.txt").read_text() == (bin_dir / "dict.de.txt").read_text()
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            assert (bin_dir / f"{split}.en-de.{lang}.bin").stat().st_size > 0
    return joined


def test_bpe_from_a_mirror_folder(fixture, tmp_path):
    out = tmp_path / "data"
    proc = run_script("prepare-wmt14.sh", "--out", out, "--bpe-merges", "300", "--workers", "1",
                      env={"RDROP_DATA_MIRROR": str(fixture.mirror)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out / "data-bin" / "wmt14.en-de")
    joined = check_corpus(fixture, out)
    assert "@@ " in joined
    assert " @-@ " in (out / "wmt14.en-de" / "tmp" / "train.de").read_text(encoding="utf-8")  # tokenizer -a


def test_sentencepiece_from_archives(fixture, tmp_path, capsys, monkeypatch):
    import sentencepiece

    trained = []
    train = sentencepiece.SentencePieceTrainer.train

    def recorded(**settings):
        trained.append(settings)
        return train(**settings)

    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train", recorded)
    out = tmp_path / "data"
    archives = [arg for path in fixture.archives for arg in ("--archive", str(path))]
    wmt14.main(["--out", str(out), "--spm", "--spm-vocab-size", "400", "--workers", "1", *archives])
    # a joint BPE model over every character (the module's documented setting), not sentencepiece's unigram default
    assert [(t["model_type"], t["character_coverage"]) for t in trained] == [("bpe", 1.0)]
    assert trained[0]["input_sentence_size"] == wmt14.parser().parse_args([]).spm_sample  # --spm-sample's default
    assert capsys.readouterr().out.strip() == str(out / "data-bin" / "wmt14.en-de")
    joined = check_corpus(fixture, out)
    assert "\u2581" in joined and "@@" not in joined
    assert (out / "wmt14.en-de" / "spm.model").is_file()
    # another sample trains another sentencepiece model: the folder's outputs are not reused for it
    with pytest.raises(SystemExit):
        wmt14.main(["--out", str(out), "--spm", "--spm-vocab-size", "400", "--spm-sample", "1000", *archives])
    assert "prepared with {'spm_sample': 10000000" in capsys.readouterr().err
    for other in (["--spm", "--spm-vocab-size", "500"], ["--bpe-merges", "300"]):
        with pytest.raises(SystemExit):
            wmt14.main(["--out", str(out), *other, *archives])
        assert "prepared with {'spm_sample': 10000000, 'spm_vocab_size': 400}" in capsys.readouterr().err, other


def test_archive_with_an_unknown_name_is_refused(fixture, tmp_path, capsys):
    with pytest.raises(SystemExit):
        wmt14.main(["--out", str(tmp_path), "--archive", str(tmp_path / "other.tgz")])
    assert "--archive " in capsys.readouterr().err


def test_train_text_is_normalised_for_its_language_then_rid_of_non_printing_characters():
    # normalize-punctuation.perl: „“ and «» become ", a German comma stays after the quote and an English one goes
    # before it, a no-break space between digits is a German thousands comma or an English point;
    # remove-non-printing-char.perl: \p{C} (here a zero-width space and a bell) becomes a space
    line = "Er sagte \u201eja\u201c, \u00abgut\u00bb\u200bund 1\u00a0000\u0007Euro."
    assert wmt14.normalize([line], "de") == ['Er sagte "ja", "gut" und 1,000 Euro.']
    assert wmt14.normalize([line], "en") == ['Er sagte "ja," "gut" und 1.000 Euro.']


def test_train_pairs_are_cleaned_after_subword_splitting_to_fairseqs_limits(tmp_path):
    # prepare-wmt14en2de.sh: clean-corpus-n.perl -ratio 1.5 ... 1 250 on the BPE text (250 pieces kept, 251
    # dropped); valid and test stay whole
    def words(count, word):
        return " ".join([word] * count)

    pairs = [(words(125, "ho@@ use"), words(125, "Ha@@ us")), (words(251, "house"), words(251, "Haus")),
             (words(10, "house"), words(15, "Haus")), (words(10, "house"), words(16, "Haus")),
             ("a house .", "ein Haus .")]
    layout = wmt14.Layout(tmp_path, wmt14.NAME)
    layout.tmp_dir.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        for column, lang in enumerate(("en", "de")):
            (layout.tmp_dir / f"bpe.{split}.{lang}").write_text("".join(p[column] + "\n" for p in pairs))
    wmt14.finish_splits(layout)
    for column, lang in enumerate(("en", "de")):
        assert lines(layout.text_dir / f"train.{lang}") == [pairs[i][column] for i in (0, 2, 4)]
        for split in ("valid", "test"):
            assert lines(layout.text_dir / f"{split}.{lang}") == [p[column] for p in pairs]


def test_an_sgm_pair_that_differs_in_segment_count_is_refused(tmp_path):
    folders = {archive: tmp_path / archive for archive, _ in wmt14.SGM.values()}
    for split, (archive, files) in wmt14.SGM.items():
        folders[archive].mkdir()
        for lang, name in files.items():
            ids = (1,) if (split, lang) == ("test", "de") else (1, 2)
            segments = "".join(f'<seg id="{i}">{split} {lang} {i}</seg>\n' for i in ids)
            (folders[archive] / name).write_text(f"<srcset>\n{segments}</srcset>\n", encoding="utf-8")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    for lang in ("en", "de"):
        (tmp / f"train.{lang}").write_text("made earlier\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"newstest2014-deen-src\.en\.sgm and .*newstest2014-deen-ref\.de\.sgm "
                                         r"differ in segment count \(2 vs 1\)"):
        wmt14.make_text(folders, tmp, 1, moses=False)
    assert sorted(p.name for p in tmp.iterdir()) == ["train.de", "train.en", "valid.de", "valid.en"]
    assert lines(tmp / "valid.de") == ["valid de 1", "valid de 2"]


def test_default_bpe_merges_are_the_wmt16_en_de_bpe32k_vocabulary():
    # the data of fairseq's scaling-NMT example, on which the paper's big Transformer setting is trained
    assert wmt14.parser().parse_args(["--out", "data"]).bpe_merges == 32000
