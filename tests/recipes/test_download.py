import builtins
import hashlib
import http.server
import io
import logging
import os
import random
import re
import tarfile
import threading
import zipfile

import pytest

from rdrop_fairseq.recipes.download import (Archive, CorruptArchiveError, DownloadError, ResumableDownloader, extract,
                                    fetch, parse_hash_overrides, with_hashes)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


class Server(http.server.ThreadingHTTPServer):
    """Serves PAYLOAD at /ok/*, honouring Range; /norange/* ignores Range;
    /bad/* serves altered bytes; /drop/* closes the connection halfway; anything
    else is 404.  Records Range headers."""

    def __init__(self):
        self.ranges = []
        super().__init__(("127.0.0.1", 0), Handler)

    def url(self, path):
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        kind = self.path.split("/")[1]
        if kind not in ("ok", "norange", "bad", "drop"):
            self.send_error(404)
            return
        body = PAYLOAD[:-1] + b"x" if kind == "bad" else PAYLOAD
        wanted = self.headers.get("Range")
        self.server.ranges.append(wanted)
        start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
        if start >= len(body):
            self.send_error(416)
            return
        if wanted and kind == "ok":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if kind == "drop" else body)


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_falls_back_to_the_next_mirror_and_checks_the_hash(server, tmp_path):
    archive = Archive("data.bin", (server.url("missing/data.bin"), server.url("ok/data.bin")), SHA)
    path = fetch(archive, tmp_path)
    assert path == tmp_path / "data.bin" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_download_resumes_a_partial_file(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    path = fetch(Archive("data.bin", (server.url("ok/data.bin"),), SHA), tmp_path)
    assert server.ranges == ["bytes=1000-"]
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.bin.part").exists()


def test_a_download_reports_its_progress_counting_the_resumed_part(server, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(ResumableDownloader, "report_every_s", 0.0)
    caplog.set_level(logging.INFO, "rdrop_fairseq.recipes.download")
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:len(PAYLOAD) // 4])
    fetch(Archive("data.bin", (server.url("ok/data.bin"),), SHA), tmp_path)
    assert "data.bin: 1.0 MiB of 1.0 MiB (100%)" in caplog.messages


def test_download_starts_over_when_the_server_ignores_range(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes")
    path = fetch(Archive("data.bin", (server.url("norange/data.bin"),), SHA), tmp_path)
    assert path.read_bytes() == PAYLOAD


def test_corrupt_download_is_rejected_by_name_and_removed(server, tmp_path):
    url = server.url("bad/data.bin")
    with pytest.raises(DownloadError, match=rf"could not download data\.bin:\n  {re.escape(url)}: corrupt"):
        fetch(Archive("data.bin", (url,), SHA), tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match=r"--archive PATH or --mirror DIR\. .*--hash data\.bin=none accepts it"):
        fetch(Archive("data.bin", (url,), SHA), tmp_path)


def test_every_failed_url_is_named(server, tmp_path):
    urls = (server.url("missing/data.bin"), server.url("bad/data.bin"))
    with pytest.raises(DownloadError) as raised:
        fetch(Archive("data.bin", urls, SHA), tmp_path)
    said = str(raised.value).splitlines()
    assert said[1].startswith(f"  {urls[0]}: 404") and said[2].startswith(f"  {urls[1]}: corrupt")
    with pytest.raises(DownloadError) as raised:
        fetch(Archive("data.bin", urls[:1], SHA), tmp_path)
    assert "--hash" not in str(raised.value)  # a missing file is not another release
    with pytest.raises(DownloadError) as raised:
        fetch(Archive("data.bin", ("ftp://127.0.0.1:9/data.bin",), SHA), tmp_path)
    assert "corrupt" not in str(raised.value) and "--hash" not in str(raised.value)


def test_a_dropped_connection_keeps_the_part_for_the_next_run_not_the_final_name(server, tmp_path):
    with pytest.raises(DownloadError, match=re.escape(server.url("drop/data.bin"))):
        fetch(Archive("data.bin", (server.url("drop/data.bin"),)), tmp_path)  # no hash: only the name tells
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin.part"]
    assert fetch(Archive("data.bin", (server.url("ok/data.bin"),), SHA), tmp_path).read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_a_complete_part_is_taken_when_the_server_says_there_is_nothing_left(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    assert fetch(Archive("data.bin", (server.url("ok/data.bin"),), SHA), tmp_path).read_bytes() == PAYLOAD
    assert server.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_an_earlier_download_is_reused_and_a_corrupt_one_fetched_again(server, tmp_path):
    archive = Archive("data.bin", (server.url("ok/data.bin"),), SHA)
    fetch(archive, tmp_path)
    assert fetch(archive, tmp_path).read_bytes() == PAYLOAD
    assert server.ranges == [None]
    (tmp_path / "data.bin").write_bytes(PAYLOAD[:100])
    assert fetch(archive, tmp_path).read_bytes() == PAYLOAD
    assert server.ranges == [None, None]


def test_local_archive_and_mirror_come_before_the_network(tmp_path):
    offline = Archive("data.bin", ("http://127.0.0.1:9/unreachable",), SHA)
    given = tmp_path / "given.bin"
    given.write_bytes(PAYLOAD)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "data.bin").write_bytes(PAYLOAD)
    assert fetch(offline, tmp_path / "cache", local=given, mirror=mirror) == given
    assert fetch(offline, tmp_path / "cache", mirror=mirror) == mirror / "data.bin"
    (mirror / "data.bin").write_bytes(PAYLOAD[:100])
    with pytest.raises(CorruptArchiveError, match="mirror/data.bin: sha256 is"):
        fetch(offline, tmp_path / "cache", mirror=mirror)
    with pytest.raises(FileNotFoundError, match="--archive .*nope.bin: no such file"):
        fetch(offline, tmp_path / "cache", local=tmp_path / "nope.bin")
    with pytest.raises(FileNotFoundError, match="--archive .*mirror: a folder, not the archive file"):
        fetch(offline, tmp_path / "cache", local=mirror)
    given.write_bytes(PAYLOAD[:100])
    # --hash takes the archive's name, not that of the user's copy
    with pytest.raises(CorruptArchiveError, match=r"given.bin: sha256 is .*pass --hash data\.bin=none"):
        fetch(offline, tmp_path / "cache", local=given)


def _tgz(path, files, compression="gz"):
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_takes_the_matching_members(tmp_path):
    archive = _tgz(tmp_path / "a.tgz", {"d/x.de": b"hallo\n", "d/x.en": b"hello\n", "d/y.fr": b"salut\n"})
    files = extract(archive, ["*/x.de", "*/x.en"], tmp_path / "out")
    assert [f.name for f in files] == ["x.de", "x.en"]
    assert (tmp_path / "out" / "x.de").read_text() == "hallo\n"


def test_extract_keeps_members_inside_the_target_and_publishes_it_readable(tmp_path):
    archive = _tgz(tmp_path / "a.tgz", {"../../outside/x.de": b"hallo\n", "/abs/x.en": b"hello\n"})
    umask = os.umask(0o022)
    try:
        files = extract(archive, ["*/x.de", "*/x.en"], tmp_path / "out" / "a")
    finally:
        os.umask(umask)
    assert files == [tmp_path / "out" / "a" / "x.de", tmp_path / "out" / "a" / "x.en"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz", "out"]
    assert (tmp_path / "out" / "a").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0o700


def test_extract_is_skipped_when_the_target_exists(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.de").write_text("earlier\n")
    assert extract(tmp_path / "not-read.tgz", ["*/x.de"], tmp_path / "out") == [tmp_path / "out" / "x.de"]


def test_a_zip_with_a_damaged_member_is_called_corrupt(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/x.de", b"hallo\n" * 1000)
    data = bytearray(archive.read_bytes())
    data[data.index(b"hallo")] ^= 1  # stored uncompressed: only the CRC tells
    archive.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match=r"a\.zip: truncated or corrupt archive \(Bad CRC-32"):
        extract(archive, ["*/x.de"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_truncated_archive_without_hash_is_detected_and_leaves_nothing(tmp_path):
    rng = random.Random(0)
    noise = bytes(rng.getrandbits(8) for _ in range(200_000))  # incompressible, so the gzip stream is long
    archive = _tgz(tmp_path / "a.tgz", {"d/x.de": noise, "d/x.en": noise})
    archive.write_bytes(archive.read_bytes()[:150_000])
    with pytest.raises(CorruptArchiveError, match=r"a\.tgz: truncated or corrupt archive"):
        extract(archive, ["*/x.de", "*/x.en"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz"]


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
@pytest.mark.parametrize("cut", [1, 8])
def test_an_archive_cut_after_its_last_member_is_detected(tmp_path, compression, cut):
    # every tar block arrives, end marker included; only the compressed stream's trailer is missing
    archive = _tgz(tmp_path / "a.tgz", {"d/x.de": b"hallo\n" * 50, "d/x.en": b"hello\n" * 50}, compression)
    archive.write_bytes(archive.read_bytes()[:-cut])
    with pytest.raises(CorruptArchiveError, match="truncated or corrupt"):
        extract(archive, ["*/x.de", "*/x.en"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz"]


@pytest.mark.parametrize("fails_at", ["open", "write"])
def test_a_disk_error_while_extracting_is_not_taken_for_a_corrupt_archive(tmp_path, monkeypatch, fails_at):
    from rdrop_fairseq.recipes import download

    archive = _tgz(tmp_path / "a.tgz", {"d/x.de": b"hallo\n", "d/x.en": b"hello\n"})

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "w" not in mode:  # the archive itself reads as ever
            return builtins.open(path, mode, *args, **kwargs)
        if fails_at == "open":
            raise OSError(28, "No space left on device")
        return FullDisk()

    monkeypatch.setattr(download, "open", full_disk_open, raising=False)  # what the extracted files are written with
    with pytest.raises(OSError, match="No space left") as raised:
        extract(archive, ["*/x.de", "*/x.en"], tmp_path / "out")
    assert not isinstance(raised.value, CorruptArchiveError)  # so the caller keeps the download
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz"]


def test_extract_names_a_missing_member(tmp_path):
    archive = _tgz(tmp_path / "a.tgz", {"d/x.de": b"hallo\n"})
    with pytest.raises(CorruptArchiveError, match=r"no member matches \['\*/x.en'\]"):
        extract(archive, ["*/x.de", "*/x.en"], tmp_path / "out")
    assert not (tmp_path / "out").exists()



def test_two_members_that_flatten_to_one_name_are_refused(tmp_path):
    archive = _tgz(tmp_path / "a.tgz", {"train/x.de": b"train\n", "test/x.de": b"test\n"})
    with pytest.raises(CorruptArchiveError, match="members train/x.de and test/x.de would both be extracted as x.de"):
        extract(archive, ["*/x.de"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz"]


def test_a_path_a_tar_holds_twice_is_its_last_copy(tmp_path):
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        for data in (b"old\n", b"new\n"):
            info = tarfile.TarInfo("d/x.de")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    extract(tmp_path / "b.tar", ["*/x.de"], tmp_path / "out")
    assert (tmp_path / "out" / "x.de").read_text() == "new\n"

def test_hash_overrides():
    archives = [Archive("a.tgz", ("u",), "md5:00"), Archive("b.tgz", ("u",))]
    overrides = parse_hash_overrides(["a.tgz=none", "b.tgz=sha256:ff"])
    assert [a.known_hash for a in with_hashes(archives, overrides)] == [None, "sha256:ff"]
    assert parse_hash_overrides(["a.tgz=SHA256:FF"]) == {"a.tgz": "sha256:FF"}  # pooch knows lower-case names
    with pytest.raises(ValueError, match="algorithm prefix"):
        parse_hash_overrides(["a.tgz=ff"])
    with pytest.raises(ValueError, match="unknown hash algorithm 'sha265'"):
        parse_hash_overrides(["a.tgz=sha265:ff"])
    with pytest.raises(ValueError, match="unknown hash algorithm 'shake_128'; use one of blake2b, "):
        parse_hash_overrides(["a.tgz=shake_128:ff"])  # its hexdigest needs a length: pooch would fail on it
    with pytest.raises(ValueError, match=r"unknown archive\(s\) \['c.tgz'\]"):
        with_hashes(archives, parse_hash_overrides(["c.tgz=none"]))
