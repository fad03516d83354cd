"""See R-Drop work on one machine: baseline vs R-Drop, German to English, the same number of updates each.

    rdrop-fairseq quickstart [--rdrop-alpha A] [--out-dir rdrop-quickstart]
    rdrop-fairseq quickstart --max-updates N | --minutes M        # fewer updates, or a time budget
    rdrop-fairseq quickstart --corpus DIR --src de --tgt en       # your own {train,valid,test}.{src,tgt}
    rdrop-fairseq quickstart --smoke                               # a few updates of a tiny model
    rdrop-fairseq quickstart --concurrent                          # both runs at once (one GPU)

1. Builds a German-English corpus from LibreOffice's help packages (see
   rdrop_fairseq.recipes.lohelp; cached in --work-dir) unless --corpus is given, and
   tokenises, BPEs and binarises it (rdrop_fairseq.recipes.prepare, cached too).
2. Chooses what to train from the device (plan_run): on a CPU a small transformer
   on the first 2,000 training pairs; with CUDA the paper's transformer_iwslt_de_en
   on the whole corpus, in fp16.  Trains it twice with identical settings and a
   fixed number of updates: R-Drop, then the baseline (alpha 0), or both at once
   with --concurrent.  With --minutes, R-Drop trains within 60% of that budget
   instead and the baseline for as many updates; a run with fewer updates than
   the default is flagged as not settling the comparison, and so are two runs
   with different update counts (the baseline's own time limit, a safety net,
   can stop it first on a busy machine).  A run that trained to its end is
   kept: a rerun with the same settings reuses it, and goes on with one that was
   cut off from its last checkpoint, so an interrupted quickstart loses at most
   the updates since then.
3. For each run picks fairseq-generate's --lenpen on the valid set, translates the
   test set with it and scores it with sacreBLEU on detokenised output (with the
   paired bootstrap), prints a table and draws the curves.  The results and curves
   of an earlier invocation are removed before training: OUT_DIR shows those of
   the last invocation that got to its end, or none.

This module is the quickstart's command line, in the standard library only: scripts/quickstart.sh
runs it as a file (``python rdrop_fairseq/recipes/quickstart_cli.py ARGS``) to check the arguments
and print the help before anything is installed; rdrop_fairseq.recipes.quickstart does the work.
"""
import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

PROG_ENV = "RDROP_QUICKSTART_PROG"  # the command the user typed, for messages (scripts/quickstart.sh sets it)


@dataclass(frozen=True)
class Setup:
    """Model, data and schedule of one quickstart size."""
    arch: str
    layers: int
    embed_dim: int
    ffn_dim: int
    heads: int
    dropout: float
    max_tokens: int
    lr: float
    warmup: int
    weight_decay: float
    bpe_merges: int
    train_pairs: int      # 0: all
    heldout_pairs: int    # 0: all of valid and test
    validate_every: int   # updates
    log_every: int        # updates
    beam: int
    updates: int          # per run, unless --max-updates or --minutes say otherwise
    alpha: float          # R-Drop's, unless --rdrop-alpha says otherwise


# A small transformer on a 2-core CPU.  R-Drop pays off once the baseline starts to overfit, so the run
# trains on the first 2,000 pairs only; valid and test stay whole.  The baseline's valid loss stops
# improving after about 1,300 updates (docs/quickstart.md); 2,200 updates leave R-Drop room to pass it.
# The output softmax dominates the cost: a small BPE vocabulary.
CPU = Setup(arch="transformer", layers=2, embed_dim=128, ffn_dim=256, heads=4, dropout=0.3, max_tokens=2048,
            lr=3e-3, warmup=100, weight_decay=0.0, bpe_merges=2500, train_pairs=2000, heldout_pairs=0,
            validate_every=100, log_every=25, beam=5, updates=2200, alpha=2.0)
# The paper's IWSLT model, dropout, alpha and batch size (scripts/train-iwslt14.sh) on the whole corpus
# (29,603 pairs: about 170 updates an epoch).  A shorter warm-up than the recipe's 4,000: the run is short.
GPU = Setup(arch="transformer_iwslt_de_en", layers=6, embed_dim=512, ffn_dim=1024, heads=4, dropout=0.3,
            max_tokens=4096, lr=5e-4, warmup=1000, weight_decay=1e-4, bpe_merges=10000, train_pairs=0,
            heldout_pairs=0, validate_every=250, log_every=50, beam=5, updates=4000, alpha=5.0)
SMOKE = Setup(arch="transformer", layers=1, embed_dim=32, ffn_dim=64, heads=2, dropout=0.3, max_tokens=1024,
              lr=1e-3, warmup=4, weight_decay=0.0, bpe_merges=200, train_pairs=400, heldout_pairs=40,
              validate_every=3, log_every=1, beam=2, updates=6, alpha=2.0)


def default_work_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rdrop_fairseq"


class OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line that names the flag, and where the options are listed."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (all options: {self.prog} --help)\n")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or OneLineErrors(prog=os.environ.get(PROG_ENV) or "python -m rdrop_fairseq.recipes.quickstart")
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--max-updates", type=int, help=f"updates per run (default {CPU.updates:,} on a CPU, "
                        f"{GPU.updates:,} with CUDA, {SMOKE.updates} with --smoke)")
    parser.add_argument("--minutes", type=float, help="instead of a fixed number of updates, a time budget for "
                        "training and translating (corpus preparation not counted): R-Drop trains for 60%% of "
                        "90%% of it, the baseline for as many updates; with --max-updates too, R-Drop stops at whichever "
                        "limit comes first; ignored by --smoke")
    parser.add_argument("--corpus", type=Path, help="folder with {train,valid,test}.{SRC,TGT} raw text "
                        "(default: build the LibreOffice help corpus)")
    parser.add_argument("--train-pairs", type=int, help=f"train on the first N pairs of the corpus, 0 for all "
                        f"(default {CPU.train_pairs} on a CPU, all with CUDA, {SMOKE.train_pairs} with --smoke)")
    parser.add_argument("--src", default="de", help="source language: the corpus's file suffix (default de)")
    parser.add_argument("--tgt", default="en", help="target language (default en)")
    parser.add_argument("--work-dir", type=Path, default=default_work_dir(),
                        help="cache for the corpus and prepared data (default ~/.cache/rdrop_fairseq, or "
                        "$XDG_CACHE_HOME/rdrop_fairseq where that is set)")
    parser.add_argument("--out-dir", type=Path, default=Path("rdrop-quickstart"),
                        help="checkpoints, logs, results.md and curves.png (default ./rdrop-quickstart)")
    parser.add_argument("--rdrop-alpha", type=float,
                        help=f"alpha of the R-Drop run (default {CPU.alpha:g} on a CPU: on its small model it "
                        f"measured better than the paper's 5; {GPU.alpha:g} with CUDA, the paper's value for "
                        "transformer_iwslt_de_en)")
    parser.add_argument("--smoke", action="store_true", help="a few updates of a tiny model on a corpus slice")
    parser.add_argument("--eval-bleu", action="store_true", help="also score valid BLEU at each validation")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is there")
    parser.add_argument("--concurrent", action="store_true", help="train both runs at the same time, for a "
                        "fixed number of updates (not with --minutes): on a GPU that one run leaves partly idle "
                        "it saves time; on a CPU the runs only share its cores.  Each run's wall time and "
                        "words/s are then measured while they share the device, and the table says so")
    parser.add_argument("--seed", type=int, default=1, help="fairseq-train's --seed, the same for both runs "
                        "(default 1)")
    parser.add_argument("--workers", type=int, default=2, help="processes that tokenise and binarise the corpus "
                        "(default 2)")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None,
               parser: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """The arguments, checked: an error names the flag (argparse's exit status 2)."""
    parser = build_parser(parser)
    args = parser.parse_args(argv)
    # a "~" the shell left (--out-dir=~/x, or quoted) is the home folder, as it is for the default --work-dir
    for dest in ("corpus", "work_dir", "out_dir"):
        if getattr(args, dest) is not None:
            setattr(args, dest, getattr(args, dest).expanduser())
    # "not > 0": nan passes "<= 0"
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        parser.error(f"--minutes must be a positive number, not {args.minutes}")
    if args.max_updates is not None and args.max_updates <= 0:
        parser.error("--max-updates must be positive")
    if args.train_pairs is not None and args.train_pairs < 0:
        parser.error("--train-pairs must be 0 (all) or positive")
    if args.rdrop_alpha is not None and not (math.isfinite(args.rdrop_alpha) and args.rdrop_alpha > 0):
        parser.error(f"--rdrop-alpha must be a positive number, not {args.rdrop_alpha}: the baseline run is the "
                     "alpha 0 one")
    if args.concurrent and args.minutes is not None:
        parser.error("--concurrent needs a fixed number of updates, and under --minutes the baseline waits for "
                     "R-Drop's count: drop --minutes (--max-updates N sets the count) or --concurrent")
    if args.workers < 1:
        parser.error("--workers must be positive")
    if args.src == args.tgt:
        parser.error(f"--src and --tgt are both {args.src!r}: the corpus's two languages must differ")
    if args.corpus is not None and not args.corpus.is_dir():
        parser.error(f"--corpus {args.corpus}: no such folder")
    # made where they are missing; a file there would stop the quickstart with a traceback, for --out-dir
    # only after preparing the corpus
    for flag, folder in (("--work-dir", args.work_dir), ("--out-dir", args.out_dir)):
        if folder.exists() and not folder.is_dir():
            parser.error(f"{flag} {folder}: not a folder")
    return args


HELP_PRINTED = 10  # the exit status of the file run as a script when it printed the help: nothing more to do


if __name__ == "__main__":
    # scripts/quickstart.sh: check the arguments, or print the help, before installing anything
    try:
        parse_args()
    except SystemExit as exit_:
        if exit_.code in (0, None):  # argparse's --help (-h, or an abbreviation such as --he)
            raise SystemExit(HELP_PRINTED)
        raise
