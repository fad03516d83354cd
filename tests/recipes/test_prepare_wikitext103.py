import pytest

from fixtures_upstream import build_wikitext103, run_script, sha256
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
