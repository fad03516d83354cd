"""scripts/evaluate-translation.sh and scripts/evaluate-lm.sh on the smoke runs of
tests/recipes/test_train_scripts.py (shared through pytest's session temp dir)."""
import json
import os
import re
import subprocess

import pytest

from test_train_scripts import (  # noqa: F401  (fixtures)
    SCRIPTS, iwslt_run, lm_bin, lm_run, recording_python, run_script, script_env, translation_bin, wmt_run,
)

# An untrained model runs to the default 200-token limit; cap it as --eval-bleu-args does.
SHORT_OUTPUTS = ["--", "--max-len-a", "1.2", "--max-len-b", "10"]
TEST_SENTENCES = 40  # tests/test_train_scripts.translation_data keeps 40 test pairs


def translation_exit(*args, **env):
    """evaluate-translation.sh run to its exit, whatever its status."""
    return subprocess.run(["bash", str(SCRIPTS / "evaluate-translation.sh"), *map(str, args)], env=script_env(**env),
                          capture_output=True, text=True)


def evaluate_translation(setup, data, save_dir, *flags):
    return run_script("evaluate-translation.sh", "--setup", setup, "--data", data, "--save-dir", save_dir,
                      "--cpu", *flags, *SHORT_OUTPUTS)


@pytest.mark.e2e
@pytest.mark.parametrize("setup,run,tokenized", [
    ("iwslt14", "iwslt_run", {"lowercase": True, "compound_split": True}),  # the R-Drop authors' scoring
    ("wmt14", "wmt_run", {"lowercase": False, "compound_split": True}),
])
def test_evaluate_translation_averages_generates_and_scores(setup, run, tokenized, translation_bin, request):
    save_dir = request.getfixturevalue(run)
    proc = evaluate_translation(setup, translation_bin, save_dir, "--average", "2")
    assert "averaged 2 checkpoints: checkpoint_1_2.pt checkpoint_1_4.pt" in proc.stdout
    assert (save_dir / "checkpoint.avg2.pt").is_file()
    case = {"iwslt14": "lc", "wmt14": "mixed"}[setup]  # IWSLT14's text is lowercased before training
    assert "sacreBLEU (detokenized) = " in proc.stdout and f"signature: nrefs:1|case:{case}|eff:no|tok:13a" in proc.stdout
    assert "tokenized BLEU" in proc.stdout
    beam = {"iwslt14": 5, "wmt14": 4}[setup]
    assert f"Generate test with beam={beam}: BLEU4" in proc.stderr
    result = json.loads((save_dir / "bleu-test.json").read_text())
    assert result["sentences"] == TEST_SENTENCES
    assert {key: result[key] for key in tokenized} == tokenized
    assert f"tokenized BLEU without the compound split = {result['tokenized_bleu_unsplit']:.2f}" in proc.stdout
    assert f"{result['sacrebleu']:.2f}" in proc.stdout


@pytest.mark.parametrize("args,message", [
    ([], "--setup is required"),
    (["--setup", "iwslt15"], "--setup must be iwslt14 or wmt14"),
    (["--setup", "iwslt14", "--data", "/nonexistent"], "--data: no such folder"),
    (["--setup", "iwslt14", "CPU=yes"], "CPU must be 0 or 1, not 'yes'"),
    (["--setup", "iwslt14", "BEAM=0"], "BEAM must be a positive integer, not '0'"),
    (["--setup", "iwslt14", "LENPEN=long"], "LENPEN must be a number, not 'long'"),
])
def test_evaluate_translation_names_bad_input(args, message):
    env = dict(arg.split("=", 1) for arg in args if "=" in arg)
    args = [arg for arg in args if "=" not in arg]
    proc = translation_exit(*args, **env)
    assert proc.returncode != 0 and message in proc.stderr


@pytest.mark.e2e
def test_evaluate_lm_reports_perplexity(lm_run, lm_bin):
    proc = run_script("evaluate-lm.sh", "--smoke", "--data", lm_bin, "--save-dir", lm_run)
    result = json.loads((lm_run / "perplexity-test.json").read_text())
    assert result["perplexity"] > 1
    assert result["perplexity"] == pytest.approx(2 ** result["loss_base2"], rel=1e-3)
    assert float(proc.stdout.split("test perplexity = ")[1].split()[0]) == result["perplexity"]
    assert "--context-window 32" in proc.stderr  # --smoke's window, as the smoke model is 64 tokens long


def test_evaluate_lm_names_a_missing_checkpoint(lm_bin, tmp_path):
    with pytest.raises(AssertionError, match=r"--checkpoint \(or CHECKPOINT\): no such file"):
        run_script("evaluate-lm.sh", "--data", lm_bin, "--save-dir", tmp_path)


@pytest.mark.parametrize("env,message", [
    ({"CONTEXT_WINDOW": "512"}, "CONTEXT_WINDOW (512) must be below TOKENS_PER_SAMPLE (512)"),
    ({"CONTEXT_WINDOW": "-1"}, "CONTEXT_WINDOW must be an integer >= 0, not '-1'"),
    ({"TOKENS_PER_SAMPLE": "0"}, "TOKENS_PER_SAMPLE must be a positive integer, not '0'"),
    ({"CONTEXT_WINDOW": "0400", "TOKENS_PER_SAMPLE": "300"}, "CONTEXT_WINDOW must be an integer >= 0, not '0400'"),
])
def test_evaluate_lm_names_a_bad_window(lm_bin, tmp_path, env, message):
    (tmp_path / "checkpoint_best.pt").write_bytes(b"")
    with pytest.raises(AssertionError, match=re.escape(message)):
        run_script("evaluate-lm.sh", "--data", lm_bin, "--save-dir", tmp_path, **env)
    assert not list(tmp_path.glob("*.json"))


def stand_in(bin_dir, name, body):
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / name
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" > "$(dirname "$0")/{name}.args"\n{body}\n')
    stub.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def eval_lm_stand_in(tmp_path, output="Loss (base 2): 4.0000, Perplexity: 16.00"):
    """A stand-in fairseq-eval-lm that records its arguments and prints ``output``, and a run folder with a
    checkpoint for it: the settings, not a model, are under test.  Returns the PATH that finds it, and the run."""
    path = stand_in(tmp_path / "bin", "fairseq-eval-lm", f'echo "{output}"')
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_best.pt").write_bytes(b"")
    return path, run


@pytest.mark.parametrize("flags,expected", [
    (["--adaptive"], "--sample-break-mode complete --max-tokens 3072 --softmax-batch 1024 --tokens-per-sample 3072 "
                     "--context-window 2560"),
    ([], "--batch-size 2 --tokens-per-sample 512 --context-window 400"),
])
def test_evaluate_lm_runs_fairseqs_evaluation_of_each_model(tmp_path, lm_bin, flags, expected):
    path, run = eval_lm_stand_in(tmp_path)
    run_script("evaluate-lm.sh", *flags, "--data", lm_bin, "--save-dir", run, PATH=path)
    assert expected in (tmp_path / "bin" / "fairseq-eval-lm.args").read_text()
    assert json.loads((run / "perplexity-test.json").read_text())["perplexity"] == 16.0


def test_evaluate_lm_reports_a_diverged_model(tmp_path, lm_bin):
    path, run = eval_lm_stand_in(tmp_path, "Loss (base 2): nan, Perplexity: nan")
    with pytest.raises(AssertionError, match="reports 'Loss .base 2.: nan, Perplexity: nan'.*not finite"):
        run_script("evaluate-lm.sh", "--data", lm_bin, "--save-dir", run, PATH=path)
    assert not (run / "perplexity-test.json").exists()


@pytest.mark.parametrize("remove_bpe,raw_text", [(None, False), ("sentencepiece", True)])
def test_evaluate_translation_defaults_for_iwslt14(tmp_path, translation_bin, remove_bpe, raw_text):
    # IWSLT14 is scored on its best checkpoint by validation BLEU, as the authors did; sentencepiece output is
    # untokenised and is Moses-tokenised for the tokenized BLEU. A stand-in fairseq-generate prints one pair.
    line = "das ist ein gutes beispiel ."
    path = stand_in(tmp_path / "bin", "fairseq-generate", f"printf 'T-0\\t{line}\\nH-0\\t-0.1\\t{line}\\n'")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_best.pt").write_bytes(b"")
    env = {"REMOVE_BPE": remove_bpe} if remove_bpe else {}
    proc = run_script("evaluate-translation.sh", "--setup", "iwslt14", "--data", translation_bin, "--save-dir", run,
                      PATH=path, **env)
    assert f"checkpoint: {run / 'checkpoint_best.pt'}" in proc.stdout
    args = (tmp_path / "bin" / "fairseq-generate.args").read_text()
    assert "--source-lang de --target-lang en --beam 5 --lenpen 1 " in args
    # the BPE of the prepare scripts, unless the data is sentencepiece's
    assert f"--remove-bpe {remove_bpe or 'subword_nmt'}" in args
    result = json.loads((run / "bleu-test.json").read_text())
    assert result["raw_text"] is raw_text and result["lowercase"] and result["tokenized_bleu"] == 100


def test_evaluate_translation_defaults_for_wmt14(tmp_path, translation_bin):
    # en->de with beam 4 and lenpen 0.6 (Vaswani et al.; fairseq's scaling-NMT example) on the average of the last 5
    # checkpoints (Vaswani et al.'s base models); detokenised and scored with German rules
    import torch

    run = tmp_path / "run"
    run.mkdir()
    for update in range(1, 7):
        torch.save({"model": {"w": torch.tensor([float(update)])}}, run / f"checkpoint_1_{update}.pt")
    line = "das ist ein gutes Beispiel ."
    path = stand_in(tmp_path / "bin", "fairseq-generate", f"printf 'T-0\\t{line}\\nH-0\\t-0.1\\t{line}\\n'")
    python = tmp_path / "bin" / "python"
    calls = recording_python(python)
    proc = run_script("evaluate-translation.sh", "--setup", "wmt14", "--data", translation_bin, "--save-dir", run,
                      PATH=path, PYTHON=str(python))
    names = " ".join(f"checkpoint_1_{update}.pt" for update in range(2, 7))
    assert f"averaged 5 checkpoints: {names}" in proc.stdout
    args = (tmp_path / "bin" / "fairseq-generate.args").read_text()
    assert f"--path {run / 'checkpoint.avg5.pt'} " in args
    assert "--source-lang en --target-lang de --beam 4 --lenpen 0.6 " in args and "--remove-bpe subword_nmt" in args
    [score] = [call for call in calls.read_text().splitlines() if "recipes.bleu" in call]
    assert "--lang de --compound-split --json" in score
    result = json.loads((run / "bleu-test.json").read_text())
    assert not result["lowercase"] and result["tokenized_bleu"] == 100


def test_evaluate_translation_refuses_a_checkpoint_and_an_average_together(tmp_path, translation_bin):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.pt").write_bytes(b"")
    for flags, env in ((["--checkpoint", tmp_path / "run" / "mine.pt", "--average", "5"], {}),
                       (["--average", "5"], {"CHECKPOINT": str(tmp_path / "run" / "mine.pt")})):
        proc = translation_exit("--setup", "wmt14", "--data", translation_bin, "--save-dir", tmp_path / "run", *flags,
                                **env)
        assert proc.returncode == 2 and "--checkpoint and --average" in proc.stderr and "give one" in proc.stderr
    assert not (tmp_path / "run" / "checkpoint.avg5.pt").exists()


def test_evaluate_translation_names_a_failed_generation(tmp_path, translation_bin):
    path = stand_in(tmp_path / "bin", "fairseq-generate", "echo 'S-0\tpartial'; echo 'CUDA out of memory' >&2; exit 1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_best.pt").write_bytes(b"")
    proc = translation_exit("--setup", "iwslt14", "--data", translation_bin, "--save-dir", run, PATH=path)
    assert proc.returncode == 2 and "CUDA out of memory" in proc.stderr
    assert f"fairseq-generate failed (its error is above); its partial output is {run / 'generate-test.txt.part'}" \
        in proc.stderr
    assert not (run / "generate-test.txt").exists() and not (run / "bleu-test.json").exists()


def test_evaluate_lm_checks_and_records_a_window_given_after_the_double_dash(tmp_path, lm_bin):
    # fairseq-eval-lm takes the last of a repeated flag: the extra arguments' window is the one it uses
    path, run = eval_lm_stand_in(tmp_path)
    run_script("evaluate-lm.sh", "--data", lm_bin, "--save-dir", run, "--", "--tokens-per-sample",
               "1024", "--context-window=900", PATH=path)
    result = json.loads((run / "perplexity-test.json").read_text())
    assert (result["tokens_per_sample"], result["context_window"]) == (1024, 900)
    with pytest.raises(AssertionError, match=re.escape("CONTEXT_WINDOW (1024) must be below TOKENS_PER_SAMPLE (1024)")):
        run_script("evaluate-lm.sh", "--data", lm_bin, "--save-dir", run, "--", "--tokens-per-sample",
                   "1024", "--context-window", "1024", PATH=path)


def test_evaluate_scripts_run_their_python_steps_with_PYTHON(tmp_path, lm_bin):
    # a checkpoint path with a quote and a backslash, which the JSON must escape
    path = stand_in(tmp_path / "bin", "fairseq-eval-lm", 'echo "Loss (base 2): 4.0000, Perplexity: 16.00"')
    wrapper = tmp_path / "bin" / "my-python"
    calls = recording_python(wrapper)
    run = tmp_path / 'run "odd" \\ name'
    run.mkdir()
    (run / "checkpoint_best.pt").write_bytes(b"")
    run_script("evaluate-lm.sh", "--data", lm_bin, "--save-dir", run, PATH=path, PYTHON=str(wrapper))
    result = json.loads((run / "perplexity-test.json").read_text())
    assert result == {"checkpoint": str(run / "checkpoint_best.pt"), "subset": "test", "loss_base2": 4.0,
                      "perplexity": 16.0, "tokens_per_sample": 512, "context_window": 400}
    assert "import json" in calls.read_text()


def test_evaluate_lm_names_its_save_dir_and_scores_the_checkpoint_given(tmp_path):
    path, run = eval_lm_stand_in(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "dict.txt").write_text("a 1\n")
    for flags, message in (([], "--save-dir is required"),
                           (["--save-dir", tmp_path / "none"], f"--save-dir: no such folder: {tmp_path / 'none'}"),
                           (["--save-dir", run, "--checkpoint", tmp_path / "no.pt"],
                            f"--checkpoint (or CHECKPOINT): no such file: {tmp_path / 'no.pt'}")):
        with pytest.raises(AssertionError, match=re.escape(message)):
            run_script("evaluate-lm.sh", "--data", data, *flags, PATH=path)
    with pytest.raises(AssertionError, match="'fairseq-eval-lm' not found on PATH"):
        run_script("evaluate-lm.sh", "--data", data, "--save-dir", run, PATH="/usr/bin:/bin")
    mine, results = tmp_path / "mine.pt", tmp_path / "results"
    mine.write_bytes(b"")
    run_script("evaluate-lm.sh", "--data", data, "--save-dir", run, "--checkpoint", mine, PATH=path, RESULTS_DIR=results)
    assert f"--path {mine} " in (tmp_path / "bin" / "fairseq-eval-lm.args").read_text()
    assert json.loads((results / "perplexity-test.json").read_text())["checkpoint"] == str(mine)
    assert not list(run.glob("*.json"))
