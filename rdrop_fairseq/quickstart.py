"""See R-Drop work on one machine in minutes: baseline vs R-Drop, German to English.

    rdrop-fairseq quickstart [--minutes 20] [--rdrop-alpha 2] [--out-dir rdrop-quickstart]
    rdrop-fairseq quickstart --corpus DIR --src de --tgt en     # your own {train,valid,test}.{src,tgt}
    rdrop-fairseq quickstart --smoke                             # a few updates of a tiny model

1. Builds a German-English corpus from LibreOffice's help packages (see
   rdrop_fairseq.lohelp; cached in --work-dir) unless --corpus is given, and
   tokenises, BPEs and binarises it (rdrop_fairseq.prepare, cached too).
2. Trains the same small transformer twice with identical settings:
   R-Drop (--rdrop-alpha, 2 by default for this small model) within its share
   of the time budget, then the baseline (alpha 0) for the same number of updates.
3. Translates the test set with each best checkpoint and scores it with
   sacreBLEU on detokenised output, prints a table and draws the curves.
"""
import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from rdrop_fairseq import lohelp, plot
from rdrop_fairseq.prepare import SPLITS, atomic_output, read_lines, write_lines

logger = logging.getLogger("rdrop_fairseq.quickstart")

USER_DIR = Path(__file__).resolve().parent
RUNS = ("rdrop", "baseline")  # R-Drop first: it sets the update count
NO_APT_HINT = ("pass a parallel corpus instead: --corpus DIR --src de --tgt en, where DIR holds "
               "{train,valid,test}.{de,en} (one sentence per line, before BPE), e.g. the folder "
               "data/iwslt14.de-en/tmp written by scripts/prepare-iwslt14.sh")


@dataclass(frozen=True)
class Setup:
    """Model, data and schedule of one quickstart size."""
    layers: int
    embed_dim: int
    ffn_dim: int
    heads: int
    dropout: float
    max_tokens: int
    lr: float
    warmup: int
    bpe_merges: int
    train_pairs: int      # 0: all
    heldout_pairs: int    # 0: all of valid and test
    validate_every: int   # updates
    log_every: int        # updates
    beam: int
    max_update: int       # 0: set by the time budget


# Sized for about 2,000 R-Drop updates in the default budget on a 2-core CPU.  R-Drop pays off once
# the baseline starts to overfit, so the run trains on the first 2,000 pairs only (some 60 epochs);
# valid and test stay whole.  The output softmax dominates the cost: a small BPE vocabulary.
FULL = Setup(layers=2, embed_dim=128, ffn_dim=256, heads=4, dropout=0.3, max_tokens=2048,
             lr=3e-3, warmup=100, bpe_merges=2500, train_pairs=2000, heldout_pairs=0,
             validate_every=100, log_every=25, beam=5, max_update=0)
SMOKE = Setup(layers=1, embed_dim=32, ffn_dim=64, heads=2, dropout=0.3, max_tokens=1024,
              lr=1e-3, warmup=4, bpe_merges=200, train_pairs=400, heldout_pairs=40,
              validate_every=3, log_every=1, beam=1, max_update=6)


def default_work_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rdrop_fairseq"


def resolve_corpus(args) -> Path:
    """Raw text folder: --corpus, or the LibreOffice help corpus (built once)."""
    if args.corpus is not None:
        for split in SPLITS:
            for lang in (args.src, args.tgt):
                if not (args.corpus / f"{split}.{lang}").is_file():
                    raise FileNotFoundError(f"--corpus {args.corpus}: missing {split}.{lang}")
        with open(args.corpus / f"train.{args.src}", encoding="utf-8") as handle:
            if any("@@ " in line for _, line in zip(range(1000), handle)):
                raise ValueError(f"--corpus {args.corpus}: the text is already split by BPE ('@@ '); pass it "
                                 "before BPE (for scripts/prepare-iwslt14.sh: its tmp/ folder)")
        return args.corpus.resolve()
    out = args.work_dir / f"lohelp-{args.src}-{args.tgt}"
    try:
        lohelp.build_corpus(out, args.src, args.tgt, deb_dir=args.work_dir / "debs")
    except RuntimeError as err:
        raise RuntimeError(f"cannot build the LibreOffice help corpus ({err}); {NO_APT_HINT}") from err
    return out


def slice_corpus(raw: Path, dest: Path, src: str, tgt: str, train_pairs: int, heldout_pairs: int) -> Path:
    """The first lines of each split, for a quick run; the full corpus when both are 0."""
    if not train_pairs and not heldout_pairs:
        return raw
    if (dest / "done").exists():
        return dest
    for split in SPLITS:
        keep = train_pairs if split == "train" else heldout_pairs
        for lang in (src, tgt):
            lines = read_lines(raw / f"{split}.{lang}")
            write_lines(dest / f"{split}.{lang}", lines[:keep] if keep else lines)
    (dest / "done").touch()
    return dest


def prepared_dir(args, setup: Setup, raw: Path) -> Path:
    """Cache folder named after everything that changes the binarised data."""
    key = f"{raw}|{setup.bpe_merges}|{setup.train_pairs}|{setup.heldout_pairs}|{args.src}-{args.tgt}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return args.work_dir / "prepared" / f"{raw.name}-{args.src}{args.tgt}-{digest}"


def train_command(bin_dir: Path, run_dir: Path, setup: Setup, alpha: float, args,
                  max_update: int, stop_hours: float) -> List[str]:
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(bin_dir), "--user-dir", str(USER_DIR),
           "--source-lang", args.src, "--target-lang", args.tgt,
           "--task", "rdrop_translation", "--criterion", "rdrop_label_smoothed_cross_entropy",
           "--rdrop-alpha", str(alpha), "--label-smoothing", "0.1",
           "--arch", "transformer", "--share-all-embeddings",
           "--encoder-layers", str(setup.layers), "--decoder-layers", str(setup.layers),
           "--encoder-embed-dim", str(setup.embed_dim), "--decoder-embed-dim", str(setup.embed_dim),
           "--encoder-ffn-embed-dim", str(setup.ffn_dim), "--decoder-ffn-embed-dim", str(setup.ffn_dim),
           "--encoder-attention-heads", str(setup.heads), "--decoder-attention-heads", str(setup.heads),
           "--dropout", str(setup.dropout), "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
           "--lr", str(setup.lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(setup.warmup),
           "--max-tokens", str(setup.max_tokens), "--seed", str(args.seed),
           "--validate-interval-updates", str(setup.validate_every),
           "--save-interval-updates", str(setup.validate_every), "--keep-interval-updates", "1",
           # every validate_every updates only, not at each (short) epoch's end as well
           "--validate-interval", "100000", "--save-interval", "100000",
           "--no-epoch-checkpoints", "--save-dir", str(run_dir / "checkpoints"),
           "--log-format", "json", "--log-interval", str(setup.log_every),
           "--log-file", str(run_dir / "train.log"), "--num-workers", "0"]
    if max_update:
        cmd += ["--max-update", str(max_update)]
    if stop_hours:
        cmd += ["--stop-time-hours", f"{stop_hours:.5f}"]
    if args.cpu:
        cmd += ["--cpu"]
    if args.eval_bleu:
        cmd += ["--eval-bleu", "--eval-bleu-remove-bpe", "--eval-bleu-detok", "moses",
                "--eval-bleu-args", json.dumps({"beam": 1, "max_len_a": 1.2, "max_len_b": 10})]
    return cmd


def run_logged(cmd: Sequence[str], log: Path, echo=lambda line: True) -> List[str]:
    """Run a command, echoing the output lines that ``echo`` accepts (fairseq's progress);
    all of it is kept in ``log`` and returned."""
    logger.info("running: %s", " ".join(cmd))
    lines = []
    with open(log, "w", encoding="utf-8") as copy:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if echo(line):
                sys.stdout.write(line)
                sys.stdout.flush()
            copy.write(line)
            lines.append(line.rstrip("\n"))
    if proc.wait() != 0:
        raise RuntimeError(f"command failed (exit {proc.returncode}); its output is in {log}")
    return lines


def generate(bin_dir: Path, run_dir: Path, setup: Setup, args) -> Dict[int, str]:
    """Detokenised test translations of the best checkpoint by sentence number."""
    from sacremoses import MosesDetokenizer

    results = run_dir / "generate"
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(bin_dir), "--user-dir", str(USER_DIR),
           "--source-lang", args.src, "--target-lang", args.tgt, "--task", "rdrop_translation",
           "--path", str(run_dir / "checkpoints" / "checkpoint_best.pt"), "--gen-subset", "test",
           "--beam", str(setup.beam), "--batch-size", "128", "--remove-bpe", "--max-len-a", "1.2",
           "--max-len-b", "10", "--results-path", str(results)]
    if args.cpu:
        cmd += ["--cpu"]
    logger.info("translating the test set with %s", run_dir.name)
    # the translations go to their own file: lines on a shared stdout/stderr pipe can interleave
    run_logged(cmd, run_dir / "generate.log")
    hyps = {}
    for line in read_lines(results / "generate-test.txt"):
        if line.startswith("H-"):
            ident, _score, text = (line[2:].split("\t", 2) + ["", ""])[:3]
            hyps[int(ident)] = text
    detok = MosesDetokenizer(lang=args.tgt)
    return {i: detok.detokenize(text.split()) for i, text in hyps.items()}


def summarize(run_dir: Path, wall: float = 0.0) -> Dict[str, float]:
    """Training figures of one run from its fairseq JSON log."""
    records = plot.read_log(run_dir / "train.log")
    valid = records["valid"]
    best = min(valid, key=lambda r: r["valid_loss"]) if valid else {}
    inner = records["train_inner"]
    last_update = max([r.get("num_updates", 0) for r in inner] +
                      [r.get("valid_num_updates", 0) for r in valid] + [0])
    wps = [r["wps"] for r in inner if isinstance(r.get("wps"), float)]
    return {"best_valid_loss": best.get("valid_loss", float("nan")),
            "valid_ppl": best.get("valid_ppl", float("nan")), "updates": int(last_update),
            "wall_s": wall, "words_per_s": sum(wps) / len(wps) if wps else float("nan")}


TABLE_HEADER = ("| run | test BLEU ± 95% CI | p vs baseline | best valid loss | valid ppl | updates "
                "| wall time | words/s |")


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    rows = [TABLE_HEADER, "|" + "---|" * 8]
    for name, r in results.items():
        p_value = "–" if r.get("bleu_p") is None else f"{r['bleu_p']:.3f}"
        rows.append(f"| {name} | {r['bleu']:.2f} ± {r['bleu_ci95']:.2f} | {p_value} | {r['best_valid_loss']:.3f} "
                    f"| {r['valid_ppl']:.2f} | {r['updates']} | {r['wall_s'] / 60:.1f} min "
                    f"| {r['words_per_s']:.0f} |")
    return "\n".join(rows)


def bleu_with_significance(systems: Dict[str, List[str]], refs: List[str]) -> Dict[str, Dict[str, float]]:
    """Corpus BLEU of each system with the 95% confidence interval of sacreBLEU's paired
    bootstrap resampling (1,000 samples, fixed seed) and, for every system after the first
    (the baseline), the p-value of its difference from it."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    _, scores = PairedTest(list(systems.items()), {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=1000)()
    return {name: {"bleu": float(result.score), "bleu_ci95": float(result.ci),
                   "bleu_p": None if result.p_value is None else float(result.p_value)}
            for name, result in zip(systems, scores["BLEU"])}


def train_runs(bin_dir: Path, out_dir: Path, setup: Setup, args, train_seconds: float) -> Dict[str, float]:
    """R-Drop within 60% of ``train_seconds``, then the baseline for as many updates."""
    walls, max_update = {}, setup.max_update
    shares = {"rdrop": 0.6, "baseline": 0.4}
    for name in RUNS:
        alpha = args.rdrop_alpha if name == "rdrop" else 0.0
        run_dir = out_dir / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        stop_hours = 0.0 if setup.max_update else shares[name] * train_seconds / 3600
        if name == "baseline" and not setup.max_update:
            stop_hours *= 1.5  # a safety net only: the update count set by R-Drop decides
        start = time.time()
        run_logged(train_command(bin_dir, run_dir, setup, alpha, args, max_update, stop_hours),
                   run_dir / "stdout.log")
        walls[name] = time.time() - start
        if not max_update:
            max_update = summarize(run_dir)["updates"]
            logger.info("R-Drop made %d updates; the baseline gets as many", max_update)
    return walls


def score(bin_dir: Path, raw: Path, out_dir: Path, setup: Setup, args, walls) -> Dict[str, Dict[str, float]]:
    refs = read_lines(raw / f"test.{args.tgt}")
    translations = {}
    for name in ("baseline", "rdrop"):  # the paired test compares every system with the first
        by_id = generate(bin_dir, out_dir / name, setup, args)
        if len(by_id) != len(refs):  # scored as empty translations, so BLEU stays over the whole test set
            logger.warning("%s: fairseq-generate returned %d translations for %d test sentences",
                           name, len(by_id), len(refs))
        hyps = [by_id.get(i, "") for i in range(len(refs))]
        write_lines(out_dir / name / f"test.hyp.{args.tgt}", hyps)
        translations[name] = hyps
    bleu = bleu_with_significance(translations, refs)
    return {name: {**bleu[name], **summarize(out_dir / name, walls[name])} for name in translations}


def chosen_setup(args) -> Setup:
    setup = SMOKE if args.smoke else FULL
    return setup if args.train_pairs is None else replace(setup, train_pairs=args.train_pairs)


def quickstart(args) -> Dict[str, Dict[str, float]]:
    start = time.time()
    setup = chosen_setup(args)
    raw = resolve_corpus(args)
    raw = slice_corpus(raw, args.work_dir / "slices" / f"{raw.name}-{setup.train_pairs}-{setup.heldout_pairs}",
                       args.src, args.tgt, setup.train_pairs, setup.heldout_pairs)
    logger.info("corpus: %s", raw)
    bin_dir = prepare_data(args, setup, raw)
    # what is left of the budget after data preparation, minus a reserve for translating the test set
    # (beam 5, small model: about 13 s per run on a 2-core CPU)
    left = args.minutes * 60 - (time.time() - start)
    train_seconds = left * 0.9
    if not setup.max_update and train_seconds < 60:
        raise RuntimeError(f"--minutes {args.minutes} leaves {left:.0f}s after data preparation; give more")
    walls = train_runs(bin_dir, args.out_dir, setup, args, train_seconds)
    results = score(bin_dir, raw, args.out_dir, setup, args, walls)
    table = format_table(results)
    with atomic_output(args.out_dir / "results.json") as handle:
        json.dump({"setup": asdict(setup), "rdrop_alpha": args.rdrop_alpha, "corpus": str(raw),
                   "results": results}, handle, indent=1)
    with atomic_output(args.out_dir / "results.md") as handle:
        handle.write(table + "\n")
    logs = {"baseline": plot.read_log(args.out_dir / "baseline" / "train.log"),
            f"R-Drop (alpha {args.rdrop_alpha:g})": plot.read_log(args.out_dir / "rdrop" / "train.log")}
    png = plot.plot_runs(logs, args.out_dir / "curves.png", title=f"{args.src}->{args.tgt}: baseline vs R-Drop")
    print()
    print(table)
    print(f"\ncurves: {png}\ntotal time: {(time.time() - start) / 60:.1f} min")
    return results


def prepare_data(args, setup: Setup, raw: Path) -> Path:
    from rdrop_fairseq.prepare import prepare_parallel

    logger.info("tokenising, learning BPE and binarising (cached after the first run)")
    return prepare_parallel(raw, prepared_dir(args, setup, raw), args.src, args.tgt,
                            bpe_merges=setup.bpe_merges, workers=args.workers)


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m rdrop_fairseq.quickstart")
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="time budget for the whole run (default 20); ignored by --smoke")
    parser.add_argument("--corpus", type=Path, help="folder with {train,valid,test}.{SRC,TGT} raw text "
                        "(default: build the LibreOffice help corpus)")
    parser.add_argument("--train-pairs", type=int, help=f"train on the first N pairs of the corpus, 0 for all "
                        f"(default {FULL.train_pairs}; {SMOKE.train_pairs} with --smoke)")
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--work-dir", type=Path, default=default_work_dir(),
                        help="cache for the corpus and prepared data (default ~/.cache/rdrop_fairseq)")
    parser.add_argument("--out-dir", type=Path, default=Path("rdrop-quickstart"),
                        help="checkpoints, logs, results.md and curves.png (default ./rdrop-quickstart)")
    parser.add_argument("--rdrop-alpha", type=float, default=2.0,
                        help="alpha of the R-Drop run (default 2: on this small model it measured better than "
                        "the paper's 5, which is for transformer_iwslt_de_en)")
    parser.add_argument("--smoke", action="store_true", help="a few updates of a tiny model on a corpus slice")
    parser.add_argument("--eval-bleu", action="store_true", help="also score valid BLEU at each validation")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is there")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="binarisation workers")
    return parser


def main(argv: Optional[Sequence[str]] = None, parser: Optional[argparse.ArgumentParser] = None):
    parser = build_parser(parser)
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.train_pairs is not None and args.train_pairs < 0:
        parser.error("--train-pairs must be 0 (all) or positive")
    if args.rdrop_alpha <= 0:
        parser.error("--rdrop-alpha must be positive: the baseline run is the alpha 0 one")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        stream=sys.stdout, force=True)
    args.work_dir = args.work_dir.expanduser().resolve()
    args.out_dir = args.out_dir.resolve()
    try:
        quickstart(args)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
