"""rdrop_fairseq/recipes/datasets/common.py: what every prepare-*.sh shares, through the smallest of them."""
import sys

import pytest

from fixtures_upstream import run_script, write_tgz
from rdrop_fairseq.recipes.datasets import cnn_dm, common, glue, iwslt14, wikitext103, wmt14
from rdrop_fairseq.recipes.download import MIRROR_ENV, Archive, CorruptArchiveError

OFFLINE = Archive("a.tgz", ("http://127.0.0.1:9/unreachable",))  # any download attempt fails
PATTERNS = {"a.tgz": ["*/x.de"]}


@pytest.mark.parametrize("flag", ["--out", "--download-dir", "--mirror"])
def test_a_path_that_is_not_a_folder_is_named(tmp_path, capsys, monkeypatch, flag):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = ["--out", str(tmp_path / "data")] if flag != "--out" else []
    with pytest.raises(SystemExit) as exited:
        wikitext103.main([*args, flag, str(afile)])
    assert exited.value.code == 2
    assert f"{flag} {afile}: {'no such folder' if flag == '--mirror' else 'not a folder'}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("module,args,said", [
    # an empty --out is Path("."): the data would land in the current folder
    (wikitext103, ["--out", ""], "argument --out: needs a path, not an empty string"),
    (wikitext103, ["--download-dir", ""], "argument --download-dir: needs a path, not an empty string"),
    (wikitext103, ["--workers", "0"], "argument --workers: must be a positive integer, not 0"),
    # subword-nmt would fail on its own codes after tokenising everything, and params.json would hold the value
    (iwslt14, ["--bpe-merges", "-5"], "argument --bpe-merges: must be a positive integer, not -5"),
    (wmt14, ["--bpe-merges", "0"], "argument --bpe-merges: must be a positive integer, not 0"),
    (wmt14, ["--spm", "--spm-vocab-size", "0"], "argument --spm-vocab-size: must be a positive integer, not 0"),
    (wmt14, ["--spm", "--spm-sample", "many"], "argument --spm-sample: invalid int value: 'many'"),
    # the archives: the settings file (params.json) came first, left behind by a run that did nothing
    (iwslt14, ["--hash", "de-en.tgz=foo:abc"], "unknown hash algorithm 'foo'"),
    (iwslt14, ["--hash", "en-de.tgz=none"], "--hash names unknown archive(s) ['en-de.tgz']"),
    (wmt14, ["--archive", "absent.tgz"], "--archive absent.tgz: no such file"),
    (wikitext103, ["--archive", "."], "--archive .: a folder, not the archive file"),
    (wmt14, ["--archive", "__file__/devel.tgz"], "expected a file named one of"),
    (cnn_dm, ["--archive", "__file__/stories.tgz"], "expected a file named one of"),
    (glue, ["--task", "RTE", "--archive", "__file__/rte.zip"], "expected a file named one of"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, module, args, said):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    if any(arg.startswith("__file__/") for arg in args):  # an existing file under a name it is not known by
        (tmp_path / "__file__").mkdir()
        for arg in args:
            if arg.startswith("__file__/"):
                (tmp_path / arg).write_bytes(b"")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exited:
        module.main(args)
    assert exited.value.code in (1, 2) and said in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_mirror_from_the_environment_is_named_as_such(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit):
        wikitext103.main(["--out", str(tmp_path / "data")])
    assert f"${MIRROR_ENV} {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


def test_an_os_error_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    out = tmp_path / "data"
    (out / "wikitext-103").mkdir(parents=True)
    (out / "wikitext-103" / "orig").write_text("a file where a folder goes")
    archive = tmp_path / "wikitext-103-v1.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    with pytest.raises(SystemExit) as exited:
        wikitext103.main(["--out", str(out), "--archive", str(archive), "--hash", "wikitext-103-v1.zip=none"])
    assert exited.value.code == 1
    assert "error:" in capsys.readouterr().err


def test_errors_of_a_prepare_script_name_the_script():
    proc = run_script("prepare-wikitext103.sh", "--workers", "0", env={"PYTHON": sys.executable})
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == ("scripts/prepare-wikitext103.sh: error: argument --workers: "
                                            "must be a positive integer, not 0")
    assert proc.stderr.startswith("usage: scripts/prepare-wikitext103.sh ")


def _fetch_and_extract(out, *argv):
    args = wikitext103.parser().parse_args(["--out", str(out), *map(str, argv)])
    return common.fetch_and_extract(common.Layout(out, "a"), args, [OFFLINE], PATTERNS)


def test_a_single_archive_is_taken_under_any_name_and_not_needed_once_unpacked(tmp_path, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    copy = write_tgz(tmp_path / "my-copy.tgz", {"d/x.de": "hallo\n"})
    folder = _fetch_and_extract(tmp_path / "data", "--archive", copy)["a.tgz"]
    assert (folder / "x.de").read_text() == "hallo\n"
    copy.unlink()
    assert _fetch_and_extract(tmp_path / "data")["a.tgz"] == folder


def test_a_corrupt_download_is_removed_but_a_corrupt_user_file_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    cached = tmp_path / "data" / "downloads" / "a.tgz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(write_tgz(tmp_path / "whole.tgz", {"d/x.de": "hallo\n" * 1000}).read_bytes()[:-8])
    with pytest.raises(CorruptArchiveError, match="the download was removed"):
        _fetch_and_extract(tmp_path / "data")
    assert not cached.exists()
    # the user's own copy is kept even where downloads go
    cached.write_bytes((tmp_path / "whole.tgz").read_bytes()[:-8])
    with pytest.raises(CorruptArchiveError, match="it is left as it is"):
        _fetch_and_extract(tmp_path / "data", "--archive", cached)
    assert cached.exists()
    assert not (tmp_path / "data" / "a" / "orig" / "a").exists()


def test_outputs_of_other_settings_are_not_mixed(tmp_path):
    layout = common.Layout(tmp_path, "a")
    common.check_params(layout, {"merges": 10})
    common.check_params(layout, {"merges": 20})  # nothing made yet: the new settings are taken
    (layout.text_dir / "code").write_text("")
    with pytest.raises(ValueError, match=r"prepared with \{'merges': 20\}, not \{'merges': 30\}"):
        common.check_params(layout, {"merges": 30})


def test_a_step_runs_until_all_its_outputs_exist(tmp_path):
    done = tmp_path / "done"
    done.write_text("")
    assert common.pending("step", [done, tmp_path / "missing"])
    assert not common.pending("step", [done])
