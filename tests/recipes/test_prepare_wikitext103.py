import os
import signal
import subprocess
import sys
import time

import pytest

from fixtures_upstream import REPO, build_wikitext103, run_script, sha256
from rdrop_fairseq.recipes.datasets import wikitext103

pytestmark = pytest.mark.e2e


def test_only_source_binaries_from_a_local_archive(tmp_path):
    from fairseq.data import Dictionary, data_utils

    fixture = build_wikitext103(tmp_path)
    out = tmp_path / "data"
    proc = run_script("prepare-wikitext103.sh", "--out", out, "--archive", fixture.archive, "--workers", "1",
                      "--hash", f"wikitext-103-v1.zip=sha256:{sha256(fixture.archive)}")
    assert proc.returncode == 0, proc.stderr
    bin_dir = out / "data-bin" / "wikitext-103"
    assert proc.stdout.strip().splitlines()[-1] == str(bin_dir)
    assert not list(bin_dir.glob("dict.*.txt"))  # --only-source: one dict.txt
    dictionary = Dictionary.load(str(bin_dir / "dict.txt"))
    assert dictionary.index("Emma") != dictionary.unk()
    for split, count in fixture.lines.items():
        assert len(data_utils.load_indexed_dataset(str(bin_dir / split), dictionary)) == count
        assert (out / "wikitext-103" / "orig" / "wikitext-103-v1" / f"wiki.{split}.tokens").is_file()


def test_the_published_md5_is_checked(tmp_path, capsys):
    fixture = build_wikitext103(tmp_path, {"train": 5, "valid": 2, "test": 2})
    with pytest.raises(SystemExit):
        wikitext103.main(["--out", str(tmp_path / "data"), "--archive", str(fixture.archive)])
    err = capsys.readouterr().err
    assert f"{fixture.archive}: md5 is" in err and "expected 9ddaacaf6af0710eda8c456decff7832" in err
    assert not (tmp_path / "data" / "data-bin").exists()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stopped_binarisation_leaves_no_staging_folder(tmp_path, signame):
    # a stand-in fairseq-preprocess that says it started and waits, so that the signal comes mid-step
    fake = tmp_path / "fake"
    (fake / "fairseq_cli").mkdir(parents=True)
    (fake / "fairseq_cli" / "__init__.py").write_text("")
    started = tmp_path / "started"
    (fake / "fairseq_cli" / "preprocess.py").write_text(
        f"import pathlib, time\npathlib.Path({str(started)!r}).write_text('')\ntime.sleep(120)\n")
    fixture = build_wikitext103(tmp_path, {"train": 5, "valid": 2, "test": 2})
    out = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)]), "PYTHON": sys.executable}
    env.pop("RDROP_DATA_MIRROR", None)
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "prepare-wikitext103.sh"), "--out", str(out),
                             "--archive", str(fixture.archive), "--hash", "wikitext-103-v1.zip=none",
                             "--workers", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert [p.name for p in (out / "data-bin").iterdir()][0].startswith(".wikitext-103.")  # staging, mid-step
    proc.send_signal(getattr(signal, signame))
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, signame)
    assert not list((out / "data-bin").iterdir())
