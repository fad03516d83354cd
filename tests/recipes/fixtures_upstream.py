"""Tiny archives in the upstream formats (file names, folders, tag structure),
filled from the real corpora beside the checkout, for offline runs of the
prepare scripts.  Each builder returns what the tests need to check the result."""
import hashlib
import io
import os
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from rdrop_fairseq.recipes import prepare

REPO = Path(__file__).resolve().parents[2]
CORPORA = REPO / ".." / "shared" / "corpora"
LOHELP = CORPORA / "lohelp-de-en"
AUSTEN = CORPORA / "austen-lm"

# Pairs the pipelines must drop: too long on both sides, and too unequal in length.
LONG_MARKER, RATIO_MARKER = "zzlongpair", "zzratiopair"


def run_script(name: str, *args, env: Dict[str, str] = None) -> subprocess.CompletedProcess:
    """Run ``scripts/NAME`` with RDROP_DATA_MIRROR unset unless ``env`` sets it."""
    environ = {k: v for k, v in os.environ.items() if k != "RDROP_DATA_MIRROR"}
    environ.update(env or {})
    return subprocess.run(["bash", str(REPO / "scripts" / name), *map(str, args)], env=environ,
                          capture_output=True, text=True, timeout=300)


def mtimes(root: Path) -> Dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in Path(root).rglob("*")}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tgz(path: Path, files: Dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            _add(tar, name, text)
    return path


def lohelp_pairs(split: str, start: int, count: int, max_len: int = 175) -> List[Tuple[str, str]]:
    """``count`` pairs from ``start`` on that survive Moses tokenisation + cleaning
    (so the tests know exactly which pairs a pipeline keeps)."""
    de, en = (prepare.read_lines(LOHELP / f"{split}.{lang}") for lang in ("de", "en"))
    de, en = de[start:start + 4 * count], en[start:start + 4 * count]
    tok_de = prepare.moses_tokenize(de, "de")
    tok_en = prepare.moses_tokenize(en, "en")
    kept = [(d, e) for d, e, td, te in zip(de, en, tok_de, tok_en)
            if prepare.clean_pairs([td], [te], ratio=1.5, min_len=1, max_len=max_len)[0]]
    if len(kept) < count:
        raise ValueError(f"{LOHELP}/{split}: only {len(kept)} usable pairs from line {start}")
    return kept[:count]


def bad_pairs() -> List[Tuple[str, str]]:
    long_line = " ".join([LONG_MARKER] * 260)
    return [(long_line, long_line), (f"{RATIO_MARKER} ja", " ".join([RATIO_MARKER] * 8))]


# --- IWSLT14 -------------------------------------------------------------------------------

IWSLT_TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
                   "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")


@dataclass
class IwsltFixture:
    archive: Path
    kept_train_pairs: int          # lines that survive filtering + cleaning, before the 23-split
    test_segments: int
    meta_lines: int = 0            # <speaker>/<reviewer>/<translator> lines kept by default


def _talk_header(talk: int, lang: str) -> List[str]:
    title = {"de": f"Vortrag {talk}: Hilfe", "en": f"Talk {talk}: Help"}[lang]
    return [f"<url>http://www.ted.com/talks/talk_{talk}.html</url>",
            "<keywords>talks, help, software</keywords>",
            f"<speaker>Speaker {talk}</speaker>",
            f"<talkid>{talk}</talkid>",
            f"<title>{title}</title>",
            f"<description>TED Talk {talk} Subtitles and Transcript</description>",
            f'<reviewer href="http://www.ted.com/profiles/{talk}">Reviewer {talk}</reviewer>',
            f'<translator href="http://www.ted.com/profiles/9{talk}">Translator {talk}</translator>']


def _iwslt_xml(name: str, lang: str, segments: Sequence[str]) -> str:
    set_tag = "refset" if lang == "en" else "srcset"
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>",
             f'<{set_tag} setid="{name}" srclang="german" trglang="english">',
             '<doc docid="1" genre="lectures">', "<url>http://www.ted.com/talks/x.html</url>",
             "<description>TED Talk Subtitles and Transcript</description>",
             "<talkid>1</talkid>", "<title>Ein Vortrag</title>"]
    lines += [f'<seg id="{i}"> {seg} </seg>' for i, seg in enumerate(segments, 1)]
    lines += ["</doc>", f"</{set_tag}>", "</mteval>"]
    return "\n".join(lines) + "\n"


def build_iwslt14(root: Path, talks: int = 3, pairs_per_talk: int = 70, segs_per_set: int = 8) -> IwsltFixture:
    pairs = lohelp_pairs("train", 0, talks * pairs_per_talk)
    sides: Dict[str, List[str]] = {"de": [], "en": []}
    for talk in range(talks):
        body = pairs[talk * pairs_per_talk:(talk + 1) * pairs_per_talk]
        if talk == 0:
            body = body + bad_pairs()
        for column, lang in enumerate(("de", "en")):
            sides[lang] += _talk_header(talk + 1, lang) + [p[column] for p in body]
    files = {f"de-en/train.tags.de-en.{lang}": "\n".join(lines) + "\n" for lang, lines in sides.items()}
    test = lohelp_pairs("test", 0, segs_per_set * len(IWSLT_TEST_SETS))
    test[0] = (test[0][0], test[0][1] + " It\u2019s")
    for i, name in enumerate(IWSLT_TEST_SETS):
        chunk = test[i * segs_per_set:(i + 1) * segs_per_set]
        for column, lang in enumerate(("de", "en")):
            files[f"de-en/{name}.de-en.{lang}.xml"] = _iwslt_xml(name, lang, [p[column] for p in chunk])
    files["de-en/README"] = "IWSLT 2014 fixture\n"
    archive = write_tgz(Path(root) / "de-en.tgz", files)
    # Kept: each talk's title, description, speaker, reviewer, translator lines plus its text.
    return IwsltFixture(archive, kept_train_pairs=talks * (5 + pairs_per_talk),
                        test_segments=segs_per_set * len(IWSLT_TEST_SETS), meta_lines=3 * talks)


# --- WMT14 ---------------------------------------------------------------------------------

@dataclass
class WmtFixture:
    mirror: Path
    train_pairs: int              # good pairs in the three corpora (bad ones come on top)
    valid_segments: int
    test_segments: int
    archives: List[Path] = field(default_factory=list)
    text: Dict[str, Dict[str, List[str]]] = field(default_factory=dict)  # split -> lang -> lines, as given


def _sgm(setid: str, lang: str, kind: str, segments: Sequence[str]) -> str:
    target = ' trglang="de"' if kind == "ref" else ""
    lines = [f'<{kind}set setid="{setid}" srclang="any"{target}>',
             f'<doc sysid="{kind}" docid="doc-1" genre="news" origlang="en">', "<p>"]
    lines += [f'<seg id="{i}">{seg}</seg>' for i, seg in enumerate(segments, 1)]
    lines += ["</p>", "</doc>", f"</{kind}set>"]
    return "\n".join(lines) + "\n"


def build_wmt14(root: Path, pairs_per_corpus: int = 60, segments: int = 20) -> WmtFixture:
    mirror = Path(root) / "mirror"
    mirror.mkdir(parents=True)
    pairs = lohelp_pairs("train", 5000, 3 * pairs_per_corpus, max_len=60)
    corpora = {"training-parallel-europarl-v7.tgz": "training/europarl-v7.de-en",
               "training-parallel-commoncrawl.tgz": "commoncrawl.de-en",
               "training-parallel-nc-v12.tgz": "training/news-commentary-v12.de-en"}
    archives = []
    train: List[Tuple[str, str]] = []
    for i, (archive, prefix) in enumerate(corpora.items()):
        chunk = pairs[i * pairs_per_corpus:(i + 1) * pairs_per_corpus]
        if i == 1:  # Common Crawl is the noisy one
            chunk = chunk + bad_pairs() + [("Ein\u200bSteuer\u0007zeichen.", "A\u200bcontrol\u0007char.")]
        train += chunk
        files = {f"{prefix}.de": "".join(p[0] + "\n" for p in chunk),
                 f"{prefix}.en": "".join(p[1] + "\n" for p in chunk)}
        if archive == "training-parallel-europarl-v7.tgz":
            files["training/europarl-v7.fr-en.fr"] = "Bonjour.\n"
        archives.append(write_tgz(mirror / archive, files))
    held_out = lohelp_pairs("valid", 0, 2 * segments)
    valid, test = held_out[:segments], held_out[segments:]
    archives.append(write_tgz(mirror / "dev.tgz", {
        "dev/newstest2013-src.en.sgm": _sgm("newstest2013", "en", "src", [p[1] for p in valid]),
        "dev/newstest2013-ref.de.sgm": _sgm("newstest2013", "de", "ref", [p[0] for p in valid]),
        "dev/newstest2013.en": "".join(p[1] + "\n" for p in valid)}))
    archives.append(write_tgz(mirror / "test-full.tgz", {
        "test-full/newstest2014-deen-src.en.sgm": _sgm("newstest2014", "en", "src", [p[1] for p in test]),
        "test-full/newstest2014-deen-ref.de.sgm": _sgm("newstest2014", "de", "ref", [p[0] for p in test]),
        "test-full/newstest2014-deen-src.de.sgm": _sgm("newstest2014", "de", "src", [p[0] for p in test])}))
    text = {split: {"de": [p[0] for p in chosen], "en": [p[1] for p in chosen]}
            for split, chosen in (("train", train), ("valid", valid), ("test", test))}
    return WmtFixture(mirror, train_pairs=3 * pairs_per_corpus + 1, valid_segments=segments,
                      test_segments=segments, archives=archives, text=text)


# --- WikiText-103 --------------------------------------------------------------------------

@dataclass
class WikiTextFixture:
    archive: Path
    lines: Dict[str, int]


def build_wikitext103(root: Path, lines: Dict[str, int] = None) -> WikiTextFixture:
    lines = lines or {"train": 400, "valid": 60, "test": 50}  # sizes that tell the splits apart
    archive = Path(root) / "wikitext-103-v1.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("wikitext-103/", "")
        for split, count in lines.items():
            text = prepare.read_lines(AUSTEN / f"{split}.tok.txt")[:count]
            zf.writestr(f"wikitext-103/wiki.{split}.tokens", "".join(f" {line} \n" for line in text))
    return WikiTextFixture(archive, dict(lines))
