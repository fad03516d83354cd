"""Training curves from fairseq's JSON logs, like Figure 2 of the R-Drop paper.

    python -m rdrop_fairseq.recipes.plot RUN [RUN ...] [--out curves.png] [--labels A B ...]

RUN is a log file or a folder holding one (``train.log``, or any ``*.log``):
what ``fairseq-train --log-format json --log-file FILE`` writes, or its
captured stdout.  Panels: train and valid loss against updates and against
wall-clock time, the R-Drop KL term (``kl_loss``) and, when the runs used
``--eval-bleu``, valid BLEU.
"""
import argparse
import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# fairseq's json progress records, told apart by their keys: the --log-file holds the bare
# JSON while stdout prefixes it with "<time> | INFO | <tag> | "
TAGS = ("train_inner", "train", "valid")
Records = Dict[str, List[dict]]


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def record_tag(record: dict) -> str:
    if "valid_loss" in record:
        return "valid"
    if "train_loss" in record:
        return "train"
    return "train_inner" if "loss" in record and "num_updates" in record else ""


def parse_log_lines(lines) -> Records:
    """Records per tag; numbers converted to float.  A valid record gets the
    wall-clock time of the last training record before it as ``wall``.  Repeated
    identical records are kept once: fairseq's ``--log-file`` gains one more handler
    with every progress bar, so a long run writes each line many times."""
    records: Records = {tag: [] for tag in TAGS}
    last_wall = 0.0
    seen = set()
    for line in lines:
        _, brace, body = line.partition("{")
        if not brace or body.strip() in seen:
            continue
        seen.add(body.strip())
        try:
            record = {k: _number(v) for k, v in json.loads(brace + body).items()}
        except json.JSONDecodeError:
            continue
        tag = record_tag(record)
        if not tag:
            continue
        if tag == "valid":
            record.setdefault("wall", last_wall)
        else:
            last_wall = record.get("wall", record.get("train_wall", last_wall))
        records[tag].append(record)
    return records


def find_log(run: Path) -> Path:
    run = Path(run)
    if run.is_file():
        return run
    candidates = [run / "train.log"] + sorted(run.glob("*.log"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no fairseq log (train.log or *.log) in {run}")


def read_log(run: Path) -> Records:
    path = find_log(run)
    with open(path, encoding="utf-8", errors="replace") as handle:
        records = parse_log_lines(handle)
    if not records["train_inner"] and not records["valid"]:
        raise ValueError(f"{path} holds no fairseq JSON records (train with --log-format json)")
    return records


def _series(records: List[dict], x_key: str, y_key: str):
    points = [(r[x_key], r[y_key]) for r in records
              if isinstance(r.get(x_key), float) and isinstance(r.get(y_key), float)
              and math.isfinite(r[y_key])]
    return [p[0] for p in points], [p[1] for p in points]


# (title, x label, record tag, x key, y key, y label)
PANELS = (
    ("train loss", "updates", "train_inner", "num_updates", "loss", "loss (bits/token)"),
    ("valid loss", "updates", "valid", "valid_num_updates", "valid_loss", "loss (bits/token)"),
    ("train loss", "wall-clock (s)", "train_inner", "wall", "loss", "loss (bits/token)"),
    ("valid loss", "wall-clock (s)", "valid", "wall", "valid_loss", "loss (bits/token)"),
    ("KL between sub-models", "updates", "train_inner", "num_updates", "kl_loss", "kl_loss"),
    ("valid BLEU", "updates", "valid", "valid_num_updates", "valid_bleu", "BLEU"),
)


def plot_runs(runs: Dict[str, Records], out: Path, title: Optional[str] = None) -> Path:
    """Draw every panel that has data for at least one run into one PNG."""
    # fairseq's import leaves the root logger at DEBUG, which would print matplotlib's font search
    logging.getLogger("matplotlib").setLevel(max(logging.getLogger("matplotlib").getEffectiveLevel(), logging.INFO))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS
              if any(_series(r[p[2]], p[3], p[4])[0] for r in runs.values())]
    if not panels:
        raise ValueError("nothing to plot: the logs hold no loss records")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, xlabel, tag, x_key, y_key, ylabel) in zip(axes.flat, panels):
        for index, (label, records) in enumerate(runs.items()):
            xs, ys = _series(records[tag], x_key, y_key)
            if xs:  # a run keeps its colour in every panel
                ax.plot(xs, ys, color=f"C{index}", marker="o" if tag == "valid" else None,
                        markersize=3, label=label)
        ax.set_title(f"{name} vs {xlabel.split()[0]}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    # the format comes from the name the user gave, not the temporary one; no suffix means PNG
    try:
        fig.savefig(tmp, dpi=80, format=out.suffix[1:].lower() or "png")
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def run_label(run: Path) -> str:
    run = Path(run)
    return run.parent.name if run.is_file() else run.name


def main(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.recipes.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="fairseq log files or folders holding one")
    parser.add_argument("--out", type=Path, default=Path("curves.png"),
                        help="figure to write; its suffix picks the format (.png, .pdf, .svg; none: PNG)")
    parser.add_argument("--labels", nargs="+", help="legend names, one per RUN (default: folder names)")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    labels = args.labels or [run_label(run) for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error("--labels needs one name per RUN")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        parser.error(f"two runs would have the same legend name ({', '.join(repeated)}): "
                     "give each one with --labels")
    try:
        runs = {label: read_log(run) for label, run in zip(labels, args.runs)}
        print(plot_runs(runs, args.out, args.title))
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
