"""scripts/{prepare,train,evaluate}-cnndm.sh end to end on fixture archives in the upstream
formats (story tarballs, abisee's URL lists, GPT-2 files), with a tiny BART, and the decoding of
the evaluation (BARTHubInterface's, as examples/bart/summarize.py).  The ROUGE scoring is tested
in test_rouge.py."""
import json
import os

import pytest

from fixtures_glue_cnndm import build_cnn_dm, gpt2_hashes, write_gpt2_files
from fixtures_upstream import run_script
from rdrop_fairseq.recipes import prepare, rouge, summarize
from rdrop_fairseq.recipes.datasets import cnn_dm
from test_train_scripts import dry_run, flag, recording_python, script_env

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
    from fairseq.data import Dictionary, data_utils
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    data, fixture, gpt2 = prepared
    urls = fixture["urls"]
    for split, chunk in (("train", urls[:10]), ("val", urls[10:12]), ("test", urls[12:])):
        assert prepare.read_lines(data / "cnn_dm" / f"{split}.source") == [fixture["expected"][u][0] for u in chunk]
        assert prepare.read_lines(data / "cnn_dm" / f"{split}.target") == [fixture["expected"][u][1] for u in chunk]
    bin_dir = data / "data-bin" / "cnn_dm"
    assert (bin_dir / "dict.source.txt").read_text() == (bin_dir / "dict.target.txt").read_text()
    # GPT-2's dict.txt, whose order bart.large's embeddings follow, not one counted from the data
    assert Dictionary.load(str(bin_dir / "dict.source.txt")).symbols == Dictionary.load(str(gpt2["dict.txt"])).symbols
    # val is fairseq's valid (the best checkpoint's pick), test stays test
    encoder = get_encoder(str(gpt2["encoder.json"]), str(gpt2["vocab.bpe"]))
    dictionary = Dictionary.load(str(bin_dir / "dict.source.txt"))
    for split, fairseq_split in (("train", "train"), ("val", "valid"), ("test", "test")):
        for side in ("source", "target"):
            binarised = data_utils.load_indexed_dataset(str(bin_dir / f"{fairseq_split}.source-target.{side}"),
                                                        dictionary)
            lines = prepare.read_lines(data / "cnn_dm" / f"{split}.{side}")
            assert [dictionary.string(ids) for ids in binarised] == \
                [" ".join(map(str, encoder.encode(line))) for line in lines], (split, side)


def test_a_story_is_split_into_lines_at_newlines_only():
    from rdrop_fairseq.recipes.datasets import cnn_dm

    story = "First line\u2028continues here.\nSecond line\n\n@highlight\n\nThe gist"
    assert cnn_dm.article_and_summary(story) == ("First line\u2028continues here. Second line .", "The gist .")


@pytest.mark.parametrize("line", ["He left.", "Stop!", "Why?", "And then...", "the 'forties'", "``quoted``",
                                  'He said "no"', "the \u2018best\u2019", "\u201cyes\u201d", "Photo (AP)"])
def test_a_line_ending_with_one_of_abisees_end_marks_is_kept(line):
    assert cnn_dm.fix_missing_period(line) == line


@pytest.mark.parametrize("line", ["Photo credit", "a comma ,", "a colon:", "an opening \u2018", "a dash --"])
def test_a_line_without_an_end_mark_gets_a_period(line):
    assert cnn_dm.fix_missing_period(line) == line + " ."


def test_every_line_after_the_first_highlight_is_summary_and_lines_are_stripped():
    # make_datafiles.py strips each line, and after the first @highlight every line is summary
    story = "  Line one  \n\t\nLine two.\n@highlight\nFirst point\nstill the first point!\n\n@highlight\n  Second  \n"
    assert cnn_dm.article_and_summary(story) == (
        "Line one . Line two.", "First point . still the first point! Second .")


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
    assert {"--truncate-source", "--layernorm-embedding", "--share-all-embeddings",
            "--share-decoder-input-output-embed"} <= set(argv)
    # examples/bart/README.summarization.md's command
    assert (flag(argv, "--source-lang"), flag(argv, "--target-lang"), flag(argv, "--label-smoothing"),
            flag(argv, "--dropout"), flag(argv, "--attention-dropout"), flag(argv, "--weight-decay"),
            flag(argv, "--adam-betas"), flag(argv, "--adam-eps"), flag(argv, "--lr-scheduler")) == \
        ("source", "target", "0.1", "0.1", "0.1", "0.01", "(0.9, 0.999)", "1e-08", "polynomial_decay")
    # README's command sets no --max-update: this run stops at --total-num-update, where the LR reaches 0
    assert flag(argv, "--max-update") == "20000"
    baseline = dry_run("train-cnndm.sh", "--baseline")
    assert (flag(baseline, "--task"), flag(baseline, "--criterion")) == ("translation", "label_smoothed_cross_entropy")


@pytest.fixture(scope="module")
def tiny_bart(prepared, tmp_path_factory):
    """A tiny BART fine-tuned with R-Drop for two updates: its save dir and the training output."""
    data, _, _ = prepared
    run = tmp_path_factory.mktemp("cnndm-run") / "run"
    proc = run_script("train-cnndm.sh", "--smoke", "--data", data / "data-bin" / "cnn_dm", "--save-dir", run,
                      env=script_env(FP16="0", TOTAL_NUM_UPDATE="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc.stderr + proc.stdout


def test_finetune_and_rouge_of_a_tiny_bart(prepared, tiny_bart):
    data, _, _ = prepared
    run, train_output = tiny_bart
    assert '"kl_loss"' in train_output
    proc = run_script("evaluate-cnndm.sh", "--data", data / "data-bin" / "cnn_dm", "--save-dir", run, "--cpu",
                      env=script_env(DATA_ROOT=data, BEAM="1", MIN_LEN="1", MAX_LEN_B="8"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "-m rdrop_fairseq.recipes.summarize" in proc.stderr and "--min-len 1" in proc.stderr
    summaries = prepare.read_lines(run / "test.hypo")
    references = prepare.read_lines(data / "cnn_dm" / "test.target")
    assert len(summaries) == len(references) == 2
    assert not list(run.glob("*.part"))
    scores = json.loads((run / "rouge-test.json").read_text())
    assert scores == {"sentences": 2, **rouge.rouge(summaries, references)}


def test_evaluate_names_the_missing_text(prepared, tiny_bart, tmp_path):
    data, _, _ = prepared
    run, _ = tiny_bart
    common = ["--data", data / "data-bin" / "cnn_dm", "--gpt2-dir", data / "cnn_dm" / "gpt2", "--save-dir", run]
    proc = run_script("evaluate-cnndm.sh", *common, "--text-dir", tmp_path, "--cpu", env=script_env())
    assert proc.returncode == 2 and f"--text-dir: {tmp_path} has no test.source" in proc.stderr
    proc = run_script("evaluate-cnndm.sh", *common, "--subset", "train", "--cpu", env=script_env())
    assert proc.returncode == 2 and "--subset must be test or valid" in proc.stderr
    proc = run_script("evaluate-cnndm.sh", *common, "--text-dir", data / "cnn_dm", "--cpu", env=script_env(FP16="1"))
    assert proc.returncode == 2 and "FP16=1 asks for --fp16" in proc.stderr


def _watch_generation(bart, monkeypatch, prefer_eos=False):
    """Record what the hub interface hands fairseq's generator and what comes back:
    ``steps`` holds, per batch, the source rows without padding, the prefix tokens and the best
    hypotheses; ``decoder_inputs`` the tokens fed to the decoder at each step.  With
    ``prefer_eos``, </s> becomes the likeliest token everywhere: a summary then ends as soon as
    min_len lets it."""
    seen = {"steps": [], "decoder_inputs": []}
    task, decoder = bart.task, bart.model.decoder
    pad, eos = task.source_dictionary.pad(), task.target_dictionary.eos()
    inference_step, decoder_forward = task.inference_step, decoder.forward

    def watched_step(generator, models, sample, prefix_tokens=None, **kwargs):
        hypos = inference_step(generator, models, sample, prefix_tokens=prefix_tokens, **kwargs)
        seen["steps"].append(([row[row.ne(pad)].tolist() for row in sample["net_input"]["src_tokens"]],
                              prefix_tokens, [h[0]["tokens"].tolist() for h in hypos]))
        return hypos

    def watched_forward(prev_output_tokens, *args, **kwargs):
        seen["decoder_inputs"].append(prev_output_tokens.clone())
        return decoder_forward(prev_output_tokens, *args, **kwargs)

    def eos_first(module, inputs, output):
        output = output.clone()
        output[..., eos] += 1000.0
        return output

    monkeypatch.setattr(task, "inference_step", watched_step)
    monkeypatch.setattr(decoder, "forward", watched_forward)
    if prefer_eos:  # the model is this test's own: the hook goes with it
        decoder.output_projection.register_forward_hook(eos_first)
    return seen


def test_summaries_are_decoded_as_bart_hub_interface_does(prepared, tiny_bart, tmp_path, monkeypatch):
    """As BARTHubInterface.sample (summarize.py): the model reads <s> + the article's GPT-2 BPE +
    </s>, made from the raw test.source; <s> is forced as the first summary token and counts
    towards min_len; the summaries are written in the articles' order."""
    import torch
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    data, _, gpt2 = prepared
    run, _ = tiny_bart
    text, bin_dir = data / "cnn_dm", data / "data-bin" / "cnn_dm"
    loaded, load = [], summarize.load_bart

    def load_and_watch(*args, **kwargs):
        bart = load(*args, **kwargs)
        loaded.append((bart, _watch_generation(bart, monkeypatch, prefer_eos=True)))
        return bart

    monkeypatch.setattr(summarize, "load_bart", load_and_watch)
    min_len, beam, out = 6, 2, tmp_path / "test.hypo"
    summarize.main(["--checkpoint", str(run / "checkpoint_best.pt"), "--data", str(bin_dir),
                    "--gpt2-dir", str(text / "gpt2"), "--source", str(text / "test.source"), "--out", str(out),
                    "--cpu", "--beam", str(beam), "--min-len", str(min_len), "--max-len-b", "20"])
    (bart, seen), = loaded
    dictionary = bart.task.source_dictionary
    bos, eos = dictionary.bos(), dictionary.eos()
    encoder = get_encoder(str(gpt2["encoder.json"]), str(gpt2["vocab.bpe"]))
    articles = prepare.read_lines(text / "test.source")
    expected_sources = [[bos] + [dictionary.index(str(i)) for i in encoder.encode(a.strip())] + [eos]
                        for a in articles]
    hypothesis_of = {}
    for sources, prefix, hypos in seen["steps"]:
        assert prefix is not None and prefix.tolist() == [[bos]] * len(sources)  # <s> forced first
        hypothesis_of.update((tuple(src), hypo) for src, hypo in zip(sources, hypos))
    assert sorted(hypothesis_of) == sorted(map(tuple, expected_sources))  # <s> article </s>, nothing cut
    hypotheses = [hypothesis_of[tuple(src)] for src in expected_sources]
    for hypo in hypotheses:
        # the forced <s>, then min_len - 1 tokens: <s> is one of the min_len before </s> may come
        assert hypo[0] == bos and hypo[-1] == eos and len(hypo) - 1 == min_len, hypo
    # the decoder starts from </s> (fairseq's start symbol) and is then fed the forced <s> (in each
    # sentence's live beam: the others hold -inf scores after the forced step)
    for x in seen["decoder_inputs"]:
        assert (x[:, 0] == eos).all()
        assert x.size(1) < 2 or (x.view(-1, beam, x.size(1))[:, :, 1] == bos).any(dim=1).all()
    assert max(x.size(1) for x in seen["decoder_inputs"]) == min_len + 1
    assert prepare.read_lines(out) == [summarize.one_line(bart.decode(torch.tensor(h))) for h in hypotheses]
    assert not list(tmp_path.glob("*.part"))


def stand_in_evaluation(tmp_path):
    """A stand-in python that records the summarize and rouge steps (and the CUDA probe, which it
    passes: a GPU seems present), and the files evaluate-cnndm.sh checks for.  The settings, not a
    model, are under test.  Returns the calls file and the --data, --text-dir and --save-dir folders."""
    python = tmp_path / "python"
    calls = recording_python(python, run=False)
    data, text, run = tmp_path / "bin", tmp_path / "text", tmp_path / "run"
    for path in (data / "dict.source.txt", text / "test.source", text / "test.target", text / "val.source",
                 text / "val.target", text / "gpt2" / "encoder.json", text / "gpt2" / "vocab.bpe",
                 run / "checkpoint_best.pt"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return calls, data, text, run


def evaluate_with_stand_in(tmp_path, *args, **env):
    calls, data, text, run = stand_in_evaluation(tmp_path)
    proc = run_script("evaluate-cnndm.sh", "--data", data, "--text-dir", text, "--gpt2-dir", text / "gpt2",
                      "--save-dir", run, *args, env=script_env(PYTHON=str(tmp_path / "python"), **env))
    recorded = calls.read_text().splitlines() if calls.exists() else []
    steps = [line.split() for line in recorded if line.startswith("-m ")]
    return proc, steps


def test_evaluate_cnndm_defaults_are_summarize_pys(tmp_path):
    proc, steps = evaluate_with_stand_in(tmp_path, "--cpu")
    text = tmp_path / "text"
    assert proc.returncode == 0, proc.stderr
    assert [step[:2] for step in steps] == [["-m", "rdrop_fairseq.recipes.summarize"],
                                            ["-m", "rdrop_fairseq.recipes.rouge"]]
    # examples/bart/summarize.py's CNN_KWARGS
    assert [flag(steps[0], name) for name in ("--beam", "--lenpen", "--max-len-b", "--min-len",
                                              "--no-repeat-ngram-size", "--source")] == \
        ["4", "2.0", "140", "55", "3", str(text / "test.source")]
    assert flag(steps[1], "--references") == str(text / "test.target")


def test_evaluate_cnndm_valid_subset_reads_the_val_files(tmp_path):
    proc, (summarize_step, rouge_step) = evaluate_with_stand_in(tmp_path, "--subset", "valid", "--cpu")
    text, run = tmp_path / "text", tmp_path / "run"
    assert proc.returncode == 0, proc.stderr
    assert (flag(summarize_step, "--source"), flag(summarize_step, "--out")) == \
        (str(text / "val.source"), str(run / "valid.hypo"))
    assert rouge_step[2:] == [str(run / "valid.hypo"), "--references", str(text / "val.target"),
                              "--json", str(run / "rouge-valid.json")]


@pytest.mark.parametrize("args,env,device_flags", [
    ([], {}, ["--fp16"]),  # FP16=auto on a GPU: half precision, as summarize.py
    (["--cpu"], {}, ["--cpu"]),
    (["--", "--cpu"], {}, ["--cpu"]),  # summarize refuses --cpu with --fp16
    ([], {"CPU": "1"}, ["--cpu"]),
    ([], {"FP16": "0"}, []),
])
def test_evaluate_cnndm_asks_for_the_cpu_or_half_precision(tmp_path, args, env, device_flags):
    proc, (summarize_step, _) = evaluate_with_stand_in(tmp_path, *args, **env)
    assert proc.returncode == 0, proc.stderr
    assert {arg for arg in summarize_step if arg in ("--cpu", "--fp16")} == set(device_flags)


@pytest.mark.parametrize("env,message", [
    ({"BEAM": "0"}, "BEAM must be a positive integer, not '0'"),
    ({"BATCH_SIZE": "8x"}, "BATCH_SIZE must be a positive integer, not '8x'"),
    ({"MIN_LEN": "-1"}, "MIN_LEN must be a positive integer, not '-1'"),
    ({"MAX_LEN_B": "1.5"}, "MAX_LEN_B must be a positive integer, not '1.5'"),
    ({"NO_REPEAT_NGRAM_SIZE": "-1"}, "NO_REPEAT_NGRAM_SIZE must be an integer >= 0, not '-1'"),
    ({"LENPEN": "nan"}, "LENPEN must be a number, not 'nan'"),
])
def test_evaluate_cnndm_names_a_bad_setting_before_summarizing(tmp_path, env, message):
    proc, steps = evaluate_with_stand_in(tmp_path, "--cpu", **env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert steps == []


class RunsCommand:
    """Unpickling it runs a command: a crafted checkpoint's move, harmless here (it touches a file)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_crafted_checkpoint_is_refused(prepared, tiny_bart, tmp_path, monkeypatch, capsys):
    """The checkpoint goes through rdrop_fairseq's safe loading, as fairseq-generate's did."""
    import torch

    from rdrop_fairseq import safe_load

    data, _, _ = prepared
    run, _ = tiny_bart
    monkeypatch.delenv(safe_load.TRUST_ENV, raising=False)
    monkeypatch.setattr(safe_load, "_trusted_by_flag", False)
    state = torch.load(run / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    state["extra_state"]["injected"] = RunsCommand(tmp_path / "pwned")
    torch.save(state, tmp_path / "crafted.pt")
    out = tmp_path / "test.hypo"
    with pytest.raises(SystemExit) as exit_info:
        summarize.main(["--checkpoint", str(tmp_path / "crafted.pt"), "--data", str(data / "data-bin" / "cnn_dm"),
                        "--gpt2-dir", str(data / "cnn_dm" / "gpt2"), "--source", str(data / "cnn_dm" / "test.source"),
                        "--out", str(out), "--cpu"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "posix.system" in err and f"{safe_load.TRUST_ENV}=1" in err, err
    assert not (tmp_path / "pwned").exists() and not out.exists()


def _repeated_ngrams(tokens, n):
    ngrams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(ngrams) - len(set(ngrams))


def test_no_repeat_ngram_size_blocks_repeats(prepared, tiny_bart, monkeypatch):
    """fairseq's Python fallback of NGramRepeatBlock (no CUDA extension) blocked nothing; with
    rdrop_fairseq.compat's the summaries have no repeated trigram, while the same model repeats
    them without blocking."""
    data, _, _ = prepared
    run, _ = tiny_bart
    bart = summarize.load_bart(run / "checkpoint_best.pt", data / "data-bin" / "cnn_dm", data / "cnn_dm" / "gpt2",
                               cpu=True)
    seen = _watch_generation(bart, monkeypatch)
    articles = prepare.read_lines(data / "cnn_dm" / "test.source")
    eos = bart.task.target_dictionary.eos()
    repeats = {}
    for size in (0, 3):
        seen["steps"].clear()
        list(summarize.summarize(bart, articles, beam=2, min_len=20, max_len_b=30, no_repeat_ngram_size=size))
        # the generator's sequences start with </s>, which the n-grams include
        repeats[size] = [_repeated_ngrams([eos] + hypo, 3) for _, _, hypos in seen["steps"] for hypo in hypos]
    assert len(repeats[3]) == 2 and repeats[3] == [0, 0] and max(repeats[0]) > 0, repeats
