"""rdrop_fairseq.recipes.summarize with stand-ins for the BART hub interface: batching, the
one-line output, refusals of bad input and the device settings.  The decoding of a real tiny
BART is in test_cnndm_scripts.py."""
import os
import shutil
from types import SimpleNamespace

import pytest

from rdrop_fairseq.recipes import prepare, summarize


class RecordingBart:
    """Stands in for BARTHubInterface.sample: records each batch, summarises an article by its
    first word, and raises on batch ``fail_at`` (counted from 1) as a GPU out of memory would."""

    def __init__(self, summary_of=lambda article: f"{article.split()[0]} summary.", fail_at=None):
        self.batches, self.summary_of, self.fail_at = [], summary_of, fail_at

    def sample(self, articles, **generation):
        self.batches.append(list(articles))
        if len(self.batches) == self.fail_at:
            raise RuntimeError("CUDA out of memory")
        return [self.summary_of(article) for article in articles]


def summarize_args(tmp_path, *flags):
    return ["--checkpoint", str(tmp_path / "model.pt"), "--data", str(tmp_path), "--gpt2-dir", str(tmp_path),
            "--source", str(tmp_path / "test.source"), "--out", str(tmp_path / "test.hypo"), *flags]


def test_every_article_is_summarised_once_in_order_on_one_line(tmp_path, monkeypatch, capsys):
    articles = [f"Article{i} says something." for i in range(5)]
    # surrounding white space, which would change the article's first GPT-2 token (" A" is not "A")
    (tmp_path / "test.source").write_text("".join(f" \t{a}  \n" for a in articles), encoding="utf-8")
    lines_of = {"Article1": "First line.\nSecond line.", "Article3": "One.\r\nTwo."}
    bart = RecordingBart(lambda a: lines_of.get(a.split()[0]) or [a.split()[0], "in two parts."])
    monkeypatch.setattr(summarize, "load_bart", lambda *args, **kwargs: bart)
    summarize.main(summarize_args(tmp_path, "--batch-size", "2"))
    assert bart.batches == [articles[0:2], articles[2:4], articles[4:5]]
    assert prepare.read_lines(tmp_path / "test.hypo") == [
        "Article0 in two parts.", "First line. Second line.", "Article2 in two parts.", "One.  Two.",
        "Article4 in two parts."]
    assert f"5 summaries of {tmp_path / 'test.source'}" in capsys.readouterr().out


def test_a_failed_batch_leaves_no_summaries(tmp_path, monkeypatch):
    (tmp_path / "test.source").write_text("One.\nTwo.\nThree.\n", encoding="utf-8")
    monkeypatch.setattr(summarize, "load_bart", lambda *args, **kwargs: RecordingBart(fail_at=2))
    with pytest.raises(RuntimeError, match="out of memory"):
        summarize.main(summarize_args(tmp_path, "--batch-size", "2"))
    assert os.listdir(tmp_path) == ["test.source"]


def test_summarize_decodes_with_summarize_pys_cnn_dm_settings(tmp_path, monkeypatch):
    """Without flags, the hub interface gets examples/bart/summarize.py's CNN_KWARGS; flags reach it too."""
    calls = []

    class Bart:
        def sample(self, articles, **generation):
            calls.append(generation)
            return ["A summary."] * len(articles)

    monkeypatch.setattr(summarize, "load_bart", lambda *args, **kwargs: Bart())
    (tmp_path / "test.source").write_text("An article.\n")
    summarize.main(summarize_args(tmp_path))
    summarize.main(summarize_args(tmp_path, "--beam", "2", "--lenpen", "1.5", "--max-len-b", "60", "--min-len", "10",
                                  "--no-repeat-ngram-size", "0"))
    assert calls == [{"beam": 4, "lenpen": 2.0, "max_len_b": 140, "min_len": 55, "no_repeat_ngram_size": 3},
                     {"beam": 2, "lenpen": 1.5, "max_len_b": 60, "min_len": 10, "no_repeat_ngram_size": 0}]


def make_model_files(folder):
    """The files load_bart checks before it loads anything: model.pt, data/, gpt2/, and test.source."""
    for name in ("model.pt", "data/dict.source.txt", "gpt2/encoder.json", "gpt2/vocab.bpe", "test.source"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("x\n")


@pytest.mark.parametrize("change,message", [
    (lambda p: (p / "test.source").unlink(), "--source: no such file: {p}/test.source"),
    (lambda p: (p / "model.pt").unlink(), "--checkpoint: no such file: {p}/model.pt"),
    (lambda p: shutil.rmtree(p / "data"), "--data: no such folder: {p}/data"),
    (lambda p: (p / "gpt2" / "vocab.bpe").unlink(), "--gpt2-dir: no vocab.bpe in {p}/gpt2"),
    (lambda p: (p / "model.pt").rename(p / f"a{os.pathsep}b.pt"),
     f"--checkpoint: a file name with '{os.pathsep}' cannot be loaded: {{p}}/a{os.pathsep}b.pt"),
])
def test_bad_input_is_refused_by_flag_before_a_model_loads(tmp_path, monkeypatch, capsys, change, message):
    from fairseq.models.bart import BARTModel

    make_model_files(tmp_path)
    change(tmp_path)
    monkeypatch.setattr(BARTModel, "from_pretrained", pytest.fail)
    checkpoint = next(tmp_path.glob("*.pt"), tmp_path / "model.pt")
    with pytest.raises(SystemExit) as exit_info:
        summarize.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"),
                        "--gpt2-dir", str(tmp_path / "gpt2"), "--source", str(tmp_path / "test.source"),
                        "--out", str(tmp_path / "test.hypo"), "--cpu"])
    assert exit_info.value.code == 1
    assert message.format(p=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "test.hypo").exists()


class HubStandIn:
    """What load_bart changes on BARTModel.from_pretrained's result: the batching settings it read
    from the checkpoint's training, and the device calls."""

    def __init__(self):
        self.cfg = SimpleNamespace(dataset=SimpleNamespace(max_tokens=2048, batch_size=None))
        self.calls = []

    def __getattr__(self, name):
        if name in ("eval", "cuda", "half"):
            return lambda: self.calls.append(name)
        raise AttributeError(name)


@pytest.fixture
def hub_stand_in(tmp_path, monkeypatch):
    """load_bart's arguments as relative paths (from tmp_path), a CUDA device that is there, and
    from_pretrained recording what it is given."""
    import torch
    from fairseq.models.bart import BARTModel

    make_model_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loads = []

    def from_pretrained(model_name_or_path, **kwargs):
        loads.append({"model_name_or_path": model_name_or_path, **kwargs})
        return HubStandIn()

    monkeypatch.setattr(BARTModel, "from_pretrained", from_pretrained)
    return loads


@pytest.mark.parametrize("device,calls", [({}, ["eval", "cuda"]), ({"cpu": True}, ["eval"]),
                                          ({"fp16": True}, ["eval", "cuda", "half"])])
def test_load_bart_batches_by_batch_size_on_the_device_asked_for(tmp_path, hub_stand_in, device, calls):
    bart = summarize.load_bart("model.pt", "data", "gpt2", batch_size=7, **device)
    # the checkpoint's training --max-tokens would cut the batches smaller than --batch-size
    assert (bart.cfg.dataset.max_tokens, bart.cfg.dataset.batch_size) == (None, 7)
    assert bart.calls == calls
    # absolute: from_pretrained reads a data path starting with "." as relative to the model's folder
    [load] = hub_stand_in
    assert (load["model_name_or_path"], load["checkpoint_file"], load["data_name_or_path"]) == \
        (str(tmp_path), "model.pt", str(tmp_path / "data"))
    assert (load["bpe"], load["gpt2_encoder_json"], load["gpt2_vocab_bpe"]) == \
        ("gpt2", str(tmp_path / "gpt2" / "encoder.json"), str(tmp_path / "gpt2" / "vocab.bpe"))


def test_fp16_without_cuda_is_refused(tmp_path, hub_stand_in, monkeypatch):
    import torch

    with pytest.raises(ValueError, match="--fp16 needs a CUDA device"):
        summarize.load_bart("model.pt", "data", "gpt2", cpu=True, fp16=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--fp16 needs a CUDA device"):
        summarize.load_bart("model.pt", "data", "gpt2", fp16=True)
    assert not hub_stand_in
