"""fairseq-train throughput: R-Drop against the baseline at twice its --max-tokens.

An R-Drop update at ``--max-tokens T`` puts 2T tokens through the model, as a baseline
update at 2T does, so the two should cost about the same per update.  This trains
both from scratch on the same data for ``--updates`` updates, alternating their order
over ``--rounds`` rounds so that load drift hits both alike, and prints fairseq's
own words per second (target tokens of the batch, so R-Drop's count each token
once), the model tokens per second (R-Drop's twice) and the ratios.

    python benchmarks/train_throughput.py                       # lohelp de-en from ../shared/corpora
    python benchmarks/train_throughput.py --updates 500 --rounds 3 --extra=--fp16
    python benchmarks/train_throughput.py --max-tokens 4096 --extra=--fp16 \
        --model "--arch transformer_iwslt_de_en --share-all-embeddings --dropout 0.3"   # one GPU
"""
import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rdrop_fairseq.recipes.plot import read_log  # noqa: E402
from rdrop_fairseq.recipes.prepare import prepare_parallel  # noqa: E402

MODEL = ("--arch transformer_iwslt_de_en --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 256 "
         "--decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 "
         "--share-all-embeddings --dropout 0.3")


def train(bin_dir: Path, alpha: float, max_tokens: int, args, log: Path):
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(bin_dir), "--user-dir", str(REPO / "rdrop_fairseq"),
           "--source-lang", "de", "--target-lang", "en", "--task", "rdrop_translation",
           "--criterion", "rdrop_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--rdrop-alpha", str(alpha), *shlex.split(args.model), "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
           "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
           "--max-tokens", str(max_tokens), "--max-update", str(args.updates), "--seed", "1",
           "--disable-validation", "--no-save", "--num-workers", "0",
           "--log-format", "json", "--log-interval", str(args.log_interval), "--log-file", str(log),
           *shlex.split(args.extra)]
    with open(log.with_suffix(".out"), "w") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"fairseq-train failed:\n{log.with_suffix('.out').read_text()[-3000:]}")
    intervals = read_log(log)["train_inner"]
    timed = intervals[1:] or intervals  # the first interval holds the start-up
    if not timed:
        raise RuntimeError(f"no train_inner records in {log}: raise --updates above --log-interval")
    return statistics.median(r["wps"] for r in timed), statistics.median(1.0 / r["ups"] for r in timed)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpora" / "lohelp-de-en",
                        help="{train,valid,test}.{de,en} raw text (default ../shared/corpora/lohelp-de-en)")
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "rdrop_fairseq" / "throughput",
                        help="cache of the prepared data")
    parser.add_argument("--max-tokens", type=int, default=1024, help="R-Drop's; the baseline gets twice this")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--log-interval", type=int, default=25)
    parser.add_argument("--bpe-merges", type=int, default=10000)
    parser.add_argument("--model", default=MODEL, help=f"fairseq model flags (default: {MODEL})")
    parser.add_argument("--extra", default="",
                        help="more fairseq-train flags for both runs, e.g. --extra=--fp16 (with '=': argparse reads a "
                             "separate value that starts with - as an option)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        bin_dir = prepare_parallel(args.corpus, args.work_dir / f"{args.corpus.name}-{args.bpe_merges}", "de", "en",
                                   bpe_merges=args.bpe_merges, workers=2)
    except FileNotFoundError as err:
        parser.error(f"--corpus {args.corpus}: {err}")
    runs = {"baseline": (0.0, 2 * args.max_tokens), "rdrop": (args.alpha, args.max_tokens)}
    results = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as logs:
        for round_ in range(args.rounds):
            for name in (runs if round_ % 2 == 0 else reversed(list(runs))):
                alpha, max_tokens = runs[name]
                wps, seconds = train(bin_dir, alpha, max_tokens, args, Path(logs) / f"{name}-{round_}.log")
                results[name].append((wps, seconds))
                print(f"round {round_ + 1} {name}: {wps:.0f} words/s, {seconds:.3f} s/update", flush=True)
    base_wps, base_seconds = (statistics.median(v) for v in zip(*results["baseline"]))
    print(f"\n{args.updates} updates per run, median over {args.rounds} rounds of the per-interval medians")
    print("| run | --max-tokens | words/s (fairseq's wps) | model tokens/s | s/update | s/update / baseline |")
    print("|---|---|---|---|---|---|")
    for name, (alpha, max_tokens) in runs.items():
        wps, seconds = (statistics.median(v) for v in zip(*results[name]))
        copies = 2 if alpha > 0 else 1
        print(f"| {name} | {max_tokens} | {wps:.0f} | {wps * copies:.0f} | {seconds:.3f} | "
              f"{seconds / base_seconds:.3f} |")


if __name__ == "__main__":
    main()
