"""See R-Drop work on one machine: baseline vs R-Drop, German to English, the same number of updates each.

What it does and its options: rdrop_fairseq.recipes.quickstart_cli, the command line.
"""
import argparse
import contextlib
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from rdrop_fairseq.recipes import lohelp, plot, prepare
from rdrop_fairseq.recipes.average_checkpoints import UPDATE_CHECKPOINT, last_checkpoints
from rdrop_fairseq.recipes.prepare import SPLITS, atomic_output, package_version, read_lines, write_lines
from rdrop_fairseq.recipes.quickstart_cli import (  # noqa: F401 (the command line's, used here and by tests)
    CPU, GPU, SMOKE, Setup, build_parser, default_work_dir, parse_args)

logger = logging.getLogger("rdrop_fairseq.recipes.quickstart")

USER_DIR = Path(__file__).resolve().parents[1]  # the plugin, rdrop_fairseq/
RUNS = ("rdrop", "baseline")  # R-Drop first: under --minutes it sets the update count
FINISHED = "finished.json"  # written when a run trains to its end: a rerun with its settings reuses it
STARTED = "started.json"  # a run's settings and start times: a rerun with them goes on where it was cut off
# where a copy of the LibreOffice help corpus may lie beside the checkout (../shared/corpora/lohelp-de-en)
SHARED_CORPORA = USER_DIR.parents[1] / "shared" / "corpora"
# fairseq-generate's --lenpen values tried on the valid set, the same for both runs
LENPENS = (0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


@dataclass(frozen=True)
class Device:
    cuda: bool
    name: str = "CPU"


@dataclass(frozen=True)
class Plan:
    """What one quickstart invocation trains, on what, for how long."""
    setup: Setup
    device: Device
    device_flags: Tuple[str, ...]
    alpha: float
    max_update: int          # per run; 0: R-Drop trains within the --minutes budget
    minutes: Optional[float]
    smoke: bool = False
    concurrent: bool = False  # both runs at once


def detect_device(force_cpu: bool) -> Device:
    if force_cpu:
        return Device(cuda=False)
    import torch

    if not torch.cuda.is_available():
        return Device(cuda=False)
    return Device(cuda=True, name=torch.cuda.get_device_name(0))


def plan_run(device: Device, args) -> Plan:
    """The setup, precision and update count of a run; pure, so that the CUDA choices are testable anywhere."""
    cuda = device.cuda and not args.cpu
    setup = SMOKE if args.smoke else GPU if cuda else CPU
    if args.train_pairs is not None:
        setup = replace(setup, train_pairs=args.train_pairs)
    # fp16 even where the GPU has bf16: fairseq 0.12's --bf16 turns on --tpu (fairseq/options.py), and its
    # trainer then asks torch_xla for the device instead of using CUDA
    device_flags = ("--fp16",) if cuda else ("--cpu",)
    if args.max_updates:
        max_update = args.max_updates
    elif args.minutes and not args.smoke:
        max_update = 0
    else:
        max_update = setup.updates
    return Plan(setup=setup, device=device if cuda else Device(cuda=False), device_flags=device_flags,
                alpha=args.rdrop_alpha or setup.alpha, max_update=max_update,
                minutes=None if args.smoke else args.minutes, smoke=args.smoke, concurrent=args.concurrent)


RUN_LABELS = {"rdrop": "R-Drop", "baseline": "the baseline"}


def shortfall_warning(updates: Dict[str, int], setup: Setup) -> Optional[str]:
    """What to say when any run (``updates``: each run's count) ended with fewer updates than the default
    run makes."""
    short = [(name, count) for name, count in updates.items() if count < setup.updates]
    if not short:
        return None
    made = " and ".join(f"{RUN_LABELS.get(name, name)} made {count} updates" for name, count in short)
    reason = ("R-Drop needs more updates than the baseline to pay off (the paper and its authors say so)"
              if "rdrop" in dict(short) else "A baseline stopped early is not the baseline of the default run")
    return (f"{made[0].upper()}{made[1:]}, fewer than the {setup.updates} of the default run. {reason}, so this "
            f"short run does not settle the comparison: run without --minutes and --max-updates for "
            f"{setup.updates}.")


def unequal_updates_warning(updates: Dict[str, int]) -> Optional[str]:
    """What to say when the two runs ended with different numbers of updates: under --minutes the baseline
    has a time limit of its own, which a slow or busy machine can reach before R-Drop's update count."""
    if len(set(updates.values())) <= 1:
        return None
    counts = ", ".join(f"{RUN_LABELS.get(name, name)} {count}" for name, count in updates.items())
    return (f"The two runs made different numbers of updates ({counts}), so the table compares unequal runs, "
            "not the same number of updates each: the one with fewer stopped early (under --minutes, at its own "
            "time limit, on a slow or busy machine). Run with --max-updates instead of --minutes for runs of "
            "equal length.")


SMOKE_WARNING = ("This is a --smoke run: a few updates of a tiny model, to check that everything runs. Its numbers "
                 "compare nothing, whatever the p-value says: run without --smoke for the comparison.")


def update_warnings(results: Dict[str, Dict[str, float]], plan: Plan) -> List[str]:
    """The warnings about the runs: a smoke run compares nothing; else a run shorter than the default, runs
    of unequal length."""
    if plan.smoke:
        return [SMOKE_WARNING]
    updates = {name: int(results[name]["updates"]) for name in RUNS if name in results}
    return [warning for warning in (shortfall_warning(updates, plan.setup), unequal_updates_warning(updates))
            if warning]


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
        raise RuntimeError(f"cannot build the LibreOffice help corpus ({err}); "
                           f"{no_apt_hint(args.src, args.tgt)}") from err
    return out


def no_apt_hint(src: str, tgt: str) -> str:
    """What to do without apt-get: pass a corpus that is already there with --corpus, naming the copy of the
    LibreOffice help corpus beside the checkout (in SHARED_CORPORA) when it holds these languages."""
    hint = (f"pass a parallel corpus you already have instead: --corpus DIR --src {src} --tgt {tgt}, where DIR "
            f"holds {{train,valid,test}}.{{{src},{tgt}}} (one sentence per line, before BPE), e.g. the folder "
            "data/iwslt14.de-en/tmp written by scripts/prepare-iwslt14.sh")
    sibling = SHARED_CORPORA / "lohelp-de-en"
    if all((sibling / f"{split}.{lang}").is_file() for split in SPLITS for lang in (src, tgt)):
        hint += (f"; beside this checkout there is a copy of the LibreOffice help corpus: "
                 f"--corpus {sibling} --src {src} --tgt {tgt}")
    return hint


def slice_corpus(raw: Path, dest: Path, src: str, tgt: str, train_pairs: int, heldout_pairs: int) -> Path:
    """The first lines of each split, for a quick run, in ``dest`` named after the corpus content (two
    corpora in folders of one name, or a corpus edited in place, get slices of their own); the full corpus
    when both are 0."""
    if not train_pairs and not heldout_pairs:
        return raw
    dest = dest.with_name(f"{dest.name}-{corpus_digest(raw, src, tgt)}")
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
    """Cache folder named after everything that changes the binarised data: the corpus by its folder's name
    and its content, so that a copy under the same name elsewhere (or on another machine) finds the same
    cache."""
    settings = f"{setup.bpe_merges}|{setup.train_pairs}|{setup.heldout_pairs}"
    digest = corpus_digest(raw, args.src, args.tgt, settings)
    return args.work_dir / "prepared" / f"{raw.name}-{args.src}{args.tgt}-{digest}"


def corpus_digest(raw: Path, src: str, tgt: str, salt: str = "") -> str:
    digest = hashlib.sha1(salt.encode())
    for split in SPLITS:
        for lang in (src, tgt):
            digest.update((raw / f"{split}.{lang}").read_bytes())
    return digest.hexdigest()[:10]


def train_command(bin_dir: Path, run_dir: Path, plan: Plan, alpha: float, args,
                  max_update: int, stop_hours: float) -> List[str]:
    setup = plan.setup
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(bin_dir), "--user-dir", str(USER_DIR),
           "--source-lang", args.src, "--target-lang", args.tgt,
           "--task", "rdrop_translation", "--criterion", "rdrop_label_smoothed_cross_entropy",
           "--rdrop-alpha", str(alpha), "--label-smoothing", "0.1",
           "--arch", setup.arch, "--share-all-embeddings",
           "--encoder-layers", str(setup.layers), "--decoder-layers", str(setup.layers),
           "--encoder-embed-dim", str(setup.embed_dim), "--decoder-embed-dim", str(setup.embed_dim),
           "--encoder-ffn-embed-dim", str(setup.ffn_dim), "--decoder-ffn-embed-dim", str(setup.ffn_dim),
           "--encoder-attention-heads", str(setup.heads), "--decoder-attention-heads", str(setup.heads),
           "--dropout", str(setup.dropout), "--weight-decay", str(setup.weight_decay),
           "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
           "--lr", str(setup.lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(setup.warmup),
           "--max-tokens", str(setup.max_tokens), "--seed", str(args.seed),
           "--validate-interval-updates", str(setup.validate_every),
           "--save-interval-updates", str(setup.validate_every), "--keep-interval-updates", "1",
           # every validate_every updates only, not at each (short) epoch's end as well
           "--validate-interval", "100000", "--save-interval", "100000",
           # the best checkpoint is translated with; the last update checkpoint, with its optimizer state,
           # lets a run that was cut off go on from there
           "--no-epoch-checkpoints", "--no-last-checkpoints",
           "--save-dir", str(run_dir / "checkpoints"),
           "--log-format", "json", "--log-interval", str(setup.log_every),
           "--log-file", str(run_dir / "train.log"), "--num-workers", "0", *plan.device_flags]
    if max_update:
        cmd += ["--max-update", str(max_update)]
    if stop_hours:  # at least the least it writes: fairseq reads 0 as no limit
        cmd += ["--stop-time-hours", f"{max(stop_hours, 1e-5):.5f}"]
    if args.eval_bleu:
        cmd += ["--eval-bleu", "--eval-bleu-remove-bpe", "--eval-bleu-detok", "moses",
                "--eval-bleu-args", json.dumps({"beam": 1, "max_len_a": 1.2, "max_len_b": 10})]
    return cmd


Echo = Callable[[str], Optional[str]]  # what to print of an output line (None: nothing)
Job = Tuple[Sequence[str], Path, Echo]  # a command, the file that keeps all of its output, and its echo
PRINT_LOCK = threading.Lock()  # commands run side by side print whole lines


def run_logged(cmd: Sequence[str], log: Path, echo: Echo = lambda line: line) -> List[str]:
    """Run a command, printing what ``echo`` makes of each output line; all of the output is kept in
    ``log`` and returned.  Stopped (Ctrl-C, SIGTERM, SIGHUP: see stop_on_signals) or failed, the command
    stops too."""
    outcome = run_logged_together({"command": (cmd, log, echo)})["command"]
    if outcome.error is not None:
        raise outcome.error
    return outcome.lines


@dataclass
class Outcome:
    """How one of the commands of run_logged_together ended: its output lines, or the error that ended it."""
    lines: List[str]
    error: Optional[Exception]
    wall_s: float


def run_logged_together(jobs: Dict[str, Job], on_success: Callable[[str, float], None] = lambda name, wall_s: None
                        ) -> Dict[str, Outcome]:
    """Run the commands at the same time, each as run_logged does; one that fails leaves the others running
    to their end.  ``on_success(name, wall_s)`` is called as soon as a command has succeeded, so that what it
    records stays when the others are stopped.  Leaving this function early (Ctrl-C, SIGTERM, SIGHUP) stops
    all of them."""
    procs: Dict[str, subprocess.Popen] = {}
    outcomes: Dict[str, Outcome] = {}
    start = time.time()

    def follow(name: str, log: Path, echo: Echo) -> None:
        lines: List[str] = []
        try:
            with open(log, "w", encoding="utf-8") as copy:
                lines = follow_output(procs[name], copy, echo)
            checked_output(procs[name], lines, log)
            on_success(name, time.time() - start)
            error = None
        except Exception as err:  # noqa: BLE001 (handed to the caller, which names the run)
            error = err
        finally:
            stop_process(procs[name])  # this thread reads the pipe, so it closes it too
        outcomes[name] = Outcome(lines, error, time.time() - start)

    threads = []
    try:
        for name, (cmd, log, echo) in jobs.items():
            procs[name] = start_command(cmd)
            threads.append(threading.Thread(target=follow, args=(name, log, echo), name=name, daemon=True))
            threads[-1].start()
        for thread in threads:
            while thread.is_alive():  # in short waits, so that a signal's handler runs in this thread
                thread.join(0.2)
    finally:
        stop_processes(list(procs.values()))
    return outcomes


def start_command(cmd: Sequence[str]) -> subprocess.Popen:
    logger.info("running: %s", " ".join(cmd))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def follow_output(proc: subprocess.Popen, copy, echo: Echo) -> List[str]:
    """Every output line of ``proc`` until it exits: written to ``copy``, printed as ``echo`` makes it."""
    lines = []
    for line in proc.stdout:
        shown = echo(line)
        if shown is not None:
            with PRINT_LOCK:
                sys.stdout.write(shown)
                sys.stdout.flush()
        copy.write(line)
        lines.append(line.rstrip("\n"))
    proc.wait()
    return lines


def checked_output(proc: subprocess.Popen, lines: List[str], log: Path) -> List[str]:
    if proc.returncode != 0:
        tail = "\n".join(lines[-FAILURE_TAIL_LINES:])
        raise RuntimeError(f"command failed (exit {proc.returncode}); the end of its output:\n{tail}\n"
                           f"(all of it: {log})")
    return lines


FAILURE_TAIL_LINES = 20  # of a failed command's output, shown with the error (the rest is in its log)


STOP_TIMEOUT_S = 10.0  # how long a command has to exit after SIGTERM before it is killed


def stop_processes(procs: List[subprocess.Popen], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop them all as stop_process stops one, within the time it gives one: each is sent SIGTERM first, and
    an exception while one is awaited (a second signal) still reaches the others.  Their output pipes are left
    open: the threads that read them close them (closing a pipe that another thread reads waits for it)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout

    def stop(proc: subprocess.Popen) -> None:
        stop_process(proc, max(deadline - time.monotonic(), 0.0), close_output=False)

    with contextlib.ExitStack() as stops:  # calls every stop, even after one has raised
        for proc in procs:
            stops.callback(stop, proc)


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S, close_output: bool = True) -> None:
    """Terminate ``proc`` unless it has exited, kill it if it is still there after ``timeout`` seconds, and
    reap it."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
    finally:  # even when a second signal interrupts the wait
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if close_output and proc.stdout is not None:
            proc.stdout.close()


def stop_on_signals():
    """:func:`prepare.stop_on_signals` with the quickstart's word on what a rerun reuses: run_logged then
    stops the fairseq command it waits for instead of leaving it running on its own."""
    return prepare.stop_on_signals(
        lambda name: sys.stderr.write(f"\nquickstart: {name} received; stopping; {INTERRUPTED}\n"))


def progress_echo(name: str, total_updates: int, budget_s: float, earlier_s: float = 0.0
                  ) -> Callable[[str], Optional[str]]:
    """fairseq's periodic training records become one line of progress: updates done, updates in all and
    the estimated time left (from the time budget under --minutes); a validation record, one line with the
    valid loss.  The rest of fairseq's output (its config, the model, warnings) goes to the run's log only.
    A run that goes on from a checkpoint after ``earlier_s`` seconds of training is timed by this clock:
    fairseq's own restarts at 0 then (see continue_wall)."""
    started = time.time()

    def echo(line: str) -> Optional[str]:
        records = plot.parse_log_lines([line])
        valid = records["valid"]
        if valid and isinstance(valid[0].get("valid_loss"), float):
            return (f"[{name}] valid loss {valid[0]['valid_loss']:.3f} after "
                    f"{int(valid[0].get('valid_num_updates', 0))} updates\n")
        record = records["train_inner"]
        if not record:
            return None
        done, wall = int(record[0]["num_updates"]), float(record[0].get("wall", 0.0))
        if earlier_s:
            wall = earlier_s + time.time() - started
        if total_updates:
            left = wall / done * (total_updates - done) if done else float("nan")
            return (f"[{name}] {done}/{total_updates} updates, {wall / 60:.1f} min so far, "
                    f"about {left / 60:.1f} min left\n")
        return (f"[{name}] {done} updates, {wall / 60:.1f} min so far, "
                f"at most {max(budget_s - wall, 0) / 60:.1f} min left of its time budget\n")
    return echo


def generate(bin_dir: Path, run_dir: Path, plan: Plan, args, subset: str, lenpen: float = 1.0,
             nbest: int = 1) -> Dict[int, List[Tuple[str, List[float]]]]:
    """The ``nbest`` best translations of each sentence of ``subset`` by the run's best checkpoint, each
    as (Moses-tokenised text, per-token log-probabilities ending with that of end-of-sentence), best first."""
    results = run_dir / f"generate-{subset}"
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(bin_dir), "--user-dir", str(USER_DIR),
           "--source-lang", args.src, "--target-lang", args.tgt, "--task", "rdrop_translation",
           "--path", str(run_dir / "checkpoints" / "checkpoint_best.pt"), "--gen-subset", subset,
           "--beam", str(plan.setup.beam), "--nbest", str(nbest), "--lenpen", str(lenpen),
           "--batch-size", "128", "--remove-bpe", "--max-len-a", "1.2", "--max-len-b", "10",
           "--results-path", str(results)]
    if not plan.device.cuda:
        cmd += ["--cpu"]
    logger.info("translating the %s set with %s (--lenpen %g)", subset, run_dir.name, lenpen)
    # the translations go to their own file: lines on a shared stdout/stderr pipe can interleave
    run_logged(cmd, run_dir / f"generate-{subset}.log", echo=lambda line: None)
    return read_nbest(results / f"generate-{subset}.txt")


def read_nbest(path: Path) -> Dict[int, List[Tuple[str, List[float]]]]:
    """The H- lines of a fairseq-generate output by sentence number, in its order (best first), each with
    the per-token scores of its P- line."""
    hyps: Dict[int, List[Tuple[str, List[float]]]] = {}
    for line in read_lines(path):
        kind, _, rest = line.partition("-")
        if kind == "H":
            ident, _score, text = (rest.split("\t", 2) + ["", ""])[:3]
            hyps.setdefault(int(ident), []).append((text, []))
        elif kind == "P":
            ident, scores = (rest.split("\t", 1) + [""])[:2]
            hyps[int(ident)][-1][1].extend(float(x) for x in scores.split())
    return hyps


def best_by_lenpen(candidates: List[Tuple[str, List[float]]], lenpen: float) -> str:
    """The translation fairseq's beam search returns with ``--lenpen lenpen``: its finished hypotheses do
    not depend on the length penalty, which only divides each one's summed log-probability by its length
    (tokens and end-of-sentence) to the power lenpen before they are ranked."""
    if not candidates:
        return ""
    return max(candidates, key=lambda c: sum(c[1]) / max(len(c[1]), 1) ** lenpen)[0]


def detokenizer(lang: str) -> Callable[[str], str]:
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    return lambda text: detok.detokenize(text.split())


def choose_lenpen(nbest: Dict[int, List[Tuple[str, List[float]]]], refs: List[str], detok,
                  grid: Sequence[float] = LENPENS) -> Tuple[float, Dict[float, float]]:
    """The length penalty of ``grid`` with the best valid BLEU (ties: the one nearest 1, no penalty), and
    the BLEU of each."""
    from sacrebleu.metrics import BLEU

    bleu = {lenpen: BLEU().corpus_score([detok(best_by_lenpen(nbest.get(i, []), lenpen))
                                         for i in range(len(refs))], [refs]).score for lenpen in grid}
    best = max(bleu.values())
    return min((lp for lp in grid if bleu[lp] == best), key=lambda lp: abs(lp - 1.0)), bleu


def summarize(run_dir: Path, wall: float = 0.0) -> Dict[str, float]:
    """Training figures of one run from its fairseq JSON log."""
    records = plot.read_log(run_dir / "train.log")
    valid = records["valid"]
    best = min(valid, key=lambda r: r["valid_loss"]) if valid else {}
    inner = records["train_inner"]
    last_update = max([r.get("num_updates", 0) for r in inner] +
                      [r.get("valid_num_updates", 0) for r in valid] + [0])
    return {"best_valid_loss": best.get("valid_loss", float("nan")),
            "valid_ppl": best.get("valid_ppl", float("nan")), "updates": int(last_update),
            "wall_s": wall, "words_per_s": words_per_second(inner), "shared_device": shared_device(run_dir)}


def words_per_second(inner: List[dict]) -> float:
    """Target words trained on per second of the logged intervals: each record's words (its words per batch
    times the updates since the record before) over its time (those words over its words per second).  The
    first record of a run has no rate yet (fairseq logs 0) and is left out, not averaged in."""
    words = seconds = 0.0
    previous = 0.0
    for record in inner:
        done, wpb, wps = (record.get(key) for key in ("num_updates", "wpb", "wps"))
        if not isinstance(done, float):
            continue
        if isinstance(wpb, float) and isinstance(wps, float) and wps > 0 and done > previous:
            words += wpb * (done - previous)
            seconds += wpb * (done - previous) / wps
        previous = done
    return words / seconds if seconds else float("nan")


TABLE_HEADER = ("| run | test BLEU ± 95% CI | p vs baseline | lenpen | BP | best valid loss | valid ppl | updates "
                "| wall time | words/s |")


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    rows = [TABLE_HEADER, "|" + "---|" * 10]
    for name, r in results.items():
        p_value = "–" if r.get("bleu_p") is None else f"{r['bleu_p']:.3f}"
        rows.append(f"| {name} | {r['bleu']:.2f} ± {r['bleu_ci95']:.2f} | {p_value} | {r['lenpen']:g} "
                    f"| {r['bp']:.2f} | {r['best_valid_loss']:.3f} | {r['valid_ppl']:.2f} | {r['updates']} "
                    f"| {r['wall_s'] / 60:.1f} min | {r['words_per_s']:.0f} |")
    return "\n".join(rows)


def bleu_with_significance(systems: Dict[str, List[str]], refs: List[str]) -> Dict[str, Dict[str, float]]:
    """Corpus BLEU of each system with its brevity penalty, the 95% confidence interval of sacreBLEU's
    paired bootstrap resampling (1,000 samples, fixed seed) and, for every system after the first
    (the baseline), the p-value of its difference from it."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    _, scores = PairedTest(list(systems.items()), {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=1000)()
    baseline_bleu = scores["BLEU"][0].score
    return {name: {"bleu": float(result.score), "bleu_ci95": float(result.ci),
                   "bleu_p": _p_value(result, baseline_bleu),
                   "bp": float(BLEU().corpus_score(systems[name], [refs]).bp)}
            for name, result in zip(systems, scores["BLEU"])}


def _p_value(result, baseline_bleu: float) -> Optional[float]:
    if result.p_value is None:
        return None
    # sacreBLEU counts the resamples whose difference exceeds the observed one: where the two BLEUs are
    # equal and every resample ties (two empty outputs, say), none does and p would be its least, 1/1001
    return 1.0 if result.score == baseline_bleu else float(result.p_value)


def train_runs(bin_dir: Path, out_dir: Path, plan: Plan, args) -> Dict[str, float]:
    """Both runs for plan.max_update updates, one after the other or with --concurrent at once; under
    --minutes, R-Drop within 60% of 90% of the budget (the rest is for translating), then the baseline for
    as many updates.  Returns each run's training time."""
    walls, earlier, commands, max_update = {}, {}, {}, plan.max_update
    budget_s = (plan.minutes or 0.0) * 60 * 0.9
    shares = {"rdrop": 0.6, "baseline": 0.4}
    inputs = run_inputs(bin_dir)
    together: Dict[str, Job] = {}
    for name in RUNS:
        alpha = plan.alpha if name == "rdrop" else 0.0
        run_dir = out_dir / name
        stop_s = shares[name] * budget_s
        if name == "baseline":
            stop_s *= 1.5  # a safety net only: the update count set by R-Drop decides
        cmd = commands[name] = train_command(bin_dir, run_dir, plan, alpha, args, max_update, stop_s / 3600)
        walls[name] = finished_wall(run_dir, cmd, inputs)
        if walls[name] is not None:
            logger.info("%s: %s holds a finished run with these settings; reusing it (delete the folder to "
                        "train it again)", name, run_dir)
        else:
            earlier[name], run_cmd = begin_run(name, run_dir, cmd, inputs)
            logger.info("%s: training; fairseq's whole output goes to %s", name, run_dir / "stdout.log")
            job = (run_cmd, run_dir / "stdout.log", progress_echo(name, max_update, stop_s, earlier[name]))
            if plan.concurrent:
                together[name] = job
            else:
                start = time.time()
                run_logged(*job)
                walls[name] = record_finished(run_dir, cmd, inputs, earlier[name] + time.time() - start)
        if name == "rdrop" and budget_s:  # the budget may have stopped it before --max-updates
            max_update = summarize(run_dir)["updates"]
            logger.info("R-Drop made %d updates; the baseline gets as many", max_update)
    if together:
        logger.info("training %s at the same time (--concurrent)", " and ".join(together))
        shared = len(together) > 1
        if shared:  # for a run that goes on later: its earlier attempt's time counts in its wall time
            for name in together:
                note_shared(out_dir / name)

        def finished(name: str, wall_s: float) -> None:
            walls[name] = record_finished(out_dir / name, commands[name], inputs, earlier[name] + wall_s, shared)

        outcomes = run_logged_together(together, on_success=finished)
        failed = [f"{name}: {outcome.error}" for name, outcome in outcomes.items() if outcome.error is not None]
        if failed:
            raise RuntimeError("\n".join(failed))
    return walls


def begin_run(name: str, run_dir: Path, cmd: Sequence[str], inputs: Dict[str, Optional[str]]
              ) -> Tuple[float, List[str]]:
    """Make ``run_dir`` ready for a training of ``cmd``: afresh, or, where a run of the same command and
    inputs was cut off after its first update checkpoint, from that checkpoint (its optimizer, schedule and
    place in the data included), its log cut back to it.  Returns the training time of its earlier attempts
    (each from its start to its output's last line) and the command to run."""
    resume = resume_point(run_dir, cmd, inputs)
    if resume is None:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        starts: List[float] = []
        resumed: List[int] = []
        shared = False
    else:
        update = checkpoint_update(resume)
        logger.info("%s: going on from %s, the last checkpoint of the run that was cut off", name, resume)
        record = started_record(run_dir)
        starts, shared = record["starts"], record.get("shared") is True
        resumed = record.get("resumed_from", []) + [update]
        truncate_log(run_dir / "train.log", update)
        if (run_dir / "stdout.log").is_file():
            (run_dir / "stdout.log").rename(run_dir / f"stdout.{len(starts)}.log")
    earlier = sum(attempt_times(run_dir, starts))
    write_started(run_dir, {"command": list(cmd[1:]), "inputs": inputs, "starts": starts + [time.time()],
                            "resumed_from": resumed, "shared": shared})
    return earlier, list(cmd) + ([] if resume is None else ["--restore-file", str(resume)])


def started_record(run_dir: Path) -> dict:
    """The run's started.json (begin_run), or {} where there is none that reads."""
    try:
        record = json.loads((run_dir / STARTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_started(run_dir: Path, record: dict) -> None:
    with atomic_output(run_dir / STARTED) as handle:
        json.dump(record, handle, indent=1)


def attempt_times(run_dir: Path, starts: List[float]) -> List[float]:
    """The training time of each earlier attempt of a run: from its start to the last line it printed."""
    logs = [run_dir / f"stdout.{n + 1}.log" for n in range(len(starts))]
    return [max(log.stat().st_mtime - start, 0.0) if log.is_file() else 0.0 for log, start in zip(logs, starts)]


def continue_wall(run_dir: Path, record: dict) -> None:
    """fairseq's ``wall`` stays at 0 in a run that goes on from a checkpoint mid-epoch (its meter is restored
    stopped): in the log of a run that did, each training record of a later attempt gets the time trained
    before it instead, the earlier attempts' times plus its own since its start, read from the timestamp of
    the same record in that attempt's console output (``--log-file`` lines have none).  ``record``: the
    run's started_record."""
    starts, resumed = record["starts"], record.get("resumed_from", [])
    if len(starts) < 2 or len(resumed) != len(starts) - 1 or not (run_dir / "train.log").is_file():
        return
    offsets = [sum(attempt_times(run_dir, starts[:k])) for k in range(len(starts))]
    outputs = [run_dir / f"stdout.{k + 1}.log" for k in range(len(starts) - 1)] + [run_dir / "stdout.log"]
    stamps: List[Dict[int, float]] = []
    for output in outputs:
        stamps.append({})
        for line in read_lines(output) if output.is_file() else []:
            head, brace, body = line.partition("{")
            try:
                updates = int(json.loads(brace + body).get("num_updates", -1))
                stamps[-1][updates] = time.mktime(time.strptime(head[:19], "%Y-%m-%d %H:%M:%S"))
            except (ValueError, AttributeError):
                continue
    lines = read_lines(run_dir / "train.log")
    for index, line in enumerate(lines):
        _, brace, body = line.partition("{")
        try:
            entry = json.loads(brace + body)
            updates = int(entry["num_updates"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        attempt = sum(updates > point for point in resumed)
        if attempt and "wall" in entry and updates in stamps[attempt]:
            entry["wall"] = str(round(offsets[attempt] + max(stamps[attempt][updates] - starts[attempt], 0.0)))
            lines[index] = json.dumps(entry)
    write_lines(run_dir / "train.log", lines)


def resume_point(run_dir: Path, cmd: Sequence[str], inputs: Dict[str, Optional[str]]) -> Optional[Path]:
    """The latest update checkpoint of an unfinished run of ``cmd`` and ``inputs`` in ``run_dir``, or None."""
    record = started_record(run_dir)
    if not (record.get("command") == list(cmd[1:]) and record.get("inputs") == inputs
            and isinstance(record.get("starts"), list)):
        return None
    try:
        [latest] = last_checkpoints(run_dir / "checkpoints", 1)
    except FileNotFoundError:  # no update checkpoint yet, or no folder
        return None
    max_update = int(cmd[cmd.index("--max-update") + 1]) if "--max-update" in cmd else 0
    # at its last update a run has nothing to go on with (fairseq would make one more); and fairseq copies
    # its best checkpoint without a temporary name, so a cut may have left it short, which no later
    # validation need rewrite
    if (max_update and checkpoint_update(latest) >= max_update) \
            or not whole_zip(run_dir / "checkpoints" / "checkpoint_best.pt"):
        return None
    return latest


def whole_zip(path: Path) -> bool:
    """Whether ``path`` is a zip file with its central directory: a copy cut short has none."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile):
        return False


def checkpoint_update(path: Path) -> int:
    """The update of fairseq's ``checkpoint_<epoch>_<update>.pt``."""
    return int(UPDATE_CHECKPOINT.fullmatch(path.name).group(1))


def truncate_log(log: Path, update: int) -> None:
    """Cut fairseq's JSON log back to ``update``: what a resumed run logs again from there is not kept twice."""
    lines = read_lines(log) if log.is_file() else []
    for index, line in enumerate(lines):
        inner = plot.parse_log_lines([line])["train_inner"]
        if inner and inner[0].get("num_updates", 0) > update:
            write_lines(log, lines[:index])
            return


def note_shared(run_dir: Path) -> None:
    """Record in the run's started.json that it trains beside the other run."""
    write_started(run_dir, {**started_record(run_dir), "shared": True})


def record_finished(run_dir: Path, cmd: Sequence[str], inputs: Dict[str, Optional[str]], wall_s: float,
                    shared_device: bool = False) -> float:
    """Mark the run in ``run_dir`` as trained to its end, for finished_wall; returns ``wall_s``.
    ``shared_device``: it trained beside the other run (--concurrent), in this attempt or, for a run that
    went on from a checkpoint, an earlier one, for the table's note."""
    started = started_record(run_dir)
    if started:
        continue_wall(run_dir, started)
        shared_device = shared_device or started.get("shared") is True
    with atomic_output(run_dir / FINISHED) as handle:
        json.dump({"command": list(cmd[1:]), "inputs": inputs, "wall_s": wall_s, "shared_device": shared_device},
                  handle, indent=1)
    return wall_s


def shared_device(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` trained beside another (record_finished)."""
    try:
        return json.loads((run_dir / FINISHED).read_text(encoding="utf-8")).get("shared_device") is True
    except (OSError, ValueError, AttributeError):
        return False


def run_inputs(bin_dir: Path) -> Dict[str, Optional[str]]:
    """What a run depends on beyond its command: the binarised data (rebuilt in the same folder when the
    tokeniser or BPE changes), the plugin's code, torch and fairseq."""
    data, plugin = hashlib.sha1(), hashlib.sha1()
    for path in sorted(p for p in bin_dir.iterdir() if p.is_file()):
        data.update(path.name.encode() + b"\0" + path.read_bytes())
    for path in sorted(USER_DIR.rglob("*.py")):
        if "recipes" not in path.relative_to(USER_DIR).parts:
            plugin.update(str(path.relative_to(USER_DIR)).encode() + b"\0" + path.read_bytes())
    return {"data": data.hexdigest(), "plugin": plugin.hexdigest(),
            "torch": package_version("torch"), "fairseq": package_version("fairseq-fixed", "fairseq")}


def finished_wall(run_dir: Path, cmd: Sequence[str], inputs: Dict[str, Optional[str]]) -> Optional[float]:
    """The training time of the run in ``run_dir`` if it finished with the command ``cmd`` (the interpreter
    aside: a new virtual environment trains the same run) and the same ``inputs``, and its best checkpoint
    is there; else None."""
    if not (run_dir / "checkpoints" / "checkpoint_best.pt").is_file():
        return None
    try:
        record = json.loads((run_dir / FINISHED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("command") != list(cmd[1:]) or record.get("inputs") != inputs:
        return None
    return float(record.get("wall_s", 0.0))


def score(bin_dir: Path, raw: Path, out_dir: Path, plan: Plan, args, walls) -> Dict[str, Dict[str, float]]:
    """Per run: --lenpen chosen on the valid set (one beam search, its finished hypotheses re-ranked for
    each value of LENPENS), then the test translations with it, scored with the paired bootstrap."""
    detok = detokenizer(args.tgt)
    valid_refs = read_lines(raw / f"valid.{args.tgt}")
    refs = read_lines(raw / f"test.{args.tgt}")
    translations, lenpens = {}, {}
    for name in ("baseline", "rdrop"):  # the paired test compares every system with the first
        run_dir = out_dir / name
        nbest = generate(bin_dir, run_dir, plan, args, "valid", nbest=plan.setup.beam)
        lenpen, valid_bleu = choose_lenpen(nbest, valid_refs, detok)
        logger.info("%s: valid BLEU by --lenpen %s; chose %g", name,
                    ", ".join(f"{lp:g}: {b:.2f}" for lp, b in valid_bleu.items()), lenpen)
        by_id = generate(bin_dir, run_dir, plan, args, "test", lenpen=lenpen)
        if len(by_id) != len(refs):  # scored as empty translations, so BLEU stays over the whole test set
            logger.warning("%s: fairseq-generate returned %d translations for %d test sentences",
                           name, len(by_id), len(refs))
        hyps = [detok(by_id[i][0][0]) if i in by_id else "" for i in range(len(refs))]
        write_lines(run_dir / f"test.hyp.{args.tgt}", hyps)
        translations[name], lenpens[name] = hyps, {"lenpen": lenpen, "valid_bleu_by_lenpen": valid_bleu}
    bleu = bleu_with_significance(translations, refs)
    return {name: {**bleu[name], **lenpens[name], **summarize(out_dir / name, walls[name])}
            for name in translations}


def concurrent_note(results: Dict[str, Dict[str, float]]) -> Optional[str]:
    """What the table says of runs that trained beside another (--concurrent): their times were shared."""
    shared = [RUN_LABELS.get(name, name) for name, row in results.items() if row.get("shared_device")]
    if not shared:
        return None
    if len(shared) > 1:
        return ("The runs trained side by side (--concurrent), sharing the device: their wall times and words/s "
                "are not the speed of a run alone.")
    return (f"{shared[0][0].upper()}{shared[0][1:]} trained beside the other run (--concurrent), sharing the "
            "device: its wall time and words/s are not the speed of a run alone.")


def write_results(out_dir: Path, plan: Plan, raw: Path, results: Dict[str, Dict[str, float]]) -> str:
    """OUT_DIR/results.{json,md}; returns the markdown: the table, and a warning when a run trained less
    than the default, and another when the two runs' update counts differ (logged as well).  In the JSON,
    ``warnings`` lists them and ``warning`` is their text together (None when there is none)."""
    warnings = update_warnings(results, plan)
    note = concurrent_note(results)
    report = format_table(results) + (f"\n\n{note}" if note else "")
    report += "".join(f"\n\n**Warning:** {warning}" for warning in warnings)
    with atomic_output(out_dir / "results.json") as handle:
        json.dump({"setup": asdict(plan.setup), "device": asdict(plan.device), "device_flags": plan.device_flags,
                   "rdrop_alpha": plan.alpha, "concurrent": plan.concurrent, "lenpen_grid": LENPENS,
                   "corpus": str(raw), "warning": " ".join(warnings) or None, "warnings": warnings, "results": results},
                  handle, indent=1)
    with atomic_output(out_dir / "results.md") as handle:
        handle.write(report + "\n")
    for warning in warnings:
        logger.warning(warning)
    return report


RESULT_FILES = ("results.md", "results.json", "curves.png")  # in OUT_DIR, written once both runs are scored


def remove_results(out_dir: Path) -> None:
    """Remove the results and curves an earlier invocation left in ``out_dir``: they may come from other
    settings, and a run that fails must not leave them beside its own runs as if they were its own."""
    removed = []
    for name in RESULT_FILES:
        path = out_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    if removed:
        logger.info("removed the previous %s from %s; this run writes its own", ", ".join(removed), out_dir)


def quickstart(args) -> Dict[str, Dict[str, float]]:
    start = time.time()
    plan = plan_run(detect_device(args.cpu), args)
    setup = plan.setup
    logger.info("device: %s (fairseq-train %s); %s, R-Drop alpha %g, %s", plan.device.name, " ".join(plan.device_flags),
                setup.arch, plan.alpha, (f"{plan.max_update} updates per run"
                                         + (", both at once" if plan.concurrent else "")) if plan.max_update
                else f"R-Drop within 60% of {plan.minutes:g} min, the baseline for as many updates")
    raw = resolve_corpus(args)
    raw = slice_corpus(raw, args.work_dir / "slices" / f"{raw.name}-{setup.train_pairs}-{setup.heldout_pairs}",
                       args.src, args.tgt, setup.train_pairs, setup.heldout_pairs)
    logger.info("corpus: %s", raw)
    bin_dir = prepare_data(args, setup, raw)
    prepared = time.time()
    remove_results(args.out_dir)
    walls = train_runs(bin_dir, args.out_dir, plan, args)
    results = score(bin_dir, raw, args.out_dir, plan, args, walls)
    report = write_results(args.out_dir, plan, raw, results)
    logs = {"baseline": plot.read_log(args.out_dir / "baseline" / "train.log"),
            f"R-Drop (alpha {plan.alpha:g})": plot.read_log(args.out_dir / "rdrop" / "train.log")}
    png = plot.plot_runs(logs, args.out_dir / "curves.png", title=f"{args.src}->{args.tgt}: baseline vs R-Drop")
    print()
    print(report)
    print(f"\ncurves: {png}\ntotal time: {(time.time() - start) / 60:.1f} min, of which "
          f"{(prepared - start) / 60:.1f} min preparing the corpus")
    return results


def prepare_data(args, setup: Setup, raw: Path) -> Path:
    from rdrop_fairseq.recipes.prepare import prepare_parallel

    logger.info("tokenising, learning BPE and binarising (cached after the first run)")
    return prepare_parallel(raw, prepared_dir(args, setup, raw), args.src, args.tgt,
                            bpe_merges=setup.bpe_merges, workers=args.workers)


INTERRUPTED = ("run the same command again to go on: a run that trained to its end is reused, one that was cut "
               "off goes on from its last checkpoint")


def main(argv: Optional[Sequence[str]] = None, parser: Optional[argparse.ArgumentParser] = None):
    args = parse_args(argv, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        stream=sys.stdout, force=True)
    args.work_dir = args.work_dir.expanduser().resolve()
    args.out_dir = args.out_dir.resolve()
    try:
        with stop_on_signals():
            quickstart(args)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        sys.stderr.write(f"quickstart: error: {err}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write(f"\nquickstart: interrupted; {INTERRUPTED}\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
