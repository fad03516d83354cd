"""Checked downloads and extraction of the corpus archives.

``fetch`` finds an archive in this order: a file the user named (``--archive``),
a local mirror folder (``--mirror`` / ``RDROP_DATA_MIRROR``), an earlier download
in the cache folder, then each URL in turn.  Downloads go through pooch, which
checks the hash and moves the file into place only when it is complete; the
downloader below resumes an interrupted transfer from ``NAME.part`` with an HTTP
Range request when the server honours it, and starts over when it does not.

``extract`` reads the whole archive, so a truncated or corrupt one fails there
even when no hash is known, and writes its members into a staging folder that
takes the final name only at the end.
"""
import bz2
import contextlib
import fnmatch
import gzip
import hashlib
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger("rdrop_fairseq.recipes.download")

MIRROR_ENV = "RDROP_DATA_MIRROR"
CHUNK = 1 << 20
_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


class DownloadError(RuntimeError):
    """No source gave a usable copy of an archive."""


class CorruptArchiveError(DownloadError):
    """An archive fails its hash or cannot be read to the end."""


@dataclass(frozen=True)
class Archive:
    """An upstream file: its name, the URLs to try in order and, where a
    published value exists, its hash in pooch's ``ALG:HEX`` form."""
    name: str
    urls: Tuple[str, ...]
    known_hash: Optional[str] = None


def parse_hash_overrides(items: Iterable[str]) -> Dict[str, Optional[str]]:
    """``NAME=ALG:HEX`` (or ``NAME=none`` to skip the check) from ``--hash``."""
    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"--hash expects NAME=ALG:HEX or NAME=none, got {item!r}")
        if value.lower() == "none":
            overrides[name] = None
            continue
        algorithm, colon, digest = value.partition(":")
        if not colon:
            raise ValueError(f"--hash {item!r}: the hash needs an algorithm prefix, e.g. sha256:HEX")
        algorithm = algorithm.lower()
        if algorithm not in hashlib.algorithms_available or algorithm.startswith("shake_"):  # no fixed-length hex
            raise ValueError(f"--hash {item!r}: unknown hash algorithm {algorithm!r}; use one of "
                             f"{', '.join(sorted(a for a in hashlib.algorithms_guaranteed if not a.startswith('shake_')))}")
        overrides[name] = f"{algorithm}:{digest}"
    return overrides


def with_hashes(archives: Sequence[Archive], overrides: Mapping[str, Optional[str]]) -> List[Archive]:
    unknown = set(overrides) - {a.name for a in archives}
    if unknown:
        raise ValueError(f"--hash names unknown archive(s) {sorted(unknown)}; "
                         f"expected one of {[a.name for a in archives]}")
    return [replace(a, known_hash=overrides[a.name]) if a.name in overrides else a for a in archives]


def check_hash(path: Path, known_hash: Optional[str], name: str) -> None:
    """``name``: the archive's upstream name, which ``--hash`` wants (a user's file may differ)."""
    if known_hash is None:
        return
    import pooch

    algorithm, _, expected = known_hash.partition(":")
    algorithm = algorithm.lower()  # pooch knows "sha256", not "SHA256"
    actual = pooch.file_hash(str(path), alg=algorithm)
    if actual.lower() != expected.lower():
        raise CorruptArchiveError(
            f"{path}: {algorithm} is {actual}, expected {expected}; the file is truncated or "
            f"corrupt (or is another release: pass --hash {name}=none to accept it)")


class ResumableDownloader:
    """A pooch downloader that keeps the partial file under a stable name
    (``part``) between runs and asks the server for the remaining bytes.  It logs
    how far it got every ``report_every_s`` seconds and at the end."""
    report_every_s = 30.0

    def __init__(self, part: Path, timeout: float = 60.0):
        self.part = Path(part)
        self.timeout = timeout

    def __call__(self, url: str, output_file: str, pooch_obj=None, check_only: bool = False):
        import requests

        if check_only:
            with requests.head(url, allow_redirects=True, timeout=self.timeout) as response:
                return response.ok
        have = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code == 416 and have:
                logger.info("%s: the server says %s is complete", url, self.part)
            else:
                response.raise_for_status()
                resumed = response.status_code == 206
                if have:
                    logger.info("%s: %s %s", url, f"resuming at byte {have}" if resumed
                                else "server ignores Range, starting over", self.part.name)
                done = have if resumed else 0
                length = response.headers.get("Content-Length", "")
                total = done + int(length) if length.isdigit() else None
                reported = time.monotonic()
                with open(self.part, "ab" if resumed else "wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if time.monotonic() - reported >= self.report_every_s:
                            reported = time.monotonic()
                            self._report(done, total)
                self._report(done, total)
        os.replace(self.part, output_file)

    def _report(self, done: int, total: Optional[int]) -> None:
        mib = 1 << 20
        of = f" of {total / mib:.1f} MiB ({100 * done / total:.0f}%)" if total else " (size unknown)"
        logger.info("%s: %.1f MiB%s", self.part.stem, done / mib, of)


def download(archive: Archive, cache_dir: Path) -> Path:
    """Download ``archive`` into ``cache_dir``, trying each URL in turn."""
    import pooch
    import requests

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    failures, corrupt = [], False
    for url in archive.urls:
        logger.info("downloading %s from %s", archive.name, url)
        try:
            path = pooch.retrieve(url, archive.known_hash, fname=archive.name, path=cache_dir,
                                  downloader=ResumableDownloader(cache_dir / f"{archive.name}.part"))
            return Path(path)
        except (requests.RequestException, OSError) as err:  # first: requests' InvalidURL is a ValueError too
            failures.append(f"{url}: {err}")
        except ValueError as err:  # pooch's hash mismatch; it has removed the file
            failures.append(f"{url}: corrupt download ({err})")
            corrupt = True
        logger.warning("%s", failures[-1])
    another_release = (f" If every URL serves another release, --hash {archive.name}=none accepts it."
                       if corrupt else "")
    raise DownloadError(f"could not download {archive.name}:\n  " + "\n  ".join(failures)
                        + "\nDownload it by hand and pass --archive PATH or --mirror DIR." + another_release)


def check_local_archive(path: Path) -> None:
    """An ``--archive`` must be a file."""
    if not Path(path).is_file():
        what = "a folder, not the archive file" if Path(path).is_dir() else "no such file"
        raise FileNotFoundError(f"--archive {path}: {what}")


def fetch(archive: Archive, cache_dir: Path, local: Optional[Path] = None,
          mirror: Optional[Path] = None) -> Path:
    """Path to a hash-checked copy of ``archive`` (see the module docstring for the order)."""
    for candidate, origin in ((local, "--archive"), (Path(mirror) / archive.name if mirror else None, "mirror")):
        if candidate is None:
            continue
        candidate = Path(candidate)
        if candidate.is_file():
            check_hash(candidate, archive.known_hash, archive.name)
            logger.info("using %s (%s)", candidate, origin)
            return candidate
        if origin == "--archive":
            check_local_archive(candidate)
        logger.info("%s not in mirror %s", archive.name, mirror)
    return download(archive, cache_dir)


def _members(archive: Path) -> Iterable[Tuple[str, "callable"]]:
    """(name, opener) for every regular file, reading the archive to its end."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.open(info)
        return
    # tarfile alone takes an archive cut inside a header for its end, and never reads the
    # compressed stream's trailer: decompress it to its end, which checks length and CRC.
    with open(archive, "rb") as raw:
        magic = raw.read(6)
    opener = next((open_ for start, open_ in _COMPRESSED if magic.startswith(start)), open)
    with opener(archive, "rb") as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, lambda member=member: tar.extractfile(member)
        while stream.read(CHUNK):
            pass


class _WriteError(Exception):
    """An OSError while writing what is extracted (a full disk, a file too large), told apart from
    one while reading the archive, which means the archive is damaged."""


class _Writer:
    def __init__(self, path: Path):
        try:
            self._file = open(path, "wb")
        except OSError as err:
            raise _WriteError() from err

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            raise _WriteError() from err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._file.close()
        except OSError as err:
            if exc[0] is None:
                raise _WriteError() from err


def extract(archive: Path, patterns: Sequence[str], dest: Path) -> List[Path]:
    """Copy the members matching the ``fnmatch`` patterns, flattened to their base
    names, into ``dest``; each pattern must match.  Skipped when ``dest`` exists,
    since it only ever appears complete."""
    archive, dest = Path(archive), Path(dest)
    if dest.is_dir():
        logger.info("skip extracting %s: %s exists", archive.name, dest)
        return sorted(dest.iterdir())
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    unmatched = set(patterns)
    source_of: Dict[str, str] = {}  # flattened name -> member; a tar may hold one path twice (the last wins)
    try:
        try:
            for name, opener in _members(archive):
                hits = [p for p in patterns if fnmatch.fnmatchcase(name, p)]
                if hits:
                    unmatched.difference_update(hits)
                    base = Path(name).name
                    if source_of.setdefault(base, name) != name:
                        raise CorruptArchiveError(f"{archive}: members {source_of[base]} and {name} would both be "
                                                  f"extracted as {base}; is it the right archive?")
                    with opener() as src, _Writer(staging / base) as out:
                        shutil.copyfileobj(src, out, CHUNK)
        except _WriteError as err:  # the disk, not the archive: the download stays
            raise err.__cause__ from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError) as err:
            raise CorruptArchiveError(f"{archive}: truncated or corrupt archive ({err})") from err
        if unmatched:
            raise CorruptArchiveError(f"{archive}: no member matches {sorted(unmatched)}; "
                                      f"is it the right archive?")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(dest.iterdir())


def remove_if_cached(path: Path, cache_dir: Path) -> None:
    """Drop a corrupt copy this module downloaded (never a user's own file)."""
    path = Path(path)
    if path.parent.resolve() == Path(cache_dir).resolve():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        logger.warning("removed the corrupt download %s; the next run fetches it again", path)
