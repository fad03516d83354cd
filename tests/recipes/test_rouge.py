"""rdrop_fairseq.recipes.rouge's refusals of input it cannot score.  Its scores against the
rouge-score package, and the decoding of GPT-2 ids, are tested in test_cnndm_scripts.py."""
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
