"""rdrop_fairseq/recipes/datasets/common.py: what every prepare-*.sh shares, through the smallest of them."""
import sys

import pytest

from fixtures_upstream import run_script
from rdrop_fairseq.recipes.datasets import iwslt14, wikitext103, wmt14
from rdrop_fairseq.recipes.download import MIRROR_ENV


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
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, module, args, said):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        module.main(args)
    assert exited.value.code == 2 and said in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


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
