"""End to end on a slice of the Austen corpus: fairseq-preprocess, fairseq-train with the
R-Drop LM criteria (plain softmax and adaptive softmax), then fairseq-eval-lm."""
import json
import math
import re
import subprocess
import sys

import pytest

from tiny_lm import USER_DIR

COMMON = [
    "--task", "rdrop_language_modeling", "--decoder-layers", "1", "--decoder-embed-dim", "32",
    "--decoder-input-dim", "32", "--decoder-output-dim", "32", "--decoder-ffn-embed-dim", "64",
    "--decoder-attention-heads", "2", "--dropout", "0.1", "--tokens-per-sample", "32",
    "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20",
    "--max-tokens", "512", "--max-update", "60", "--log-format", "json", "--log-interval", "10",
    "--no-epoch-checkpoints", "--num-workers", "0", "--seed", "3",
]
ARCHS = {
    "softmax": ["--arch", "transformer_lm", "--criterion", "rdrop_cross_entropy",
                "--share-decoder-input-output-embed"],
    "adaptive": ["--arch", "transformer_lm_wiki103", "--criterion", "rdrop_adaptive_loss",
                 "--adaptive-input-cutoff", "100,400", "--adaptive-softmax-cutoff", "100,400",
                 "--ddp-backend", "legacy_ddp", "--adaptive-softmax-dropout", "0.1"],
}

pytestmark = pytest.mark.e2e


def run(module, *args):
    cmd = [sys.executable, "-m", module, *map(str, args), "--user-dir", USER_DIR]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def json_logs(output, kind):
    pattern = re.compile(rf"\| {kind} \| (\{{.*\}})$")
    return [json.loads(m.group(1)) for line in output.splitlines() if (m := pattern.search(line))]


@pytest.fixture(scope="module")
def data_bin(austen_bin):
    return austen_bin


@pytest.mark.parametrize("output_layer", sorted(ARCHS))
def test_train_then_eval_lm(data_bin, tmp_path, output_layer):
    save_dir = tmp_path / "checkpoints"
    log = run("fairseq_cli.train", data_bin, *COMMON, *ARCHS[output_layer], "--save-dir", save_dir)
    train = json_logs(log, "train_inner")
    valid = json_logs(log, "valid")
    assert train and valid, log[-2000:]
    assert all(float(entry["kl_loss"]) > 0 for entry in train)
    first_ppl, valid_ppl = float(train[0]["ppl"]), float(valid[-1]["valid_ppl"])
    assert valid_ppl < first_ppl / 3, (first_ppl, valid_ppl)

    scored = run("fairseq_cli.eval_lm", data_bin, "--path", save_dir / "checkpoint_last.pt",
                 "--gen-subset", "valid", "--max-tokens", "512", "--tokens-per-sample", "32",
                 "--context-window", "0", "--num-workers", "0")
    match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", scored)
    assert match, scored[-2000:]
    eval_loss, eval_ppl = map(float, match.groups())
    # eval-lm scores the validation tokens as training's own validation does (the same
    # perplexity in the docs' run); fairseq's adaptive_loss counts the word at index
    # padding_idx of each tail cluster by its cluster only, eval-lm's full softmax in full.
    assert eval_loss == pytest.approx(float(valid[-1]["valid_loss"]), rel=0.01)
    assert eval_ppl == pytest.approx(2 ** eval_loss, rel=1e-3)
    assert math.isfinite(eval_ppl) and eval_ppl < first_ppl / 3
