"""rdrop_fairseq.recipes.rouge: its scores against the rouge-score package's, from summary and
reference files and from a fairseq-generate output on GPT-2 BPE ids, and its refusals of input
it cannot score."""
import json

import pytest

from fixtures_glue_cnndm import write_gpt2_files
from rdrop_fairseq.recipes import rouge


def test_summaries_and_references_are_counted_in_pairs():
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        rouge.rouge(["The storm."], ["The storm.", "The rain."])


def rouge_error(capsys, argv):
    """rouge.main's exit status and error line."""
    with pytest.raises(SystemExit) as exit_info:
        rouge.main([str(arg) for arg in argv])
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("hypo,target,message", [
    ("The storm.\n", None, "No such file or directory: '{p}/test.target'"),
    # a summarize run cut short of its first article writes no file; an empty one is no score of 0
    ("", "", "{p}/test.hypo is empty: no summaries to score"),
])
def test_summaries_that_cannot_be_scored_are_named(tmp_path, capsys, hypo, target, message):
    (tmp_path / "test.hypo").write_text(hypo, encoding="utf-8")
    if target is not None:
        (tmp_path / "test.target").write_text(target, encoding="utf-8")
    code, err = rouge_error(capsys, [tmp_path / "test.hypo", "--references", tmp_path / "test.target",
                                     "--json", tmp_path / "rouge.json"])
    assert code == 1 and message.format(p=tmp_path) in err, err
    assert not (tmp_path / "rouge.json").exists()


def test_a_generate_output_is_refused_by_its_file_once_and_gpt2_files_by_the_flag(tmp_path, capsys):
    write_gpt2_files(tmp_path / "gpt2")
    log = tmp_path / "train.log"
    log.write_text("epoch 1 | loss 3.2\n", encoding="utf-8")
    code, err = rouge_error(capsys, [log, "--gpt2-dir", tmp_path / "gpt2"])
    assert code == 1 and f"error: {log}: no H-<id> lines" in err, err
    log.write_text("T-0\t262 1\nH-0\t-0.5\t262\n", encoding="utf-8")
    (tmp_path / "gpt2" / "vocab.bpe").unlink()
    code, err = rouge_error(capsys, [log, "--gpt2-dir", tmp_path / "gpt2", "--json", tmp_path / "rouge.json"])
    assert code == 1 and f"error: --gpt2-dir: no vocab.bpe in {tmp_path / 'gpt2'}" in err, err
    assert not (tmp_path / "rouge.json").exists()


# Words that the Porter stemmer (files2rouge's, as rouge-score's use_stemmer) makes match.
REFERENCES = ["The storms killed ten people. Schools were closing!", "Rain fell in the north."]
SUMMARIES = ["The storm kills ten people. The school closed!", "Snow fell in the south today."]


def test_rouge_of_summary_and_reference_files(tmp_path, capsys):
    from rouge_score import rouge_scorer

    refs, hyps = REFERENCES, SUMMARIES
    (tmp_path / "test.hypo").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    (tmp_path / "test.target").write_text("".join(r + "\n" for r in refs), encoding="utf-8")
    rouge.main([str(tmp_path / "test.hypo"), "--references", str(tmp_path / "test.target"),
                "--json", str(tmp_path / "r.json")])
    scores = json.loads((tmp_path / "r.json").read_text())
    for stemmed in (True, False):
        scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=stemmed)
        expected = 100 * sum(scorer.score(r, h)["rouge1"].fmeasure for r, h in zip(refs, hyps)) / 2
        assert (scores["rouge1"] == pytest.approx(expected, abs=0.01)) is stemmed
    assert scores["sentences"] == 2 and scores == {"sentences": 2, **rouge.rouge(hyps, refs)}
    (tmp_path / "test.hypo").write_text(hyps[0] + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        rouge.main([str(tmp_path / "test.hypo"), "--references", str(tmp_path / "test.target")])
    assert exit_info.value.code == 1
    assert f"{tmp_path / 'test.hypo'} has 1 lines but {tmp_path / 'test.target'} has 2" in capsys.readouterr().err


def test_rouge_decodes_the_ids_and_matches_rouge_score(tmp_path):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder
    from rouge_score import rouge_scorer

    gpt2 = write_gpt2_files(tmp_path / "gpt2")
    encoder = get_encoder(str(gpt2["encoder.json"]), str(gpt2["vocab.bpe"]))
    refs, hyps = REFERENCES, SUMMARIES
    ids = lambda text: " ".join(map(str, encoder.encode(text)))  # noqa: E731
    log = tmp_path / "generate-test.txt"
    log.write_text("".join(f"S-{i}\t1 2\nT-{i}\t{ids(r)}\nH-{i}\t-0.5\t{ids(h)}\nD-{i}\t-0.5\t{h}\n"
                           for i, (r, h) in enumerate(zip(refs, hyps))))
    rouge.main([str(log), "--gpt2-dir", str(gpt2["encoder.json"].parent), "--json", str(tmp_path / "r.json")])
    scores = json.loads((tmp_path / "r.json").read_text())
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    by_sentence = [("The storms killed ten people.\nSchools were closing!",
                    "The storm kills ten people.\nThe school closed!"), (refs[1], hyps[1])]
    for name, pairs in (("rouge1", zip(refs, hyps)), ("rouge2", zip(refs, hyps)), ("rougeL", zip(refs, hyps)),
                        ("rougeLsum", by_sentence)):
        expected = sum(scorer.score(r, h)[name].fmeasure for r, h in pairs) / 2
        assert scores[name] == pytest.approx(100 * expected, abs=0.01), name
    assert scores["sentences"] == 2 and 0 < scores["rouge2"] < scores["rouge1"] < 100


def test_rouge_lsum_sentences_do_not_end_at_abbreviations():
    from rouge_score import rouge_scorer

    reference = "Officials in the U.S. say the storm killed ten. Mr. Smith said schools will close."
    assert rouge.sentence_lines(reference).split("\n") == [
        "Officials in the U.S. say the storm killed ten.", "Mr. Smith said schools will close."]
    hypothesis = "The storm killed ten, officials in the U.S. say."
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    one_sentence = "Officials in the U.S. say the storm killed ten."
    assert rouge.rouge([hypothesis], [one_sentence])["rougeLsum"] == pytest.approx(
        100 * scorer.score(one_sentence, hypothesis)["rougeLsum"].fmeasure, abs=0.01)


def test_rouge_of_a_text_generate_output_with_gpt2_dir_is_refused(tmp_path, capsys):
    gpt2 = write_gpt2_files(tmp_path / "gpt2")
    (tmp_path / "generate-test.txt").write_text("S-0\t1 2\nT-0\tthe storm\nH-0\t-0.5\tthe storm\n")
    with pytest.raises(SystemExit):
        rouge.main([str(tmp_path / "generate-test.txt"), "--gpt2-dir", str(gpt2["encoder.json"].parent)])
    err = capsys.readouterr().err
    assert str(tmp_path / "generate-test.txt") in err and "'the' is not a GPT-2 BPE id" in err


def test_gpt2_ids_decode_past_the_specials_fairseq_generate_prints(tmp_path):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    gpt2 = write_gpt2_files(tmp_path / "gpt2")
    encoder = get_encoder(str(gpt2["encoder.json"]), str(gpt2["vocab.bpe"]))
    ids = " ".join(map(str, encoder.encode("the storm")))
    # T- lines escape the unknown word as <<unk>>, H- lines print <unk>
    lines = [f"{ids} <<unk>>", f"<s> {ids} <unk> </s>", ids]
    assert rouge.decode(lines, gpt2["encoder.json"], gpt2["vocab.bpe"]) == ["the storm"] * 3
