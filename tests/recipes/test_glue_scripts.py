"""scripts/{prepare,train,evaluate}-glue.sh end to end on fixture archives in the upstream
formats: a tiny RoBERTa trained from scratch on CoLA (classification), then packed as the
roberta.large tarball and fine-tuned on STS-B (sentence pairs, regression) through the
checked download."""
import json
import shlex
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from fairseq.data import Dictionary, data_utils

from fixtures_glue_cnndm import (build_cola, build_mrpc, build_rte, build_stsb, gpt2_hashes, tsv_text,
                                 write_gpt2_files)
from fixtures_upstream import run_script
from rdrop_fairseq.recipes import prepare, validate_log
from rdrop_fairseq.recipes.datasets import glue, gpt2, pretrained
from test_evaluate_scripts import stand_in
from test_train_scripts import dry_run, flag, once, recording_python, script_env

pytestmark = pytest.mark.e2e


def gpt2_args(paths):
    args = [arg for path in paths.values() for arg in ("--archive", path)]
    return args + [arg for value in gpt2_hashes(paths) for arg in ("--hash", value)]


def prepared(base, task, build):
    def make(dest):
        paths = write_gpt2_files(dest / "gpt2")
        proc = run_script("prepare-glue.sh", "--task", task, "--out", dest / "data", "--archive", build(dest),
                          *gpt2_args(paths), "--workers", "1")
        assert proc.returncode == 0, proc.stderr[-3000:]

    return once(base / f"glue-{task}", make) / "data" / "data-bin" / "glue" / task


@pytest.fixture(scope="module")
def cola(tmp_path_factory):
    return prepared(tmp_path_factory.getbasetemp(), "CoLA", build_cola)


@pytest.fixture(scope="module")
def stsb(tmp_path_factory):
    return prepared(tmp_path_factory.getbasetemp(), "STS-B", build_stsb)


def test_prepare_binarises_inputs_and_labels_as_fairseqs_recipe(cola, stsb):
    dictionary = Dictionary.load(str(cola / "input0" / "dict.txt"))
    # CoLA: headerless train/dev, so every line is an example; the test file's header is dropped.
    assert len(data_utils.load_indexed_dataset(str(cola / "input0" / "train"), dictionary)) == 48
    assert len(data_utils.load_indexed_dataset(str(cola / "input0" / "test"), dictionary)) == 4
    assert not (cola / "input1").exists()
    labels = Dictionary.load(str(cola / "label" / "dict.txt"))
    assert {"0", "1"} <= set(labels.symbols)
    assert len(data_utils.load_indexed_dataset(str(cola / "label" / "valid"), labels)) == 12
    for name in ("input0", "input1"):
        assert len(data_utils.load_indexed_dataset(str(stsb / name / "train"),
                                                   Dictionary.load(str(stsb / name / "dict.txt")))) == 40
    # STS-B: raw scores / 5, no label dictionary.
    assert not (stsb / "label" / "dict.txt").exists()
    raw = prepare.read_lines(stsb.parents[2] / "glue" / "STS-B" / "raw" / "label" / "train")
    scaled = [float(x) for x in prepare.read_lines(stsb / "label" / "train.label")]
    assert scaled == pytest.approx([float(x) / 5 for x in raw], abs=1e-5) and max(scaled) <= 1


def test_gpt2_bpe_is_fairseqs_encoder(stsb):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    gpt2_dir = stsb.parents[3] / "gpt2"
    encoder = get_encoder(str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe"))
    text_dir = stsb.parents[2] / "glue" / "STS-B"
    raw, bpe = (prepare.read_lines(text_dir / kind / "input1" / "valid") for kind in ("raw", "bpe"))
    assert bpe == [" ".join(map(str, encoder.encode(line.strip()))) for line in raw]
    assert encoder.decode([int(t) for t in bpe[0].split()]) == raw[0]


def test_column_layouts_of_rte_and_mrpc(tmp_path):
    with zipfile.ZipFile(build_rte(tmp_path)) as zf:
        zf.extractall(tmp_path)
    names = glue.split_columns(glue.TASKS["RTE"], tmp_path / "RTE", tmp_path / "rte")
    assert names == {"valid": ["valid"], "test": ["test"]}
    raw_rte = [line.split("\t") for line in prepare.read_lines(tmp_path / "RTE" / "dev.tsv")[1:]]
    assert prepare.read_lines(tmp_path / "rte" / "input1" / "valid") == [row[2] for row in raw_rte]
    assert prepare.read_lines(tmp_path / "rte" / "label" / "valid") == [row[3] for row in raw_rte]
    files = build_mrpc(tmp_path / "mrpc-src")
    glue.split_mrpc(files["msr_paraphrase_train.txt"], files["msr_paraphrase_test.txt"],
                    files["mrpc_dev_ids.tsv"], tmp_path / "MRPC")
    mrpc = tmp_path / "mrpc"
    glue.split_columns(glue.TASKS["MRPC"], tmp_path / "MRPC", mrpc)
    assert len(prepare.read_lines(mrpc / "label" / "valid")) == 4  # ids 0, 3, 6, 9 of 12
    assert len(prepare.read_lines(mrpc / "input0" / "train")) == 8
    assert prepare.read_lines(tmp_path / "MRPC" / "test.tsv")[0].startswith("index\t")


def write_tsvs(folder, files):
    folder.mkdir(parents=True)
    for name, rows in files.items():
        (folder / f"{name}.tsv").write_text(tsv_text(None, rows))


def test_column_layouts_of_mnli_qnli_qqp_and_sst2(tmp_path):
    # The GLUE download's headers.  MNLI's dev rows have 5 annotators' labels before the gold one,
    # and dev_mismatched is valid1 (README.glue.md reports both).
    mnli_header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                   "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]

    def mnli_row(text, labels=()):
        return ["0", "1", "1e", "fiction", *[f"( {text} parse )"] * 4, f"{text} premise", f"{text} hypothesis",
                *labels]

    dev_header = mnli_header + ["label1", "label2", "label3", "label4", "label5", "gold_label"]
    write_tsvs(tmp_path / "MNLI", {
        "train": [mnli_header + ["label1", "gold_label"], mnli_row("train", ["neutral"] * 2)],
        "dev_matched": [dev_header, mnli_row("matched", ["neutral", "contradiction"] + ["entailment"] * 4)],
        "dev_mismatched": [dev_header, mnli_row("mismatched", ["entailment", "neutral"] + ["contradiction"] * 4)],
        "test_matched": [mnli_header, mnli_row("test matched")],
        "test_mismatched": [mnli_header, mnli_row("test mismatched")]})
    read = prepare.read_lines
    mnli = tmp_path / "mnli"
    assert glue.split_columns(glue.TASKS["MNLI"], tmp_path / "MNLI", mnli) == \
        {"valid": ["valid", "valid1"], "test": ["test", "test1"]}
    assert [read(mnli / "label" / split) for split in ("train", "valid", "valid1")] == \
        [["neutral"], ["entailment"], ["contradiction"]]
    assert (read(mnli / "input0" / "valid1"), read(mnli / "input1" / "test1")) == \
        (["mismatched premise"], ["test mismatched hypothesis"])

    write_tsvs(tmp_path / "QNLI", {
        **{split: [["index", "question", "sentence", "label"], ["0", "Who?", f"The {split} one.", "entailment"]]
           for split in ("train", "dev")},
        "test": [["index", "question", "sentence"], ["0", "Who?", "The test one."]]})
    glue.split_columns(glue.TASKS["QNLI"], tmp_path / "QNLI", tmp_path / "qnli")
    assert (read(tmp_path / "qnli" / "label" / "valid"), read(tmp_path / "qnli" / "input1" / "test")) == \
        (["entailment"], ["The test one."])

    # QQP: train/dev lines with another field count than 6 are dropped (preprocess_GLUE_tasks.sh's awk)
    qqp_header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsvs(tmp_path / "QQP", {
        **{split: [qqp_header, ["0", "1", "2", "How?", "Why?", "0"], ["1", "3", "4", "What?", "1"],
                   ["2", "5", "6", "When?", "Where?", "1"]] for split in ("train", "dev")},
        "test": [["id", "question1", "question2"], ["0", "Who?", "Whom?"]]})
    glue.split_columns(glue.TASKS["QQP"], tmp_path / "QQP", tmp_path / "qqp")
    assert (read(tmp_path / "qqp" / "input0" / "train"), read(tmp_path / "qqp" / "label" / "valid")) == \
        (["How?", "When?"], ["0", "1"])
    assert (read(tmp_path / "qqp" / "input0" / "test"), read(tmp_path / "qqp" / "input1" / "test")) == \
        (["Who?"], ["Whom?"])

    write_tsvs(tmp_path / "SST-2", {
        **{split: [["sentence", "label"], [f"a fine {split} film", "1"]] for split in ("train", "dev")},
        "test": [["index", "sentence"], ["0", "a dull test film"]]})
    glue.split_columns(glue.TASKS["SST-2"], tmp_path / "SST-2", tmp_path / "sst2")
    assert (read(tmp_path / "sst2" / "label" / "valid"), read(tmp_path / "sst2" / "input0" / "test")) == \
        (["1"], ["a dull test film"])


def test_a_carriage_return_inside_a_row_keeps_the_row_whole(tmp_path):
    rte = tmp_path / "RTE"
    rte.mkdir()
    rows = ["index\tsentence1\tsentence2\tlabel", "0\tA cat\rsat.\tA cat sat.\tentailment",
            "1\tDogs bark.\tCats bark.\tnot_entailment"]
    for split in ("train", "dev"):
        (rte / f"{split}.tsv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    (rte / "test.tsv").write_bytes("index\tsentence1\tsentence2\n0\tA.\tB.\n".encode())
    glue.split_columns(glue.TASKS["RTE"], rte, tmp_path / "rte")
    assert prepare.read_lines(tmp_path / "rte" / "label" / "valid") == ["entailment", "not_entailment"]
    assert prepare.read_lines(tmp_path / "rte" / "input0" / "valid") == ["A cat sat.", "Dogs bark."]


def test_corrupt_downloads_are_refused(tmp_path, capsys):
    paths = write_gpt2_files(tmp_path / "gpt2")
    rte_zip = build_rte(tmp_path)
    # The fixture's encoder.json is not GPT-2's: without --hash it fails the published sha256.
    with pytest.raises(SystemExit):
        glue.main(["--task", "RTE", "--out", str(tmp_path / "a"), "--archive", str(rte_zip),
                   *[str(arg) for p in paths.values() for arg in ("--archive", p)]])
    err = capsys.readouterr().err
    assert "encoder.json: sha256 is" in err and "196139668be63f3b5d6574427317ae82f612a97c" in err
    truncated = tmp_path / "cut" / "RTE.zip"
    truncated.parent.mkdir()
    truncated.write_bytes(rte_zip.read_bytes()[:-200])
    with pytest.raises(SystemExit):
        glue.main(["--task", "RTE", "--out", str(tmp_path / "b"), "--archive", str(truncated),
                   *map(str, gpt2_args(paths))])
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "b" / "data-bin").exists()


def test_vocab_bpe_is_checked_against_its_published_hash_too(tmp_path, capsys):
    paths = write_gpt2_files(tmp_path / "gpt2")
    encoder_only = [value for value in gpt2_hashes(paths) if value.startswith("encoder.json=")]
    with pytest.raises(SystemExit):
        glue.main(["--task", "RTE", "--out", str(tmp_path / "a"), "--archive", str(build_rte(tmp_path)),
                   *[str(arg) for p in paths.values() for arg in ("--archive", p)], "--hash", *encoder_only])
    err = capsys.readouterr().err
    assert "vocab.bpe: sha256 is" in err and "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5" in err
    assert not (tmp_path / "a" / "data-bin").exists()


def test_gpt2_bpe_strips_each_line_and_keeps_an_empty_one_empty(tmp_path):
    # multiprocessing_bpe_encoder.py --keep-empty: line.strip(), and an empty line stays a line
    files = write_gpt2_files(tmp_path / "gpt2")
    stripped = gpt2.encode_lines(["A cat sat.", "", "Dogs bark."], files)
    assert stripped[1] == "" and all(stripped[0::2])
    assert gpt2.encode_lines(["  A cat sat.\t", " ", "Dogs bark. "], files) == stripped


def test_a_model_tarball_is_unpacked_where_the_path_only_answer_says(tmp_path, capsys):
    package = tmp_path / "bart.large"
    package.mkdir()
    (package / "model.pt").write_bytes(b"weights")
    (package / "dict.txt").write_text("4 10\n")
    tarball = tmp_path / "bart.large.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(package, arcname="bart.large")
    models = tmp_path / "models"
    pretrained.main(["bart.large", "--out", str(models), "--path-only"])
    promised = Path(capsys.readouterr().out.splitlines()[-1])
    pretrained.main(["bart.large", "--out", str(models), "--archive", str(tarball)])
    assert Path(capsys.readouterr().out.splitlines()[-1]) == promised
    assert promised.read_bytes() == b"weights" and (promised.parent / "dict.txt").read_text() == "4 10\n"
    assert pretrained.parser().parse_args(["bart.large"]).out == Path("models")  # the help's "./models"


def test_a_truncated_model_tarball_is_refused(tmp_path, capsys):
    package = tmp_path / "roberta.large"
    package.mkdir()
    (package / "model.pt").write_bytes(bytes(range(256)) * 400)
    (package / "dict.txt").write_text("4 10\n")
    tarball = tmp_path / "roberta.large.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(package, arcname="roberta.large")
    tarball.write_bytes(tarball.read_bytes()[:-300])
    with pytest.raises(SystemExit):
        pretrained.main(["roberta.large", "--out", str(tmp_path / "models"), "--archive", str(tarball)])
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not list((tmp_path / "models").rglob("model.pt"))


# examples/roberta/README.glue.md's table: --num-classes, --lr, bsz, total updates, warmup updates
GLUE_TABLE = {"MNLI": ("3", "1e-5", "32", "123873", "7432"), "QNLI": ("2", "1e-5", "32", "33112", "1986"),
              "QQP": ("2", "1e-5", "32", "113272", "28318"), "RTE": ("2", "2e-5", "16", "2036", "122"),
              "SST-2": ("2", "1e-5", "32", "20935", "1256"), "MRPC": ("2", "1e-5", "16", "2296", "137"),
              "CoLA": ("2", "1e-5", "16", "5336", "320"), "STS-B": ("1", "2e-5", "16", "3598", "214")}


def test_published_hyperparameters_per_task():
    for task, row in GLUE_TABLE.items():
        argv = dry_run("train-glue.sh", "--task", task)
        assert tuple(flag(argv, name) for name in ("--num-classes", "--lr", "--batch-size", "--total-num-update",
                                                   "--warmup-updates")) == row, task
        # README.glue.md's command, the same for every task
        assert (flag(argv, "--init-token"), flag(argv, "--separator-token"), flag(argv, "--max-positions"),
                flag(argv, "--dropout"), flag(argv, "--attention-dropout"), flag(argv, "--weight-decay"),
                flag(argv, "--adam-betas"), flag(argv, "--adam-eps"), flag(argv, "--clip-norm"),
                flag(argv, "--lr-scheduler"), flag(argv, "--max-epoch")) == \
            ("0", "2", "512", "0.1", "0.1", "0.1", "(0.9, 0.98)", "1e-06", "0.0", "polynomial_decay", "10"), task
    rte = dry_run("train-glue.sh", "--task", "RTE")
    assert (flag(rte, "--task"), flag(rte, "--criterion"), flag(rte, "--rdrop-alpha")) == \
        ("rdrop_sentence_prediction", "rdrop_sentence_prediction", "1.0")
    mnli = dry_run("train-glue.sh", "--task", "MNLI", "--baseline")
    assert (flag(mnli, "--task"), flag(mnli, "--criterion"), flag(mnli, "--num-classes"), flag(mnli, "--lr")) == \
        ("sentence_prediction", "sentence_prediction", "3", "1e-5")
    stsb = dry_run("train-glue.sh", "--task", "STS-B")
    assert "--regression-target" in stsb and flag(stsb, "--best-checkpoint-metric") == "loss"
    assert "--report-mcc" in dry_run("train-glue.sh", "--task", "CoLA")
    assert flag(dry_run("train-glue.sh", "--task", "QQP", "--double-batch"), "--batch-size") == "64"


def glue_command(*flags, gpus="0", **env):
    """(fairseq-train argv, stderr) of ``train-glue.sh --print-args``, with ``gpus`` as CUDA_VISIBLE_DEVICES."""
    proc = run_script("train-glue.sh", "--print-args", *flags,
                      env=script_env(FP16="0", CUDA_VISIBLE_DEVICES=gpus, **env))
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[0] == "fairseq-train"
    return argv[1:], proc.stderr


def schedule(argv):
    return tuple(flag(argv, name) for name in ("--batch-size", "--max-tokens", "--max-epoch", "--total-num-update",
                                               "--warmup-updates", "--max-update"))


def test_double_batch_doubles_the_batch_and_the_epochs_at_the_same_updates():
    # MRPC: batch 16, 2296 updates (10 epochs), 137 warmup.
    for variant in ([], ["--baseline"]):
        assert schedule(glue_command("--task", "MRPC", *variant)[0]) == ("16", "4400", "10", "2296", "137", "2296")
    assert schedule(glue_command("--task", "MRPC", "--double-batch")[0]) == ("32", "8800", "20", "2296", "137", "2296")
    assert schedule(glue_command("--task", "QQP", "--double-batch")[0]) == ("64", "8800", "20", "113272", "28318",
                                                                            "113272")
    # Env values are the single-batch ones, for either variant.
    env = dict(BATCH_SIZE="10", MAX_TOKENS="1000", MAX_EPOCH="3", TOTAL_NUM_UPDATE="7", WARMUP="1")
    assert schedule(glue_command("--task", "RTE", "--baseline", **env)[0]) == ("10", "1000", "3", "7", "1", "7")
    assert schedule(glue_command("--task", "RTE", "--double-batch", **env)[0]) == ("20", "2000", "6", "7", "1", "7")
    assert schedule(glue_command("--task", "SST-2", "--smoke", "--double-batch")[0]) == ("16", "8800", "2", "4", "1",
                                                                                      "4")
    # After `--`, fairseq-train flags are taken as they are.
    argv, _ = glue_command("--task", "RTE", "--double-batch", "--", "--max-update", "500", "--max-tokens", "99")
    assert (flag(argv, "--max-update"), flag(argv, "--max-tokens"), flag(argv, "--total-num-update")) == \
        ("500", "99", "2036")
    for name, value in (("TOTAL_NUM_UPDATE", "0"), ("WARMUP", "-1"), ("MAX_TOKENS", "lots"), ("MAX_EPOCH", "0")):
        proc = run_script("train-glue.sh", "--task", "RTE", "--double-batch", "--print-args",
                          env=script_env(FP16="0", **{name: value}))
        assert proc.returncode == 2 and f"{name} must be a" in proc.stderr, name


REPORT_FLAGS = {"CoLA": "--report-mcc", "MRPC": "--report-acc-and-f1", "QQP": "--report-acc-and-f1",
                "STS-B": "--report-pearson-and-spearman"}


@pytest.mark.parametrize("task", sorted(REPORT_FLAGS))
def test_stock_criterion_reports_glue_metrics_on_one_gpu_only(task):
    report = REPORT_FLAGS[task]
    for variant in ("--baseline", "--double-batch"):
        argv, err = glue_command("--task", task, variant)
        assert report in argv and err == ""
        # fairseq 0.12.3.1's sentence_prediction would sum its per-example lists across workers and fail.
        argv, err = glue_command("--task", task, variant, gpus="0,1", BATCH_SIZE="8")
        assert not any(arg.startswith("--report-") for arg in argv)
        assert err.count("\n") == 1 and f"{report} left out" in err and "several GPUs" in err
        assert f"scripts/evaluate-glue.sh --task {task} " in err and err.rstrip().endswith(f"-- {report} afterwards")
    # rdrop_sentence_prediction gathers them, on any number of GPUs.
    argv, err = glue_command("--task", task, gpus="0,1,2,3", BATCH_SIZE="4")
    assert report in argv and err == ""


def test_world_size_seen_for_the_report_flags():
    def dropped(*flags, gpus="0", **env):
        argv, err = glue_command("--task", "CoLA", "--baseline", *flags, gpus=gpus, BATCH_SIZE="8", **env)
        assert ("--report-mcc" in argv) != ("left out" in err)
        return "--report-mcc" not in argv

    assert not dropped() and not dropped(gpus="") and not dropped(gpus="0,-1,2")
    assert dropped(gpus="0,1") and dropped(gpus="GPU-a,GPU-b")
    assert dropped("--", "--distributed-world-size", "2") and dropped("--", "--distributed-world-size=2")
    assert not dropped("--", "--distributed-world-size", "1", gpus="0,1")
    assert dropped(WORLD_SIZE="2", RANK="0", MASTER_ADDR="h", MASTER_PORT="9")
    assert dropped(DISTRIBUTED_PORT="9", SLURM_NTASKS="2", SLURM_NNODES="1")
    assert dropped(DISTRIBUTED_PORT="9", SLURM_NTASKS="2", SLURM_NNODES="2")
    assert not dropped(DISTRIBUTED_PORT="9", SLURM_NTASKS="1", SLURM_NNODES="1")
    assert not dropped("--cpu", gpus="0,1") and not dropped("--", "--cpu", gpus="0,1")


def test_the_one_gpu_batch_size_is_not_used_on_several_unless_asked_for():
    # MNLI: batch 32 for 123,873 updates in 10 epochs on one GPU
    proc = run_script("train-glue.sh", "--task", "MNLI", "--print-args",
                      env=script_env(FP16="0", CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "batch size for MNLI (32) is for one GPU, and fairseq-train would use 4" in proc.stderr
    assert "about 1/4 of its 123873 updates" in proc.stderr and "BATCH_SIZE=8 keeps the table's batch" in proc.stderr
    assert flag(glue_command("--task", "MNLI", gpus="0,1,2,3", BATCH_SIZE="8")[0], "--batch-size") == "8"
    assert flag(glue_command("--task", "MNLI", "--", "--batch-size", "8", gpus="0,1,2,3")[0], "--batch-size") == "8"
    assert flag(glue_command("--task", "MNLI", "--", "--distributed-world-size", "1", gpus="0,1")[0],
                "--batch-size") == "32"


def test_bad_input_is_named(tmp_path):
    for script, extra in (("train-glue.sh", ["--print-args"]), ("evaluate-glue.sh", [])):
        proc = run_script(script, "--task", "WNLI", *extra)
        assert proc.returncode == 2 and "--task must be one of" in proc.stderr, script
    proc = run_script("train-glue.sh", "--task", "RTE", "--print-args", env=script_env(BATCH_SIZE="many"))
    assert proc.returncode == 2 and "BATCH_SIZE must be a positive integer" in proc.stderr
    proc = run_script("train-glue.sh", "--task", "RTE", "--data", tmp_path, env=script_env(FP16="0"))
    assert proc.returncode == 2 and f"{tmp_path} has no input0/dict.txt" in proc.stderr
    # inputs without labels, as a preparation interrupted before its label step leaves them
    (tmp_path / "input0").mkdir()
    (tmp_path / "input0" / "dict.txt").write_text("a 1\n")
    for task, labels in (("RTE", "label/dict.txt"), ("STS-B", "label/train.label")):
        for script in ("train-glue.sh", "evaluate-glue.sh"):
            proc = run_script(script, "--task", task, "--data", tmp_path, "--save-dir", tmp_path,
                              env=script_env(FP16="0"))
            assert proc.returncode == 2 and f"{tmp_path} has no {labels}" in proc.stderr, (script, task)


def test_mnli_is_evaluated_on_both_dev_sets(tmp_path):
    # README.glue.md reports MNLI-m and MNLI-mm: fairseq-validate on valid (matched) and valid1 (mismatched).
    # A stand-in fairseq-validate logs a record for each as fairseq's json progress bar does.
    records = [("valid", 90.5), ("valid1", 90.1)]
    log = "".join(f"2024-01-01 00:00:00 | INFO | {subset} | "
                  f'{{"{subset}_loss": "0.3", "{subset}_accuracy": "{accuracy}", "{subset}_wps": "100"}}\n'
                  for subset, accuracy in records)
    path = stand_in(tmp_path / "bin", "fairseq-validate", f"printf '%s' '{log}'")
    data, run = tmp_path / "data", tmp_path / "run"
    for name in ("input0/dict.txt", "input1/dict.txt", "label/dict.txt"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("a 1\n")
    run.mkdir()
    (run / "checkpoint_best.pt").write_bytes(b"")
    # PYTHON=true: the log is read in this process (no second fairseq import)
    proc = run_script("evaluate-glue.sh", "--task", "MNLI", "--data", data, "--save-dir", run, "--cpu",
                      env=script_env(PATH=path, PYTHON="true"))
    assert proc.returncode == 0, proc.stderr
    assert flag((tmp_path / "bin" / "fairseq-validate.args").read_text().split(), "--valid-subset") == "valid,valid1"
    validate_log.main([str(run / "validate-valid-valid1.log"), "--json", str(run / "glue-dev.json")])
    assert json.loads((run / "glue-dev.json").read_text()) == {
        subset: {"loss": 0.3, "accuracy": accuracy} for subset, accuracy in records}


@pytest.mark.parametrize("script", ["prepare-glue.sh", "train-glue.sh", "evaluate-glue.sh",
                                    "prepare-cnndm.sh", "train-cnndm.sh", "evaluate-cnndm.sh"])
def test_help(script):
    proc = run_script(script, "--help")
    assert proc.returncode == 0 and "scripts/" + script in proc.stdout


def test_smoke_and_distributed_commands():
    argv = dry_run("train-glue.sh", "--task", "SST-2", "--smoke")
    assert "--cpu" in argv and int(flag(argv, "--max-update")) <= 10 and flag(argv, "--encoder-layers") == "1"
    assert "smoke" in flag(argv, "--save-dir") and flag(argv, "--finetune-from-model") is None
    argv = dry_run("train-glue.sh", "--task", "SST-2", WORLD_SIZE=2, RANK=1, LOCAL_RANK=1, MASTER_ADDR="h",
                   MASTER_PORT=9, BATCH_SIZE=16)
    assert (flag(argv, "--distributed-world-size"), flag(argv, "--distributed-rank")) == ("2", "1")
    assert flag(argv, "--batch-size") == "16"


def fake_task_data(data):
    for name in ("input0/dict.txt", "label/dict.txt", "dict.source.txt"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("a 1\n")
    return data


@pytest.mark.parametrize("script, model, env", [("train-glue.sh", "roberta.large", "ROBERTA_PATH"),
                                               ("train-cnndm.sh", "bart.large", "BART_PATH")])
def test_a_failed_model_fetch_names_the_scripts_own_ways_round_it(tmp_path, script, model, env):
    # the fetching module's own advice names its --archive and --mirror, which the train scripts do not take
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\nif [[ $2 == rdrop_fairseq.recipes.datasets.pretrained ]]; then\n'
                      f'  echo "error: could not download {model}" >&2; exit 1\nfi\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    data = fake_task_data(tmp_path / "data")
    task = ["--task", "RTE"] if script == "train-glue.sh" else []
    proc = run_script(script, *task, "--data", data, "--save-dir", tmp_path / "run",
                      env=script_env(FP16="0", PYTHON=str(python), MODELS_DIR=str(tmp_path / "models")))
    assert proc.returncode == 2 and f"error: could not download {model}" in proc.stderr
    assert f"could not fetch {model}" in proc.stderr and f"--restore-file (or {env})" in proc.stderr
    assert "RDROP_DATA_MIRROR" in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", ["train-glue.sh", "train-cnndm.sh"])
def test_a_save_dir_that_is_a_file_is_refused_before_the_model_is_fetched(tmp_path, script):
    calls = recording_python(tmp_path / "bin" / "python", run=False)
    save_dir = tmp_path / "run"
    save_dir.write_text("notes\n")
    task = ["--task", "RTE"] if script == "train-glue.sh" else []
    proc = run_script(script, *task, "--data", fake_task_data(tmp_path / "data"), "--save-dir", save_dir,
                      env=script_env(FP16="0", PYTHON=str(tmp_path / "bin" / "python")))
    assert proc.returncode == 2 and f"--save-dir: {save_dir} is a file, not a folder" in proc.stderr
    assert not calls.exists() and save_dir.read_text() == "notes\n"


def test_the_several_gpu_batch_check_comes_before_the_model_is_fetched(tmp_path):
    calls = recording_python(tmp_path / "bin" / "python", run=False)
    proc = run_script("train-glue.sh", "--task", "MNLI", "--data", fake_task_data(tmp_path / "data"),
                      "--save-dir", tmp_path / "run",
                      env=script_env(FP16="0", CUDA_VISIBLE_DEVICES="0,1", PYTHON=str(tmp_path / "bin" / "python")))
    assert proc.returncode == 2 and "batch size for MNLI (32) is for one GPU" in proc.stderr
    assert not calls.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("script, model", [("train-glue.sh", "roberta.large"), ("train-cnndm.sh", "bart.large")])
def test_printed_command_names_the_pretrained_model_a_run_fetches(tmp_path, script, model, capsys):
    models = tmp_path / "my models"
    task = ["--task", "RTE"] if script == "train-glue.sh" else []
    argv = dry_run(script, *task, MODELS_DIR=str(models))
    assert flag(argv, "--finetune-from-model") == str(pretrained.model_path(models, model))
    # the reset flags would make fairseq refuse --finetune-from-model, and --restore-file would restart a re-run
    assert not [arg for arg in argv if arg.startswith("--reset-") or arg == "--restore-file"]
    assert not models.exists()
    pretrained.main([model, "--out", str(models), "--path-only"])
    assert capsys.readouterr().out.splitlines()[-1] == str(pretrained.model_path(models, model))


def test_finetune_and_evaluate_classification_then_regression(cola, stsb, tmp_path):
    cola_run = tmp_path / "cola"
    # the best checkpoint by the metric the paper reports for CoLA, as the docs say to ask for it
    proc = run_script("train-glue.sh", "--task", "CoLA", "--smoke", "--data", cola, "--save-dir", cola_run,
                      "--", "--best-checkpoint-metric", "mcc", "--maximize-best-checkpoint-metric",
                      env=script_env(FP16="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    assert '"kl_loss"' in log and '"valid_accuracy"' in log and '"valid_mcc"' in log
    valid = json.loads(log.split("| valid | ")[1].splitlines()[0])
    score = float(log.split("checkpoint_best.pt (epoch 1 @ 4 updates, score ")[1].split(")")[0])
    assert score == float(valid["valid_mcc"]) != float(valid["valid_accuracy"])

    # The CoLA model, packed as fairseq's roberta.large tarball, is the pre-trained model for STS-B.
    package = tmp_path / "pkg" / "roberta.large"
    package.mkdir(parents=True)
    shutil.copy(cola_run / "checkpoint_best.pt", package / "model.pt")
    shutil.copy(cola / "input0" / "dict.txt", package / "dict.txt")
    tarball = tmp_path / "roberta.large.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(package, arcname="roberta.large")
    model_pt = pretrained.fetch_model(pretrained.parser().parse_args(
        ["roberta.large", "--out", str(tmp_path / "models"), "--archive", str(tarball)]))
    assert model_pt == pretrained.model_path(tmp_path / "models", "roberta.large") and model_pt.is_file()
    run = tmp_path / "stsb-restored"
    proc = run_script("train-glue.sh", "--task", "STS-B", "--smoke", "--data", stsb, "--save-dir", run,
                      "--restore-file", model_pt, env=script_env(FP16="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loading pretrained model from " + str(model_pt) in proc.stderr + proc.stdout
    # Run again, as after an interruption: it resumes from its own last checkpoint, not from the pre-trained model.
    proc = run_script("train-glue.sh", "--task", "STS-B", "--smoke", "--data", stsb, "--save-dir", run,
                      "--restore-file", model_pt, env=script_env(FP16="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    assert f"Loaded checkpoint {run / 'checkpoint_last.pt'} (epoch 1 @ 4 updates)" in log
    assert "loading pretrained model" not in log
    quoted = tmp_path / "it's STS-B"  # the data path reaches fairseq inside a Python dict literal
    quoted.symlink_to(stsb)
    proc = run_script("evaluate-glue.sh", "--task", "STS-B", "--data", quoted, "--save-dir", run, "--cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "glue-dev.json").read_text())["valid"]
    assert {"loss", "pearson", "spearman"} <= set(metrics)
