"""GLUE for RoBERTa fine-tuning, as fairseq's ``examples/roberta/preprocess_GLUE_tasks.sh``
prepares it: the task's TSV files from the GLUE download (the archives of the
``download_glue_data.py`` script that fairseq's README.glue.md uses), its input
columns GPT-2 BPE-encoded, ``fairseq-preprocess --only-source --srcdict dict.txt`` per
input, the labels binarised with their own dictionary, and STS-B's scores divided
by 5 into ``label/{train,valid}.label``.

    python -m rdrop_fairseq.recipes.datasets.glue --task RTE --out data [--archive RTE.zip] [--mirror DIR]

Output: ``OUT/data-bin/glue/<TASK>/{input0,input1,label}`` (MNLI: dev_matched is
``valid``, dev_mismatched ``valid1``).  No hash is published for the GLUE archives:
they are checked by reading them to the end, or against ``--hash NAME=sha256:...``.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import prepare
from ..download import Archive, fetch, parse_hash_overrides, with_hashes
from . import gpt2
from .common import Layout, build_parser, check_params, fetch_and_extract, pending, resolve_archives, run

GLUE_DATA = "https://dl.fbaipublicfiles.com/glue/data"
SENTEVAL = "https://dl.fbaipublicfiles.com/senteval/senteval_data"


@dataclass(frozen=True)
class GlueTask:
    """One task of preprocess_GLUE_tasks.sh: 1-based TSV columns, as its ``cut -f``."""
    name: str
    inputs: Tuple[int, ...]
    test_inputs: Tuple[int, ...]
    label: int
    num_classes: int
    dev_label: Optional[int] = None      # MNLI's dev files keep the gold label elsewhere
    dev_splits: Tuple[str, ...] = ("dev",)
    test_splits: Tuple[str, ...] = ("test",)
    headerless: bool = False             # CoLA's train and dev have no header line
    fields: Optional[int] = None         # QQP: drop train/dev lines with another field count

    @property
    def regression(self) -> bool:
        return self.num_classes == 1


TASKS: Dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("QQP", (4, 5), (2, 3), 6, 2, fields=6),
    GlueTask("MNLI", (9, 10), (9, 10), 12, 3, dev_label=16, dev_splits=("dev_matched", "dev_mismatched"),
             test_splits=("test_matched", "test_mismatched")),
    GlueTask("QNLI", (2, 3), (2, 3), 4, 2),
    GlueTask("MRPC", (4, 5), (4, 5), 1, 2),
    GlueTask("RTE", (2, 3), (2, 3), 4, 2),
    GlueTask("STS-B", (8, 9), (8, 9), 10, 1),
    GlueTask("SST-2", (1,), (2,), 2, 2),
    GlueTask("CoLA", (4,), (2,), 2, 2, headerless=True),
)}
# The zip of each task and the folder inside it.
TASK_ZIPS = {"QQP": ("QQP-clean.zip", "QQP"), "MNLI": ("MNLI.zip", "MNLI"), "QNLI": ("QNLIv2.zip", "QNLI"),
             "RTE": ("RTE.zip", "RTE"), "STS-B": ("STS-B.zip", "STS-B"), "SST-2": ("SST-2.zip", "SST-2"),
             "CoLA": ("CoLA.zip", "CoLA")}
# MRPC: the MSR paraphrase corpus as SentEval hosts it, split with GLUE's dev ids.
MRPC_FILES = (Archive("msr_paraphrase_train.txt", (f"{SENTEVAL}/msr_paraphrase_train.txt",)),
              Archive("msr_paraphrase_test.txt", (f"{SENTEVAL}/msr_paraphrase_test.txt",)),
              Archive("mrpc_dev_ids.tsv", (f"{GLUE_DATA}/mrpc_dev_ids.tsv",)))


def task_archives(name: str) -> List[Archive]:
    if name == "MRPC":
        return list(MRPC_FILES)
    zip_name = TASK_ZIPS[name][0]
    return [Archive(zip_name, (f"{GLUE_DATA}/{zip_name}",))]


ALL_ARCHIVES = [a for name in TASKS for a in task_archives(name)] + list(gpt2.ARCHIVES)


def cut(line: str, column: int) -> str:
    """``cut -f COLUMN``: a line without a tab is printed whole."""
    fields = line.split("\t")
    if len(fields) == 1:
        return line
    return fields[column - 1] if column <= len(fields) else ""


def split_mrpc(train: Path, test: Path, dev_ids: Path, dest: Path) -> None:
    """GLUE's train/dev/test.tsv from the MSR paraphrase files (download_glue_data.py's split)."""
    dev = {tuple(line.split("\t")[:2]) for line in _read_tsv(dev_ids)}
    rows = [line.split("\t") for line in _read_tsv(train)]
    header, rows = rows[0], rows[1:]
    for name, keep in (("train", False), ("dev", True)):
        chosen = [r for r in rows if ((r[1], r[2]) in dev) == keep]
        prepare.write_lines(dest / f"{name}.tsv", ["\t".join(header)] + ["\t".join(r) for r in chosen])
    test_rows = [line.split("\t") for line in _read_tsv(test)[1:]]
    prepare.write_lines(dest / "test.tsv", ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
                        + [f"{i}\t" + "\t".join(r[1:5]) for i, r in enumerate(test_rows)])


def _read_tsv(path: Path) -> List[str]:
    with open(path, encoding="utf-8-sig", newline="\n") as handle:
        return [prepare.text_line(line) for line in handle]


def fetch_task(layout: Layout, args, task: GlueTask, local, archives: Dict[str, Archive]) -> Path:
    """The folder holding the task's {train,dev*,test*}.tsv."""
    if task.name == "MRPC":
        orig = layout.orig_dir / task.name
        if not orig.is_dir():
            cache = args.download_dir or args.out / "downloads"
            paths = [fetch(archives[a.name], cache, local[a.name], args.mirror) for a in MRPC_FILES]
            staging = layout.orig_dir / ".MRPC.part"
            split_mrpc(*paths, staging)
            staging.rename(orig)
        return orig
    zip_name, folder = TASK_ZIPS[task.name]
    members = [f"{folder}/{split}.tsv" for split in ("train", *task.dev_splits, *task.test_splits)]
    return fetch_and_extract(layout, gpt2.without_gpt2_files(args, [zip_name]), task_archives(task.name),
                             {zip_name: members})[zip_name]


def split_columns(task: GlueTask, orig: Path, raw: Path) -> Dict[str, List[str]]:
    """preprocess_GLUE_tasks.sh's header/field filtering and ``cut``: ``raw/inputN/<split>``
    and ``raw/label/<split>``; returns the fairseq split names of the valid and test sets."""
    names = {"valid": [f"valid{i or ''}" for i in range(len(task.dev_splits))],
             "test": [f"test{i or ''}" for i in range(len(task.test_splits))]}
    plan = [("train", "train", False), *zip(task.dev_splits, names["valid"], [False] * 3),
            *zip(task.test_splits, names["test"], [True] * 3)]
    for tsv, split, is_test in plan:
        lines = _read_tsv(orig / f"{tsv}.tsv")
        if is_test or not task.headerless:
            lines = lines[1:]
        if task.fields and not is_test:
            lines = [line for line in lines if len(line.split("\t")) == task.fields]
        for i, column in enumerate(task.test_inputs if is_test else task.inputs):
            prepare.write_lines(raw / f"input{i}" / split, (cut(line, column) for line in lines))
        if not is_test:
            column = task.dev_label if task.dev_label and split != "train" else task.label
            prepare.write_lines(raw / "label" / split, (cut(line, column) for line in lines))
    return names


def prepare_glue(args) -> Path:
    if args.task == "ALL":
        return [prepare_task(args, task) for task in TASKS.values()][-1].parent
    return prepare_task(args, TASKS[args.task])


def prepare_task(args, task: GlueTask) -> Path:
    layout = Layout(args.out, f"glue/{task.name}")
    archives = {a.name: a for a in with_hashes(ALL_ARCHIVES, parse_hash_overrides(args.hash))}
    local = resolve_archives(args, list(archives.values()))
    check_params(layout, {})
    orig = fetch_task(layout, args, task, local, archives)
    gpt2_files = gpt2.fetch_files(list(archives.values()), local, args.download_dir or args.out / "downloads",
                                  args.mirror)
    raw, bpe = layout.text_dir / "raw", layout.text_dir / "bpe"
    names = split_columns(task, orig, raw)
    inputs = [f"input{i}" for i in range(len(task.inputs))]
    splits = ["train", *names["valid"], *names["test"]]
    for name in inputs:
        for split in splits:
            if pending(f"GPT-2 BPE {name}/{split}", [bpe / name / split]):
                gpt2.write_encoded(bpe / name / split, prepare.read_lines(raw / name / split), gpt2_files,
                                   args.workers)
    for name in inputs:
        if pending(f"fairseq-preprocess {name}", [layout.bin_dir / name]):
            prepare.binarize(bpe / name, layout.bin_dir / name, None, splits=("train",), workers=args.workers,
                             extra=_prefixes(bpe / name, names) + ["--srcdict", str(gpt2_files["dict.txt"])])
    label_dir = layout.bin_dir / "label"
    if task.regression:
        for split in ("train", *names["valid"]):
            if pending(f"STS-B scores / 5 for {split}", [label_dir / f"{split}.label"]):
                scores = prepare.read_lines(raw / "label" / split)
                prepare.write_lines(label_dir / f"{split}.label", (f"{float(s) / 5.0:g}" for s in scores))
    elif pending("fairseq-preprocess label", [label_dir]):
        prepare.binarize(raw / "label", label_dir, None, splits=("train",), workers=args.workers,
                         extra=_prefixes(raw / "label", {"valid": names["valid"], "test": []}))
    return layout.bin_dir


def _prefixes(folder: Path, names: Dict[str, Sequence[str]]) -> List[str]:
    extra = []
    for flag, kind in (("--validpref", "valid"), ("--testpref", "test")):
        if names[kind]:
            extra += [flag, ",".join(str(folder / n) for n in names[kind])]
    return extra


def parser():
    parser = build_parser("python -m rdrop_fairseq.recipes.datasets.glue", __doc__, ALL_ARCHIVES)
    parser.add_argument("--task", required=True, choices=sorted(TASKS) + ["ALL"],
                        help="the GLUE task to prepare, or ALL")
    return parser


def main(argv=None):
    run(parser(), prepare_glue, argv)


if __name__ == "__main__":
    main()
