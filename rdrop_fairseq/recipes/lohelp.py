"""German-English parallel corpus from LibreOffice's translated help pages.

Debian ships the help in many languages (``libreoffice-help-en-us``,
``libreoffice-help-de``, ...).  Every paragraph carries an id that is the same
in all translations of a help file, so aligning ``(file path, paragraph id)``
across two languages gives sentence-level parallel text without downloading a
dataset.  The packages hold rendered ``.html`` pages (``<p id="par_id...">``,
``<h1 id="hd_id...">``); sources in the ``.xhp`` XML format
(``<paragraph id="...">``) are read as well.

    python -m rdrop_fairseq.recipes.lohelp OUT_DIR [--src de --tgt en] [--deb-dir DIR | --help-root DIR]

writes ``OUT_DIR/{train,valid,test}.{src,tgt}`` and ``OUT_DIR/stats.json``; a later run into the same
OUT_DIR reuses that corpus, and refuses other languages or held-out sizes.
"""
import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from rdrop_fairseq.recipes.prepare import atomic_output, write_lines

logger = logging.getLogger("rdrop_fairseq.recipes.lohelp")

HELP_ROOT = Path("usr/share/libreoffice/help")
PARAGRAPH_ID = re.compile(r"^(par|hd)_id")
TEXT_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
SKIPPED_TAGS = {"script", "style"}
VOID_TAGS = {"br", "img", "input", "meta", "link", "hr", "wbr"}
Pair = Tuple[str, str]


def package_name(lang: str) -> str:
    """Debian package holding the help pages of ``lang`` (``en`` means en-US)."""
    return "libreoffice-help-" + {"en": "en-us"}.get(lang, lang.lower())


def help_dir_name(lang: str) -> str:
    return {"en": "en-US"}.get(lang, lang)


def normalize_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


class _HelpPageParser(HTMLParser):
    """Collects the text of id'd paragraphs of a rendered help page.

    Platform variants (``<span hidden class="MAC">``) are dropped except the
    ``default...`` one, so "Choose Tools - Options" reads as on Linux."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: List[Tuple[str, str]] = []
        self._open: List[Tuple[str, str, List[str]]] = []  # (tag, id, text pieces)
        self._skip: List[str] = []  # tags whose content is ignored, innermost last

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in VOID_TAGS:
            self.handle_data(" ")
            return
        if self._skip or tag in SKIPPED_TAGS or (
                "hidden" in attrs and not (attrs.get("id") or "").startswith("default")):
            self._skip.append(tag)
            return
        if tag in TEXT_TAGS and PARAGRAPH_ID.match(attrs.get("id") or ""):
            self._open.append((tag, attrs["id"], []))

    def handle_endtag(self, tag):
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if self._open and self._open[-1][0] == tag:
            _, par_id, pieces = self._open.pop()
            self.paragraphs.append((par_id, "".join(pieces)))

    def handle_data(self, data):
        if self._open and not self._skip:
            self._open[-1][2].append(data)


def _xhp_paragraphs(path: Path) -> List[Tuple[str, str]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        logger.warning("skipping unparsable %s: %s", path, err)
        return []
    return [(el.get("id"), "".join(el.itertext()))
            for el in root.iter() if el.tag in ("paragraph", "title") and el.get("id")]


def page_paragraphs(path: Path) -> Dict[str, str]:
    """``{paragraph id: normalised text}`` of one help page; a repeated id gets ``#n``."""
    if path.suffix == ".xhp":
        found = _xhp_paragraphs(path)
    else:
        parser = _HelpPageParser()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        found = parser.paragraphs
    paragraphs, seen = {}, defaultdict(int)
    for par_id, text in found:
        seen[par_id] += 1
        key = par_id if seen[par_id] == 1 else f"{par_id}#{seen[par_id]}"
        paragraphs[key] = normalize_text(text)
    return paragraphs


def _pages(lang_dir: Path) -> Dict[Path, Path]:
    return {p.relative_to(lang_dir): p for p in sorted(lang_dir.rglob("*"))
            if p.suffix in (".html", ".xhp") and p.is_file()}


def align(src_dir: Path, tgt_dir: Path) -> List[Pair]:
    """Parallel ``(src, tgt)`` paragraphs of two language folders of the help.

    Pairs are unique, non-empty and differ between the languages (untranslated
    paragraphs are dropped); order follows file path and paragraph order."""
    src_pages, tgt_pages = _pages(Path(src_dir)), _pages(Path(tgt_dir))
    common = [rel for rel in src_pages if rel in tgt_pages]
    if not common:
        raise ValueError(f"no help page exists in both {src_dir} and {tgt_dir}")
    pairs, seen = [], set()
    for rel in common:
        tgt_paragraphs = page_paragraphs(tgt_pages[rel])
        for par_id, src_text in page_paragraphs(src_pages[rel]).items():
            pair = (src_text, tgt_paragraphs.get(par_id, ""))
            if pair[0] and pair[1] and pair[0] != pair[1] and pair not in seen:
                seen.add(pair)
                pairs.append(pair)
    return pairs


def group_key(text: str) -> str:
    return normalize_text(text).casefold()


def split_pairs(pairs: Sequence[Pair], valid_size: int = 1500, test_size: int = 1500,
                key_side: int = 1) -> Dict[str, List[Pair]]:
    """Deterministic split keyed on one side (``key_side`` 0: source, 1: target).

    Pairs sharing that side's normalised text are one group; groups are ordered by the
    sha1 of their key; the first fill ``valid`` up to ``valid_size`` pairs, the
    next ``test``, the rest ``train``.  A valid/test pair whose source or target
    also occurs in train then moves to train, so no held-out sentence is trained on."""
    groups: Dict[str, List[Pair]] = defaultdict(list)
    for pair in pairs:
        groups[group_key(pair[key_side])].append(pair)
    ordered = sorted(groups, key=lambda key: hashlib.sha1(key.encode("utf-8")).hexdigest())
    split = {"valid": [], "test": [], "train": []}
    for key in ordered:
        if len(split["valid"]) < valid_size:
            split["valid"].extend(groups[key])
        elif len(split["test"]) < test_size:
            split["test"].extend(groups[key])
        else:
            split["train"].extend(groups[key])
    seen_src = {group_key(s) for s, _ in split["train"]}
    seen_tgt = {group_key(t) for _, t in split["train"]}
    moved = True
    while moved:  # a pair moved to train brings its texts along, which may take other held-out pairs
        moved = False
        for name in ("valid", "test"):
            kept = []
            for pair in split[name]:
                if group_key(pair[0]) in seen_src or group_key(pair[1]) in seen_tgt:
                    split["train"].append(pair)
                    seen_src.add(group_key(pair[0]))
                    seen_tgt.add(group_key(pair[1]))
                    moved = True
                else:
                    kept.append(pair)
            split[name] = kept
    return split


def download_debs(langs: Iterable[str], dest: Path) -> List[Path]:
    """``apt-get download`` the help packages into ``dest`` (no root needed); cached."""
    if shutil.which("apt-get") is None:
        raise RuntimeError("apt-get not found")
    dest.mkdir(parents=True, exist_ok=True)
    debs = []
    for lang in langs:
        name = package_name(lang)
        found = sorted(dest.glob(f"{name}_*.deb"))
        if not found:
            logger.info("apt-get download %s -> %s", name, dest)
            result = subprocess.run(["apt-get", "download", name], cwd=dest,
                                    capture_output=True, text=True)
            found = sorted(dest.glob(f"{name}_*.deb"))
            if result.returncode != 0 or not found:
                raise RuntimeError(f"apt-get download {name} failed: {result.stderr.strip()}"
                                   " (on Debian/Ubuntu try `apt-get update` first)")
        debs.append(found[-1])
    return debs


def extract_debs(debs: Sequence[Path], dest: Path) -> Path:
    """Unpack ``.deb`` files with ``dpkg -x``; returns the help root inside ``dest``."""
    for deb in debs:
        result = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"dpkg -x {deb} failed: {result.stderr.strip()}; delete {deb} to download it again")
    return dest / HELP_ROOT


def corpus_stats(split: Dict[str, List[Pair]], src: str, tgt: str, source: str) -> dict:
    stats = {"source": source, "lang": src}
    for name in ("train", "valid", "test"):
        stats[name] = {"pairs": len(split[name]),
                       f"words_{src}": sum(len(s.split()) for s, _ in split[name]),
                       f"words_{tgt}": sum(len(t.split()) for _, t in split[name])}
    return stats


def write_corpus(split: Dict[str, List[Pair]], out_dir: Path, src: str, tgt: str,
                 source: str, settings: Optional[dict] = None) -> dict:
    """Write the split; ``stats.json`` goes last and marks the corpus complete (with the
    ``settings`` it was built with, which a later build into the same folder must match)."""
    for name, pairs in split.items():
        write_lines(out_dir / f"{name}.{src}", (s for s, _ in pairs))
        write_lines(out_dir / f"{name}.{tgt}", (t for _, t in pairs))
    stats = corpus_stats(split, src, tgt, source)
    if settings is not None:
        stats["settings"] = settings
    with atomic_output(out_dir / "stats.json") as handle:
        json.dump(stats, handle, indent=1)
    return stats


def build_corpus(out_dir: Path, src: str = "de", tgt: str = "en", deb_dir: Optional[Path] = None,
                 help_root: Optional[Path] = None, valid_size: int = 1500,
                 test_size: int = 1500) -> dict:
    """Build (or reuse, when ``stats.json`` exists and the settings agree) the corpus in ``out_dir``.

    The split groups pairs by their English side (the target unless ``src`` is en).

    ``help_root`` is an installed help tree (``/usr/share/libreoffice/help``);
    otherwise the packages are downloaded into ``deb_dir`` (default
    ``out_dir/debs``) and unpacked in a temporary folder."""
    out_dir = Path(out_dir)
    settings = {"src": src, "tgt": tgt, "valid_size": valid_size, "test_size": test_size}
    if (out_dir / "stats.json").exists():
        try:
            stats = json.loads((out_dir / "stats.json").read_text(encoding="utf-8"))
            if not isinstance(stats, dict):
                raise ValueError(f"a JSON {type(stats).__name__}, not an object")
        except ValueError as err:
            raise ValueError(f"{out_dir / 'stats.json'} is not a corpus record ({err}): delete {out_dir} "
                             "to build the corpus again") from err
        missing = [f"{name}.{lang}" for name in ("train", "valid", "test") for lang in (src, tgt)
                   if not (out_dir / f"{name}.{lang}").exists()]
        # corpora built before the settings were recorded name their source language only
        built = stats.get("settings", {"src": stats.get("lang", src), "tgt": tgt, "valid_size": valid_size,
                                       "test_size": test_size})
        if missing and built == settings:
            raise ValueError(f"{out_dir} holds an incomplete corpus (no {', '.join(missing)}): delete it to build "
                             "the corpus again")
        if missing or built != settings:
            raise ValueError(f"{out_dir} holds a corpus built with other settings ({built}, asked for {settings}"
                             f"{'; no ' + ', '.join(missing) if missing else ''}): choose another OUT_DIR or "
                             "delete this one")
        logger.info("corpus already built: %s", out_dir)
        return stats
    with tempfile.TemporaryDirectory(prefix="lohelp.") as tmp:
        if help_root is None:
            debs = download_debs((src, tgt), Path(deb_dir or out_dir / "debs"))
            help_root = extract_debs(debs, Path(tmp))
            source = ", ".join(deb.name for deb in debs)
        else:
            source = str(help_root)
        for lang in (src, tgt):
            if not (Path(help_root) / help_dir_name(lang)).is_dir():
                raise FileNotFoundError(f"no help pages for {lang!r} in {help_root}")
        logger.info("aligning help pages in %s", help_root)
        pairs = align(Path(help_root) / help_dir_name(src), Path(help_root) / help_dir_name(tgt))
    split = split_pairs(pairs, valid_size, test_size, key_side=0 if src == "en" else 1)
    sizes = {name: len(split[name]) for name in ("train", "valid", "test")}
    # held-out pairs that share a text with train move there, so a small or repetitive help tree can
    # leave too little to score on; nothing is written then, so no later run takes it as built
    if not sizes["train"] or sizes["valid"] < valid_size / 2 or sizes["test"] < test_size / 2:
        raise RuntimeError(f"the help pages in {source} give too small a corpus: {sizes} pairs, for "
                           f"--valid-size {valid_size} and --test-size {test_size} (at least half of each "
                           "must stay held out)")
    stats = write_corpus(split, out_dir, src, tgt, source, settings)
    logger.info("corpus %s: %s", out_dir, {k: stats[k]["pairs"] for k in ("train", "valid", "test")})
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rdrop_fairseq.recipes.lohelp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--deb-dir", type=Path, help="where .deb files are cached (default OUT_DIR/debs)")
    parser.add_argument("--help-root", type=Path,
                        help="use an installed help tree, e.g. /usr/share/libreoffice/help")
    parser.add_argument("--valid-size", type=int, default=1500)
    parser.add_argument("--test-size", type=int, default=1500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        stats = build_corpus(args.out_dir, args.src, args.tgt, args.deb_dir, args.help_root,
                             args.valid_size, args.test_size)
    except (RuntimeError, OSError, ValueError) as err:  # OSError: OUT_DIR is a file, not writable, ...
        parser.exit(1, f"error: {err}\n")
    json.dump(stats, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
