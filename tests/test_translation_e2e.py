"""fairseq-train / fairseq-generate with the plugin on a slice of real German-English text."""
import json
import os
import subprocess
import sys

import pytest
import sacrebleu

from conftest import LOHELP_SLICE
from tiny_fairseq import USER_DIR

MODEL = (
    "--arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 64 "
    "--decoder-embed-dim 64 --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128 "
    "--encoder-attention-heads 2 --decoder-attention-heads 2 --share-all-embeddings --dropout 0.2 "
    "--optimizer adam --adam-betas (0.9,0.98) --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates 40 "
    "--max-tokens 2048 --max-update 120 --seed 3 --log-format json --log-interval 20 "
    "--no-epoch-checkpoints --no-last-checkpoints --validate-interval 1000 --save-interval 1000 "
    "--validate-interval-updates 120 --save-interval-updates 120 "
    "--num-workers 0 --eval-bleu --eval-bleu-remove-bpe --eval-bleu-args {\"beam\":1,\"max_len_b\":20} "
    "--best-checkpoint-metric bleu --maximize-best-checkpoint-metric --label-smoothing 0.1"
).split()

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def data_bin(lohelp_bin):
    return lohelp_bin


def run(tool, *args, cwd=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for opt_out in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "RDROP_TRUST_CHECKPOINTS"):  # the safe loader must do
        env.pop(opt_out, None)
    done = subprocess.run([sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


def json_records(log, tag):
    records = []
    for line in log.splitlines():
        if f"| {tag} |" in line:
            records.append(json.loads(line.split(f"| {tag} | ", 1)[1]))
    return records


def train(data_bin, save_dir, *args):
    return run("train", data_bin, "--user-dir", USER_DIR, "--save-dir", save_dir, *MODEL, *args)


@pytest.fixture(scope="module")
def rdrop_run(data_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("rdrop")
    log = train(data_bin, save_dir, "--task", "rdrop_translation",
                "--criterion", "rdrop_label_smoothed_cross_entropy", "--rdrop-alpha", "5")
    return save_dir, log


def test_rdrop_training_logs_kl_and_learns(rdrop_run):
    _, log = rdrop_run
    inner = json_records(log, "train_inner")
    valid = json_records(log, "valid")
    assert inner and all(rec.get("kl_loss") is not None for rec in inner)
    assert valid and all("valid_kl_loss" not in rec for rec in valid)
    first, last = float(inner[0]["loss"]), float(valid[-1]["valid_loss"])
    assert last < first - 2, (first, last)  # bits: perplexity down more than 4x
    assert "valid_bleu" in valid[-1]


def test_stock_task_and_criterion_train_on_the_same_data(data_bin, tmp_path):
    log = train(data_bin, tmp_path, "--task", "translation", "--criterion", "label_smoothed_cross_entropy")
    inner = json_records(log, "train_inner")
    assert inner and "kl_loss" not in inner[0]
    assert float(json_records(log, "valid")[-1]["valid_loss"]) < float(inner[0]["loss"]) - 2


def test_rdrop_criterion_with_the_stock_translation_task(data_bin, tmp_path):
    log = train(data_bin, tmp_path, "--task", "translation", "--criterion",
                "rdrop_label_smoothed_cross_entropy", "--max-update", "20", "--validate-interval-updates", "20")
    assert "kl_loss" in json_records(log, "train_inner")[0]
    assert "valid_bleu" in json_records(log, "valid")[-1]


def test_generate_from_an_rdrop_checkpoint_and_score_with_sacrebleu(data_bin, rdrop_run, tmp_path):
    save_dir, _ = rdrop_run
    out = run("generate", data_bin, "--user-dir", USER_DIR, "--path", save_dir / "checkpoint_best.pt",
              "--gen-subset", "test", "--beam", "4", "--batch-size", "64", "--remove-bpe",
              "--scoring", "sacrebleu", "--results-path", tmp_path)
    lines = (tmp_path / "generate-test.txt").read_text(encoding="utf-8").splitlines()
    hyps = {int(l.split("\t")[0][2:]): l.split("\t")[2] for l in lines if l.startswith("H-")}
    refs = {int(l.split("\t")[0][2:]): l.split("\t")[1] for l in lines if l.startswith("T-")}
    assert len(hyps) == LOHELP_SLICE["test"]
    order = sorted(refs)
    bleu = sacrebleu.corpus_bleu([hyps[i] for i in order], [[refs[i] for i in order]])
    # a 120-update model scores near 0; what is checked is that the output is complete
    # and that our sacreBLEU agrees with fairseq-generate's own sacrebleu scorer
    summary = [l for l in lines if l.startswith("Generate test with beam=4: BLEU")]
    assert summary, out[-2000:]
    assert float(summary[0].split("BLEU = ")[1].split()[0]) == pytest.approx(bleu.score, abs=0.01)


def test_resume_from_a_checkpoint_without_any_environment_variable(data_bin, rdrop_run, tmp_path):
    save_dir, _ = rdrop_run
    log = train(data_bin, tmp_path, "--task", "rdrop_translation", "--criterion",
                "rdrop_label_smoothed_cross_entropy", "--restore-file", save_dir / "checkpoint_best.pt",
                "--max-update", "125", "--validate-interval-updates", "1000")
    assert "Loaded checkpoint" in log
    assert json_records(log, "train_inner") or json_records(log, "train")


@pytest.mark.parametrize(
    "variant,kl_updates",
    [
        (["--rdrop-every-k-steps", "3"], [1, 4]),  # update_num 0, 3 (fairseq counts from 0)
        (["--rdrop-copies", "3"], [1, 2, 3, 4, 5, 6]),
        (["--rdrop-dropout-rates", "[0.1,0.3]"], [1, 2, 3, 4, 5, 6]),
    ],
)
def test_each_variant_trains_end_to_end(data_bin, tmp_path, variant, kl_updates):
    log = train(data_bin, tmp_path, "--task", "rdrop_translation", "--criterion",
                "rdrop_label_smoothed_cross_entropy", *variant, "--max-update", "6", "--log-interval", "1",
                "--validate-interval-updates", "6", "--eval-bleu-args", '{"beam":1,"max_len_b":5}')
    inner = json_records(log, "train_inner")
    # json logs carry "kl_loss": null for an interval without an R-Drop step
    assert [int(rec["num_updates"]) for rec in inner if rec.get("kl_loss") is not None] == kl_updates
    assert "valid_loss" in json_records(log, "valid")[-1]
