"""Tiny files in the upstream formats of the GLUE and CNN/DM recipes: GPT-2's
encoder.json / vocab.bpe / dict.txt, GLUE task zips and the MSR paraphrase files,
the CNN and Daily Mail story tarballs with their URL lists.  Text comes from the
corpora beside the checkout."""
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Dict, List

from fixtures_upstream import AUSTEN, LOHELP, write_tgz
from rdrop_fairseq.recipes import prepare

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("e", "r"), ("Ġ", "a"), ("i", "n"), ("Ġ", "s")]


def english(start: int, count: int) -> List[str]:
    return prepare.read_lines(LOHELP / "train.en")[start:start + count]


def write_gpt2_files(folder: Path) -> Dict[str, Path]:
    """A byte-level BPE with every byte and a few merges, and fairseq's dict.txt over its ids."""
    from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(bytes_to_unicode().values()) + ["".join(pair) for pair in MERGES]
    encoder = {token: i for i, token in enumerate(tokens)}
    paths = {"encoder.json": folder / "encoder.json", "vocab.bpe": folder / "vocab.bpe",
             "dict.txt": folder / "dict.txt"}
    paths["encoder.json"].write_text(json.dumps(encoder), encoding="utf-8")
    paths["vocab.bpe"].write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
    paths["dict.txt"].write_text("".join(f"{i} {10000 - i}\n" for i in range(len(tokens))), encoding="utf-8")
    return paths


def gpt2_hashes(paths: Dict[str, Path]) -> List[str]:
    """``--hash`` values accepting the fixture's GPT-2 files."""
    return [f"{name}=sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}" for name, path in paths.items()]


def _zip(path: Path, files: Dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def tsv_text(header, rows) -> str:
    return "".join("\t".join(map(str, r)) + "\n" for r in ([header] if header else []) + rows)


def build_rte(root: Path, sizes=(("train", 12), ("dev", 4), ("test", 4))) -> Path:
    files, start = {}, 0
    for split, count in sizes:
        text = english(start, 2 * count)
        start += 2 * count
        rows = [[i, text[2 * i], text[2 * i + 1]] + ([] if split == "test" else
                                                     [("entailment", "not_entailment")[i % 2]])
                for i in range(count)]
        header = ["index", "sentence1", "sentence2"] + ([] if split == "test" else ["label"])
        files[f"RTE/{split}.tsv"] = tsv_text(header, rows)
    return _zip(Path(root) / "RTE.zip", files)


def build_stsb(root: Path, sizes=(("train", 40), ("dev", 10), ("test", 6))) -> Path:
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    files, start = {}, 1000
    for split, count in sizes:
        text = english(start, 2 * count)
        start += 2 * count
        rows = [[i, "main-news", "2012", "2012", i, "none", "none", text[2 * i], text[2 * i + 1]]
                + ([] if split == "test" else [f"{(i * 0.37) % 5:.3f}"]) for i in range(count)]
        files[f"STS-B/{split}.tsv"] = tsv_text(header + ([] if split == "test" else ["score"]), rows)
    return _zip(Path(root) / "STS-B.zip", files)


def build_cola(root: Path, train: int = 48, dev: int = 12, test: int = 4) -> Path:
    """CoLA's train and dev have no header line; its test has one."""
    lines = english(2000, train + dev + test)
    rows = [["gj04", i % 2, "" if i % 2 else "*", line] for i, line in enumerate(lines)]
    return _zip(Path(root) / "CoLA.zip", {
        "CoLA/train.tsv": tsv_text(None, rows[:train]), "CoLA/dev.tsv": tsv_text(None, rows[train:train + dev]),
        "CoLA/test.tsv": tsv_text(["index", "sentence"], [[i, line] for i, line in enumerate(lines[train + dev:])])})


def build_mrpc(root: Path, pairs: int = 12) -> Dict[str, Path]:
    """msr_paraphrase_{train,test}.txt (with the BOM of the originals) and mrpc_dev_ids.tsv."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    text = english(3000, 4 * pairs)
    train = [[i % 2, 100 + i, 200 + i, text[2 * i], text[2 * i + 1]] for i in range(pairs)]
    test = [[1 - i % 2, 300 + i, 400 + i, text[2 * pairs + 2 * i], text[2 * pairs + 2 * i + 1]] for i in range(4)]
    paths = {"msr_paraphrase_train.txt": root / "msr_paraphrase_train.txt",
             "msr_paraphrase_test.txt": root / "msr_paraphrase_test.txt", "mrpc_dev_ids.tsv": root / "mrpc_dev_ids.tsv"}
    paths["msr_paraphrase_train.txt"].write_text("\ufeff" + tsv_text(header, train), encoding="utf-8")
    paths["msr_paraphrase_test.txt"].write_text("\ufeff" + tsv_text(header, test), encoding="utf-8")
    paths["mrpc_dev_ids.tsv"].write_text("".join(f"{100 + i}\t{200 + i}\n" for i in range(0, pairs, 3)))
    return paths


def story_url(site: str, i: int) -> str:
    return f"http://web.archive.org/web/2015/http://www.{site}.com/news/story-{i}.html"


def build_cnn_dm(root: Path, stories: int = 14) -> Dict[str, Path]:
    """cnn_stories.tgz, dailymail_stories.tgz (stories named by the SHA1 of their URL) and
    abisee's all_{train,val,test}.txt.  Returns the files and the expected article/summary pairs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    text = [line.strip() for line in prepare.read_lines(AUSTEN / "train.tok.txt") if line.strip()][:stories * 6]
    archives, urls, expected = {"cnn": {}, "dailymail": {}}, [], {}
    for i in range(stories):
        site = ("cnn", "dailymail")[i % 2]
        url = story_url(site, i)
        # A line without an end mark gets " ." (abisee's fix_missing_period); ")" and "!" are end marks.
        article = [text[6 * i] + " ,", "Photo credit (AP)", text[6 * i + 2] + " ."]
        highlights = [text[6 * i + 3] + " ;", text[6 * i + 4] + " !"]
        story = "\n\n".join(article) + "\n\n" + "".join(f"@highlight\n\n{h}\n\n" for h in highlights)
        name = hashlib.sha1(url.encode()).hexdigest()
        archives[site][f"{site}/stories/{name}.story"] = story
        urls.append(url)
        expected[url] = (f"{article[0]} . {article[1]} {article[2]}", f"{highlights[0]} . {highlights[1]}")
    paths = {f"{site}_stories.tgz": write_tgz(root / f"{site}_stories.tgz", files) for site, files in archives.items()}
    for split, chunk in (("train", urls[:10]), ("val", urls[10:12]), ("test", urls[12:])):
        paths[f"all_{split}.txt"] = root / f"all_{split}.txt"
        # a blank line, which the preparation skips
        paths[f"all_{split}.txt"].write_text("".join(u + "\n" for u in chunk) + "\n")
    return {"files": paths, "expected": expected, "urls": urls}
