"""scripts/train-*.sh: the fairseq-train commands they build, and real smoke runs on CPU.

The smoke runs (tiny models, a few updates, on slices of the corpora in ../shared)
are kept in pytest's session temp dir and reused by tests/recipes/test_evaluate_scripts.py.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rdrop_fairseq
from rdrop_fairseq.recipes import prepare
from fairseq_runs import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
CORPORA = REPO.parent / "shared" / "corpora"
TRAIN_SCRIPTS = ["train-iwslt14.sh", "train-wmt14.sh", "train-wikitext103.sh"]
# Variables the scripts read from the environment (${NAME:-...} and the like): dropped, so that a caller's
# exported LR or SEED changes no test; tests set them explicitly (the machine keeps its GPUs and PYTHONPATH).
SCRIPT_ENV = {name for path in SCRIPTS.glob("*.sh")
              for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)[:+=-]", path.read_text())
              if name not in ("CUDA_VISIBLE_DEVICES", "PYTHONPATH")}


def script_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(script, *args, log=None, **env):
    """Run a script; on failure show the end of its output."""
    proc = subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], env=script_env(**env),
                          capture_output=True, text=True)
    if log is not None:
        Path(log).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def dry_run(script, *flags, **env):
    env.setdefault("FP16", "0")  # skips the CUDA probe, which imports torch
    argv = shlex.split(run_script(script, "--print-args", *flags, **env).stdout)
    assert argv[0] == "fairseq-train"
    return argv[1:]


def flag(argv, name):
    """The value fairseq will see for ``name``: argparse keeps the last occurrence."""
    values = [argv[i + 1] for i, arg in enumerate(argv) if arg == name]
    return values[-1] if values else None


def recording_python(path, run=True):
    """A stand-in PYTHON at ``path`` that appends each call's arguments to ``python.calls`` beside it and, with
    ``run``, runs the call with this interpreter.  Returns the calls file."""
    calls = path.parent / "python.calls"
    path.parent.mkdir(parents=True, exist_ok=True)
    run_it = f'exec "{sys.executable}" "$@"\n' if run else ""
    path.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{calls}"\n{run_it}')
    path.chmod(0o755)
    return calls


def once(dest: Path, build):
    """Build ``dest`` unless an earlier test (of any module) already did.

    A folder left without ``.done`` is the remains of a build that failed: start it afresh, so that
    a crash shows as its own error and not as a later run resuming from its checkpoints.
    """
    done = dest / ".done"
    if not done.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        build(dest)
        done.touch()
    return dest


# ------------------------------------------------------------------ data and runs

def translation_data(base: Path) -> Path:
    def build(dest):
        raw = dest / "raw"
        raw.mkdir()
        for split, lines in (("train", 2000), ("valid", 100), ("test", 40)):
            for lang in ("de", "en"):
                source = prepare.read_lines(CORPORA / "lohelp-de-en" / f"{split}.{lang}")
                prepare.write_lines(raw / f"{split}.{lang}", source[:lines])
        prepare.prepare_parallel(raw, dest, "de", "en", bpe_merges=2000, workers=2)

    return once(base / "lohelp", build) / "bin"


def lm_data(base: Path) -> Path:
    def build(dest):
        for split, lines in (("train", 1500), ("valid", 100), ("test", 100)):
            source = prepare.read_lines(CORPORA / "austen-lm" / f"{split}.tok.txt")
            prepare.write_lines(dest / "text" / split, source[:lines])
        prepare.binarize(dest / "text", dest / "bin", "txt", tgt=None)

    return once(base / "austen", build) / "bin"


def iwslt_smoke_run(base: Path) -> Path:
    data = translation_data(base)
    return once(base / "iwslt14-rdrop", lambda dest: run_script(
        "train-iwslt14.sh", "--smoke", "--data", data, "--save-dir", dest, log=dest / "train.log"))


def wmt_two_process_baseline_run(base: Path) -> Path:
    """train-wmt14.sh --baseline as two torchrun-style CPU processes (gloo)."""
    data = translation_data(base)

    def build(dest):
        port = free_port()
        procs = []
        for rank in range(2):
            env = script_env(WORLD_SIZE=2, RANK=rank, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            log = open(dest / f"rank{rank}.log", "w")
            procs.append((subprocess.Popen(
                ["bash", str(SCRIPTS / "train-wmt14.sh"), "--smoke", "--baseline", "--data", str(data),
                 "--save-dir", str(dest)], env=env, stdout=log, stderr=subprocess.STDOUT), log))
        codes = []
        for proc, log in procs:
            try:
                codes.append(proc.wait(timeout=300))
            finally:
                log.close()
                if proc.poll() is None:
                    proc.kill()
        assert codes == [0, 0], f"exit codes {codes}:\n{(dest / 'rank0.log').read_text()[-3000:]}"

    return once(base / "wmt14-baseline-2proc", build)


def lm_smoke_run(base: Path) -> Path:
    data = lm_data(base)
    return once(base / "wikitext103-rdrop", lambda dest: run_script(
        "train-wikitext103.sh", "--smoke", "--data", data, "--save-dir", dest, log=dest / "train.log"))


@pytest.fixture(scope="session")
def iwslt_run(tmp_path_factory):
    return iwslt_smoke_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def wmt_run(tmp_path_factory):
    return wmt_two_process_baseline_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory):
    return lm_smoke_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def translation_bin(tmp_path_factory):
    return translation_data(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def lm_bin(tmp_path_factory):
    return lm_data(tmp_path_factory.getbasetemp())


def test_once_starts_afresh_where_a_build_failed(tmp_path):
    def crash(dest):
        (dest / "checkpoint_last.pt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        once(tmp_path / "run", crash)
    built = once(tmp_path / "run", lambda dest: (dest / "train.log").write_text("ok"))
    assert sorted(p.name for p in built.iterdir()) == [".done", "train.log"]
    once(built, crash)  # done: not built again


# ------------------------------------------------------------------ the commands

@pytest.mark.parametrize("script,task,criterion,alpha", [
    ("train-iwslt14.sh", "rdrop_translation", "rdrop_label_smoothed_cross_entropy", "5"),
    ("train-wmt14.sh", "rdrop_translation", "rdrop_label_smoothed_cross_entropy", "5"),
    ("train-wikitext103.sh", "rdrop_language_modeling", "rdrop_cross_entropy", "1.0"),
])
def test_rdrop_by_default_with_the_papers_alpha(script, task, criterion, alpha):
    argv = dry_run(script)
    assert (flag(argv, "--task"), flag(argv, "--criterion"), flag(argv, "--rdrop-alpha")) == (task, criterion, alpha)
    assert flag(argv, "--user-dir") == str(Path(rdrop_fairseq.__file__).parent)


# The settings docs/reproduction.md gives for each run, from their sources: IWSLT14 fairseq's
# examples/translation (transformer_iwslt_de_en) as the R-Drop authors ran it; WMT14 the authors' big Transformer
# settings; WikiText-103 the authors' transformer_lm_gpt runs, and --adaptive fairseq's wiki103 adaptive-input recipe.
PAPER_SETTINGS = {
    ("train-iwslt14.sh",): {
        "--arch": "transformer_iwslt_de_en", "--adam-betas": "(0.9, 0.98)", "--clip-norm": "0.0", "--lr": "5e-4",
        "--lr-scheduler": "inverse_sqrt", "--warmup-updates": "4000", "--warmup-init-lr": "1e-07",
        "--dropout": "0.3", "--weight-decay": "0.0001", "--label-smoothing": "0.1", "--max-tokens": "4096",
        "--update-freq": "1", "--eval-bleu-detok": "moses", "--best-checkpoint-metric": "bleu",
        "--eval-bleu-args": '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}'},
    ("train-wmt14.sh",): {
        "--arch": "transformer_vaswani_wmt_en_de_big", "--source-lang": "en", "--target-lang": "de",
        "--adam-betas": "(0.9, 0.98)", "--lr": "1e-3", "--warmup-updates": "6000", "--dropout": "0.1",
        "--label-smoothing": "0.1", "--max-tokens": "4096", "--update-freq": "16"},
    ("train-wikitext103.sh",): {
        "--arch": "transformer_lm_gpt", "--dropout": "0.1", "--weight-decay": "0.01", "--lr": "5e-4",
        "--warmup-updates": "4000", "--tokens-per-sample": "512", "--sample-break-mode": "none",
        "--max-tokens": "2000", "--update-freq": "16", "--max-update": "50000"},
    ("train-wikitext103.sh", "--adaptive"): {
        "--arch": "transformer_lm_wiki103", "--optimizer": "nag", "--lr": "1.0", "--lr-scheduler": "cosine",
        "--t-mult": "2", "--lr-period-updates": "270000", "--lr-shrink": "0.75", "--warmup-updates": "16000",
        "--min-lr": "0.0001", "--stop-min-lr": "1e-09", "--clip-norm": "0.1", "--tokens-per-sample": "3072",
        "--max-tokens": "3072", "--update-freq": "3", "--max-update": "286000"},
}


@pytest.mark.parametrize("command", list(PAPER_SETTINGS), ids=" ".join)
def test_each_run_has_the_settings_of_its_source(command):
    argv = dry_run(*command)
    assert {name: flag(argv, name) for name in PAPER_SETTINGS[command]} == PAPER_SETTINGS[command]
    shared = "--share-all-embeddings" if "wikitext" not in command[0] else "--share-decoder-input-output-embed"
    assert (shared in argv) is ("--adaptive" not in command)


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
def test_no_checkpoint_per_epoch_is_kept(script):
    # WikiText-103's default run has about 94 epochs of a 3 GB checkpoint each; evaluation reads
    # checkpoint_best.pt (or the averaged last ones of --save-interval-updates)
    assert "--no-epoch-checkpoints" in dry_run(script)


def test_a_relative_path_finds_the_checkout_whatever_cdpath_says(tmp_path):
    (tmp_path / "decoy" / "scripts").mkdir(parents=True)  # what `cd scripts/..` would find through CDPATH
    proc = subprocess.run(["bash", "scripts/train-iwslt14.sh", "--print-args"], cwd=REPO, capture_output=True,
                          text=True, env=script_env(FP16="0", CDPATH=f"{tmp_path / 'decoy'}:."))
    assert proc.returncode == 0, proc.stderr
    assert flag(shlex.split(proc.stdout)[1:], "--user-dir") == str(REPO / "rdrop_fairseq")


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
def test_hyperparameters_at_their_limits_are_taken(script):
    argv = dry_run(script, DROPOUT="0", LR="1e-3", KEEP_INTERVAL_UPDATES="-1", SEED="0", UPDATE_FREQ="1")
    assert (flag(argv, "--dropout"), flag(argv, "--lr"), flag(argv, "--keep-interval-updates"), flag(argv, "--seed"),
            flag(argv, "--update-freq")) == ("0", "1e-3", "-1", "0", "1")


@pytest.mark.parametrize("kind,value,taken", [
    ("positive", "3", True), ("positive", "0", False), ("positive", "03", False),
    ("positives", "2,4", True), ("positives", "2,", False),
    ("count", "0", True), ("count", "0400", False),  # bash's arithmetic would read 0400 as octal 256
    ("int", "-1", True), ("int", "-2", False),
    ("number", "1e-3", True), ("number", "-1", False), ("number", "1e", False),
    ("real", "-0.5", True), ("real", "+1", True), ("real", "1.5e3", True), ("real", "-x", False),
    ("fraction", "0", True), ("fraction", "0.999", True), ("fraction", "1", False), ("fraction", "1e-400", True),
])
def test_each_kind_of_environment_value(kind, value, taken):
    proc = subprocess.run(["bash", "-c", f'source "{SCRIPTS}/_common.sh"; need_env {kind} VALUE'],
                          env=script_env(VALUE=value), capture_output=True, text=True)
    assert (proc.returncode == 0) == taken, proc.stderr
    assert taken or proc.stderr.startswith("bash: error: VALUE must be ") and f"'{value}'" in proc.stderr


@pytest.mark.parametrize("name,args,value", [
    ("--context-window", ["--context-window", "400", "--context-window=900"], "900"),
    ("--context-window", ["--context-window=900", "--context-window", "400"], "400"),
    ("--max-tokens", ["--max-tokens", "10", "--max-tokens-valid", "99", "--max-tokens-valid=98"], "10"),
    ("--max-tokens", ["--max-tokens-valid", "99"], None),
])
def test_last_value_is_the_one_argparse_keeps(name, args, value):
    proc = subprocess.run(["bash", "-c", f'source "{SCRIPTS}/_common.sh"; last_value {shlex.join([name, *args])}'],
                          env=script_env(), capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == ((1, "") if value is None else (0, value))


def test_values_fairseq_takes_that_the_checks_once_refused():
    assert flag(dry_run("train-wikitext103.sh", "--adaptive", WARMUP="0"), "--warmup-updates") == "0"
    assert flag(dry_run("train-iwslt14.sh", UPDATE_FREQ="2,4", MAX_UPDATE="0"), "--update-freq") == "2,4"


def test_help_needs_no_interpreter():
    for script in ("train-iwslt14.sh", "prepare-iwslt14.sh", "evaluate-lm.sh"):
        proc = subprocess.run(["bash", str(SCRIPTS / script), "--help"], env=script_env(PYTHON="/no/such/python"),
                              capture_output=True, text=True)
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), script


def test_every_hyperparameter_can_be_overridden():
    argv = dry_run("train-iwslt14.sh", "--alpha", "3", LR="7e-4", DROPOUT="0.2", MAX_TOKENS="1000")
    assert (flag(argv, "--rdrop-alpha"), flag(argv, "--lr"), flag(argv, "--dropout"), flag(argv, "--max-tokens")) \
        == ("3", "7e-4", "0.2", "1000")
    assert flag(dry_run("train-iwslt14.sh", ALPHA="2"), "--rdrop-alpha") == "2"
    # Anything after -- reaches fairseq-train last, so it wins.
    argv = dry_run("train-wmt14.sh", "--", "--rdrop-alpha", "0.5", "--clip-norm", "1.0")
    assert argv[-4:] == ["--rdrop-alpha", "0.5", "--clip-norm", "1.0"]
    assert flag(argv, "--rdrop-alpha") == "0.5"


def test_the_language_model_takes_the_documented_overrides_too():
    for flags in ([], ["--adaptive"]):
        argv = dry_run("train-wikitext103.sh", *flags, DROPOUT="0.2", WEIGHT_DECAY="0.05", SAVE_INTERVAL_UPDATES="500",
                       KEEP_INTERVAL_UPDATES="3")
        assert (flag(argv, "--dropout"), flag(argv, "--weight-decay"), flag(argv, "--save-interval-updates"),
                flag(argv, "--keep-interval-updates")) == ("0.2", "0.05", "500", "3")
    # unset, the adaptive recipe keeps its arch's dropouts and no weight decay; one interval checkpoint is kept
    adaptive = dry_run("train-wikitext103.sh", "--adaptive")
    assert (flag(adaptive, "--dropout"), flag(adaptive, "--weight-decay"), flag(adaptive, "--keep-interval-updates")) \
        == (None, None, "1")


@pytest.mark.parametrize("script,stock_task,stock_criterion", [
    ("train-iwslt14.sh", "translation", "label_smoothed_cross_entropy"),
    ("train-wmt14.sh", "translation", "label_smoothed_cross_entropy"),
    ("train-wikitext103.sh", "language_modeling", "cross_entropy"),
])
def test_baseline_and_doubled_batch(script, stock_task, stock_criterion):
    rdrop, baseline, double = (dry_run(script, *f) for f in ([], ["--baseline"], ["--double-batch"]))
    for argv in (baseline, double):
        assert (flag(argv, "--task"), flag(argv, "--criterion")) == (stock_task, stock_criterion)
        assert "--rdrop-alpha" not in argv
    assert flag(baseline, "--max-tokens") == flag(rdrop, "--max-tokens")
    assert int(flag(double, "--max-tokens")) == 2 * int(flag(rdrop, "--max-tokens"))
    assert len({flag(a, "--save-dir") for a in (rdrop, baseline, double)}) == 3
    assert dry_run(script, "--double-batch", "--baseline") == double  # the doubled batch is a baseline too
    # The baselines differ from the R-Drop run only in task, criterion, alpha, batch and save dir.
    drop = {"--task", "--criterion", "--rdrop-alpha", "--max-tokens", "--save-dir"}
    def rest(argv):
        return [(a, v) for a, v in zip(argv, argv[1:] + [""]) if a.startswith("--") and a not in drop]
    assert rest(rdrop) == rest(baseline) == rest(double)


@pytest.mark.parametrize("command,setup,alpha", [
    (["train-iwslt14.sh"], "iwslt14", "5"), (["train-wmt14.sh"], "wmt14", "5"),
    (["train-wikitext103.sh"], "wikitext103-transformer_lm_gpt", "1.0"),
    (["train-wikitext103.sh", "--adaptive"], "wikitext103-transformer_lm_wiki103", "1.0"),
])
def test_default_save_dir_per_setup_variant_and_alpha(command, setup, alpha):
    # a run resumes from its save dir's checkpoint_last.pt: no variant may share another's
    def save_dir(*flags, **env):
        return flag(dry_run(*command, *flags, CHECKPOINT_ROOT="/runs", **env), "--save-dir")

    assert save_dir() == f"/runs/{setup}/rdrop-alpha{alpha}"
    assert save_dir("--alpha", "3") == save_dir(ALPHA="3") == f"/runs/{setup}/rdrop-alpha3"
    assert (save_dir("--baseline"), save_dir("--double-batch")) == (f"/runs/{setup}/baseline", f"/runs/{setup}/baseline-2x")
    assert (save_dir("--smoke"), save_dir("--smoke", "--baseline")) == \
        (f"/runs/{setup}/smoke-rdrop-alpha{alpha}", f"/runs/{setup}/smoke-baseline")
    assert save_dir("--baseline", SAVE_DIR="/mine") == "/mine"


def test_printing_the_command_creates_nothing(tmp_path):
    for flags, env in ((["--print-args"], {}), (["--dry-run"], {}), ([], {"DRY_RUN": "1"})):
        proc = run_script("train-iwslt14.sh", *flags, FP16=0, DATA=tmp_path / "no-data", SAVE_DIR=tmp_path / "run",
                          **env)
        argv = shlex.split(proc.stdout)
        assert argv[0] == "fairseq-train" and flag(argv, "--save-dir") == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_adaptive_input_variant():
    argv = dry_run("train-wikitext103.sh", "--adaptive")
    assert (flag(argv, "--arch"), flag(argv, "--criterion"), flag(argv, "--ddp-backend")) == \
        ("transformer_lm_wiki103", "rdrop_adaptive_loss", "legacy_ddp")
    assert (flag(argv, "--tokens-per-sample"), flag(argv, "--optimizer")) == ("3072", "nag")
    assert flag(dry_run("train-wikitext103.sh", "--adaptive", "--baseline"), "--criterion") == "adaptive_loss"
    # The paper's Transformer as its authors trained it: GPT-sized, 2,000 tokens a GPU, update-freq 16 on 8 GPUs
    gpt = dry_run("train-wikitext103.sh")
    assert (flag(gpt, "--arch"), flag(gpt, "--tokens-per-sample"), flag(gpt, "--max-tokens"), flag(gpt, "--update-freq")) \
        == ("transformer_lm_gpt", "512", "2000", "16")
    small = dry_run("train-wikitext103.sh", "--arch", "transformer_lm")
    assert flag(small, "--arch") == "transformer_lm" and flag(small, "--save-dir") != flag(gpt, "--save-dir")


def test_torchrun_environment_becomes_fairseq_distributed_flags():
    env = dict(WORLD_SIZE=16, RANK=9, LOCAL_RANK=1, MASTER_ADDR="node0", MASTER_PORT=29500)
    argv = dry_run("train-wmt14.sh", **env)
    assert (flag(argv, "--distributed-world-size"), flag(argv, "--distributed-rank"), flag(argv, "--device-id"),
            flag(argv, "--distributed-init-method")) == ("16", "9", "1", "tcp://node0:29500")
    assert "--distributed-no-spawn" in argv and "--distributed-backend" not in argv
    for cpu in dry_run("train-wmt14.sh", "--cpu", **env), dry_run("train-wmt14.sh", "--", "--cpu", **env):
        assert (flag(cpu, "--distributed-backend"), flag(cpu, "--ddp-backend")) == ("gloo", "legacy_ddp")
    # Without a launcher fairseq itself spreads over the visible GPUs.
    assert not any(a.startswith("--distributed") for a in dry_run("train-wmt14.sh"))


def test_slurm_is_fairseqs_own_inference_with_a_port():
    argv = dry_run("train-iwslt14.sh", DISTRIBUTED_PORT=12345, SLURM_NTASKS=16, SLURM_NNODES=2)
    assert (flag(argv, "--distributed-port"), flag(argv, "--distributed-world-size")) == ("12345", "16")
    per_node = dry_run("train-iwslt14.sh", DISTRIBUTED_PORT=12345, SLURM_NTASKS=2, SLURM_NNODES=2)
    assert flag(per_node, "--distributed-world-size") is None


def test_iwslt_on_several_gpus_is_told_that_the_papers_batch_is_one_gpus():
    note = "CUDA_VISIBLE_DEVICES=0 keeps the paper's batch"
    several = run_script("train-iwslt14.sh", "--print-args", FP16=0, CUDA_VISIBLE_DEVICES="0,1")
    assert "will use 2 GPUs, so each update reads 2 times what one GPU reads (--max-tokens 4096, --update-freq 1)" \
        in several.stderr and note in several.stderr
    torchrun = run_script("train-iwslt14.sh", "--print-args", FP16=0, WORLD_SIZE=4, RANK=0, MASTER_ADDR="node0",
                          MASTER_PORT=29500, CUDA_VISIBLE_DEVICES="0")
    assert "will use 4 GPUs" in torchrun.stderr
    other_rank = run_script("train-iwslt14.sh", "--print-args", FP16=0, WORLD_SIZE=4, RANK=1, MASTER_ADDR="node0",
                            MASTER_PORT=29500, CUDA_VISIBLE_DEVICES="0")
    assert note not in other_rank.stderr  # said once, by rank 0
    for env in ({"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "0,1", "CPU": 1}):
        assert note not in run_script("train-iwslt14.sh", "--print-args", FP16=0, **env).stderr


def test_gpus_are_counted_as_cuda_sees_them(tmp_path):
    # without CUDA_VISIBLE_DEVICES every GPU nvidia-smi lists; set, only those it names, none if empty
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text('#!/usr/bin/env bash\necho "GPU 0: H100 (UUID: GPU-a)"\necho "GPU 1: H100 (UUID: GPU-b)"\n')
    smi.chmod(0o755)
    env = {k: v for k, v in script_env(FP16="0").items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{smi.parent}:{env['PATH']}"

    def note(**extra):
        proc = subprocess.run(["bash", str(SCRIPTS / "train-iwslt14.sh"), "--print-args"], env={**env, **extra},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    assert "will use 2 GPUs" in note()
    assert "will use" not in note(CUDA_VISIBLE_DEVICES="") and "will use" not in note(CUDA_VISIBLE_DEVICES="1")


def test_fp16_only_when_asked_or_on_cuda():
    assert "--fp16" in dry_run("train-wmt14.sh", FP16=1)
    assert "--fp16" not in dry_run("train-wmt14.sh", FP16=0)
    assert "--fp16" in dry_run("train-wmt14.sh", "--", "--cpu-offload", FP16=1)  # FSDP's flag, not --cpu
    # FP16=auto probes CUDA; --cpu never gets fp16.
    assert "--fp16" not in dry_run("train-wikitext103.sh", "--cpu", FP16="auto")


@pytest.fixture
def python_with_cuda(tmp_path):
    """A ``$PYTHON`` whose torch says CUDA is available; anything else goes to the real interpreter."""
    python = tmp_path / "python"
    python.write_text('#!/usr/bin/env bash\n'
                      'case "$*" in *torch.cuda.is_available*) exit 0 ;; esac\n'
                      f'exec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.parametrize("script", ["train-wikitext103.sh", "train-cnndm.sh"])
def test_fp16_auto_on_cuda_unless_cpu_is_asked_for_either_way(script, python_with_cuda):
    assert "--fp16" in dry_run(script, FP16="auto", PYTHON=python_with_cuda)
    assert "--fp16" not in dry_run(script, "--cpu", FP16="auto", PYTHON=python_with_cuda)
    # a --cpu passed on to fairseq-train: with --fp16 too, fairseq would put the model in fp16 on the CPU
    assert "--fp16" not in dry_run(script, "--", "--cpu", FP16="auto", PYTHON=python_with_cuda)


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
def test_smoke_is_a_tiny_cpu_model(script):
    argv = dry_run(script, "--smoke")
    assert "--cpu" in argv and dry_run(script, SMOKE=1) == argv
    assert int(flag(argv, "--max-update")) <= 10
    assert int(flag(argv, "--decoder-layers")) == 1 and int(flag(argv, "--decoder-embed-dim")) <= 64
    assert "smoke" in flag(argv, "--save-dir")


@pytest.mark.parametrize("args,env,message", [
    (["--bogus"], {}, "unknown option '--bogus'"),
    (["--data"], {}, "--data needs a value"),
    (["--data", ""], {}, "--data needs a value"),
    (["--save-dir", "--baseline"], {}, "--save-dir needs a value"),  # not a folder named --baseline
    (["--data", "/nonexistent/bin"], {}, "--data: no such folder: /nonexistent/bin"),
    (["--print-args"], {"MAX_TOKENS": "lots"}, "MAX_TOKENS must be a positive integer"),
    (["--print-args", "--baseline", "--alpha", "3"], {}, "--alpha/ALPHA"),
    (["--print-args", "--alpha", "x"], {}, "--alpha/ALPHA must be a non-negative number, not 'x'"),
    (["--print-args"], {"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR must be set"),
    ([], {"DRY_RUN": "yes"}, "DRY_RUN must be 0 or 1, not 'yes'"),
    (["--print-args"], {"CPU": "true"}, "CPU must be 0 or 1, not 'true'"),
    (["--print-args"], {"SMOKE": "on"}, "SMOKE must be 0 or 1, not 'on'"),
    (["--print-args", "--cpu"], {"FP16": "1"}, "FP16=1 asks for --fp16, which is for CUDA, but --cpu"),
    (["--print-args", "--", "--cpu"], {"FP16": "1"}, "FP16=1 asks for --fp16, which is for CUDA, but --cpu"),
    # hyperparameters that fairseq-train would take and then fail on with a traceback, or train a run that
    # looks finished after one update
    (["--print-args"], {"MAX_UPDATE": "-5"}, "MAX_UPDATE must be an integer >= 0, not '-5'"),
    (["--print-args"], {"UPDATE_FREQ": "0"}, "UPDATE_FREQ must be a positive integer or a comma-separated list"),
    (["--print-args"], {"UPDATE_FREQ": "2,,4"}, "UPDATE_FREQ must be a positive integer or a comma-separated list"),
    (["--print-args"], {"WARMUP": "0"}, "WARMUP must be a positive integer, not '0'"),  # inverse_sqrt divides by it
    (["--print-args"], {"BEAM": "abc"}, "BEAM must be a positive integer, not 'abc'"),
    (["--print-args"], {"LR": "fast"}, "LR must be a non-negative number, not 'fast'"),
    (["--print-args"], {"DROPOUT": "1.5"}, "DROPOUT must be a number below 1, not '1.5'"),
    (["--print-args"], {"LABEL_SMOOTHING": "-0.1"}, "LABEL_SMOOTHING must be a non-negative number"),
    (["--print-args"], {"KEEP_INTERVAL_UPDATES": "-2"}, "KEEP_INTERVAL_UPDATES must be an integer >= -1"),
    (["--print-args"], {"SEED": "1.5"}, "SEED must be an integer >= 0, not '1.5'"),
    (["--print-args"], {"PYTHON": "/no/such/python"}, "PYTHON=/no/such/python: no such command"),
])
def test_bad_input_is_named(args, env, message):
    proc = subprocess.run(["bash", str(SCRIPTS / "train-iwslt14.sh"), *args], env=script_env(**{"FP16": "0", **env}),
                          capture_output=True, text=True)
    # die() exits 2; bash's own ${MASTER_ADDR:?...} check exits 1
    assert proc.returncode == (1 if message.startswith("MASTER_ADDR") else 2)
    assert message in proc.stderr


def test_a_bad_alpha_is_named_before_a_pretrained_model_is_fetched(tmp_path):
    python = tmp_path / "python"
    calls = recording_python(python, run=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dict.source.txt").write_text("a 1\n")
    for flags, env in ((["--alpha", "x"], {}), ([], {"ALPHA": "-1"})):
        proc = subprocess.run(["bash", str(SCRIPTS / "train-cnndm.sh"), "--data", str(tmp_path / "data"), "--save-dir",
                               str(tmp_path / "run"), *flags], env=script_env(FP16="0", PYTHON=python, **env),
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "--alpha/ALPHA must be a non-negative number" in proc.stderr
    assert not calls.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
def test_help(script):
    proc = run_script(script, "--help")
    assert proc.stdout.startswith("usage: scripts/" + script)


def test_data_folder_must_be_binarised(tmp_path):
    with pytest.raises(AssertionError, match="has no dict"):
        run_script("train-iwslt14.sh", "--data", tmp_path, FP16=0)


@pytest.mark.parametrize("script", ["train-iwslt14.sh", "train-wmt14.sh", "train-wikitext103.sh"])
def test_a_save_dir_that_cannot_be_a_folder_is_named(tmp_path, script):
    (tmp_path / "data").mkdir()
    for name in ("dict.de.txt", "dict.en.txt", "dict.txt"):
        (tmp_path / "data" / name).write_text("a 1\n")
    (tmp_path / "notes").write_text("mine\n")
    for save_dir, message in ((tmp_path / "notes", "{} is a file, not a folder"),
                              (tmp_path / "notes" / "run", "cannot make the folder {}")):
        with pytest.raises(AssertionError, match=re.escape("--save-dir: " + message.format(save_dir))):
            run_script(script, "--data", tmp_path / "data", "--save-dir", save_dir, "--cpu", FP16=0)
    assert (tmp_path / "notes").read_text() == "mine\n"


# ------------------------------------------------------------------ real runs

def train_stats(log_text):
    import json

    lines = [line.split("| train | ", 1)[1] for line in log_text.splitlines() if "| train | " in line]
    assert lines, "no end-of-epoch train line in the log"
    return json.loads(lines[-1])


@pytest.mark.e2e
def test_iwslt_smoke_trains_with_rdrop(iwslt_run):
    stats = train_stats((iwslt_run / "train.log").read_text())
    assert stats["train_num_updates"] == "4"
    assert float(stats["train_kl_loss"]) > 0  # the R-Drop term was on
    log = (iwslt_run / "train.log").read_text()
    assert '"valid_bleu"' in log  # best checkpoint by BLEU needs --eval-bleu
    names = {p.name for p in iwslt_run.glob("checkpoint*.pt")}
    assert {"checkpoint_1_2.pt", "checkpoint_1_4.pt", "checkpoint_best.pt", "checkpoint_last.pt"} <= names


@pytest.mark.e2e
def test_wmt_baseline_trains_as_two_gloo_processes(wmt_run):
    rank0, rank1 = ((wmt_run / f"rank{r}.log").read_text() for r in range(2))
    assert "distributed init (rank 0)" in rank0 and "distributed init (rank 1)" in rank1
    stats = train_stats(rank0)
    assert stats["train_num_updates"] == "4"
    assert "train_kl_loss" not in stats  # --baseline: stock criterion
    command = shlex.split(rank0.split("+ fairseq-train ", 1)[1].splitlines()[0])
    assert flag(command, "--criterion") == "label_smoothed_cross_entropy"
    assert {"checkpoint_1_2.pt", "checkpoint_1_4.pt"} <= {p.name for p in wmt_run.glob("checkpoint*.pt")}


@pytest.mark.e2e
def test_wikitext103_smoke_trains_with_rdrop(lm_run):
    stats = train_stats((lm_run / "train.log").read_text())
    assert stats["train_num_updates"] == "4"
    assert float(stats["train_kl_loss"]) > 0
    assert (lm_run / "checkpoint_best.pt").is_file()
