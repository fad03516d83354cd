"""scripts/{prepare,train,evaluate}-cnndm.sh end to end on fixture archives in the upstream
formats (story tarballs, abisee's URL lists, GPT-2 files), with a tiny BART; and the
ROUGE scoring against the rouge-score package."""
import json

import pytest

from fixtures_glue_cnndm import build_cnn_dm, gpt2_hashes, write_gpt2_files
from fixtures_upstream import run_script
from rdrop_fairseq.recipes import prepare, rouge
from rdrop_fairseq.recipes.datasets import cnn_dm
from test_train_scripts import dry_run, flag, script_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnndm")
    fixture = build_cnn_dm(root / "upstream")
    gpt2 = write_gpt2_files(root / "gpt2")
    args = [a for p in [*fixture["files"].values(), *gpt2.values()] for a in ("--archive", p)]
    args += [a for h in gpt2_hashes(gpt2) for a in ("--hash", h)]
    proc = run_script("prepare-cnndm.sh", "--out", root / "data", *args, "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "data", fixture, gpt2


def test_source_and_target_files_in_the_recipe_format(prepared):
    data, fixture, _ = prepared
    urls = fixture["urls"]
    for split, chunk in (("train", urls[:10]), ("val", urls[10:12]), ("test", urls[12:])):
        assert prepare.read_lines(data / "cnn_dm" / f"{split}.source") == [fixture["expected"][u][0] for u in chunk]
        assert prepare.read_lines(data / "cnn_dm" / f"{split}.target") == [fixture["expected"][u][1] for u in chunk]
    bin_dir = data / "data-bin" / "cnn_dm"
    assert (bin_dir / "dict.source.txt").read_text() == (bin_dir / "dict.target.txt").read_text()
    assert (bin_dir / "test.source-target.source.idx").is_file()


def test_a_story_is_split_into_lines_at_newlines_only():
    from rdrop_fairseq.recipes.datasets import cnn_dm

    story = "First line\u2028continues here.\nSecond line\n\n@highlight\n\nThe gist"
    assert cnn_dm.article_and_summary(story) == ("First line\u2028continues here. Second line .", "The gist .")


def test_a_story_missing_from_the_tarballs_is_named(tmp_path):
    folder = tmp_path / "stories"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=cnn_dm.story_name("http://x.com/a")):
        cnn_dm.write_split(["http://x.com/a"], [folder], tmp_path, "val")


def test_recipe_hyperparameters_and_authors_alpha():
    argv = dry_run("train-cnndm.sh")
    assert (flag(argv, "--task"), flag(argv, "--criterion"), flag(argv, "--rdrop-alpha")) == \
        ("rdrop_translation", "rdrop_label_smoothed_cross_entropy", "0.7")
    assert (flag(argv, "--arch"), flag(argv, "--lr"), flag(argv, "--max-tokens"), flag(argv, "--update-freq"),
            flag(argv, "--total-num-update"), flag(argv, "--warmup-updates"), flag(argv, "--clip-norm")) == \
        ("bart_large", "3e-05", "2048", "4", "20000", "500", "0.1")
    assert {"--truncate-source", "--layernorm-embedding", "--share-all-embeddings"} <= set(argv)
    baseline = dry_run("train-cnndm.sh", "--baseline")
    assert (flag(baseline, "--task"), flag(baseline, "--criterion")) == ("translation", "label_smoothed_cross_entropy")


def test_finetune_and_rouge_of_a_tiny_bart(prepared, tmp_path):
    data, _, _ = prepared
    run = tmp_path / "run"
    proc = run_script("train-cnndm.sh", "--smoke", "--data", data / "data-bin" / "cnn_dm", "--save-dir", run,
                      env=script_env(FP16="0", TOTAL_NUM_UPDATE="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"kl_loss"' in proc.stderr + proc.stdout
    proc = run_script("evaluate-cnndm.sh", "--data", data / "data-bin" / "cnn_dm", "--save-dir", run, "--cpu",
                      env=script_env(DATA_ROOT=data, BEAM="1", MIN_LEN="1", MAX_LEN_B="8"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads((run / "rouge-test.json").read_text())
    assert scores["sentences"] == 2 and set(rouge.METRICS) <= set(scores)


def test_rouge_decodes_the_ids_and_matches_rouge_score(prepared, tmp_path):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder
    from rouge_score import rouge_scorer

    _, _, gpt2 = prepared
    encoder = get_encoder(str(gpt2["encoder.json"]), str(gpt2["vocab.bpe"]))
    refs = ["The cat sat on the mat. It was happy!", "Rain fell in the north."]
    hyps = ["The cat sat on a mat. It was glad!", "Snow fell in the south today."]
    ids = lambda text: " ".join(map(str, encoder.encode(text)))  # noqa: E731
    log = tmp_path / "generate-test.txt"
    log.write_text("".join(f"S-{i}\t1 2\nT-{i}\t{ids(r)}\nH-{i}\t-0.5\t{ids(h)}\nD-{i}\t-0.5\t{h}\n"
                           for i, (r, h) in enumerate(zip(refs, hyps))))
    rouge.main([str(log), "--gpt2-dir", str(gpt2["encoder.json"].parent), "--json", str(tmp_path / "r.json")])
    scores = json.loads((tmp_path / "r.json").read_text())
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    by_sentence = [("The cat sat on the mat.\nIt was happy!", "The cat sat on a mat.\nIt was glad!"),
                   (refs[1], hyps[1])]
    for name, pairs in (("rouge1", zip(refs, hyps)), ("rouge2", zip(refs, hyps)), ("rougeL", zip(refs, hyps)),
                        ("rougeLsum", by_sentence)):
        expected = sum(scorer.score(r, h)[name].fmeasure for r, h in pairs) / 2
        assert scores[name] == pytest.approx(100 * expected, abs=0.01), name
    assert scores["sentences"] == 2 and 0 < scores["rouge2"] < scores["rouge1"] < 100
