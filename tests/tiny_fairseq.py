"""Tiny real fairseq objects (task, transformer, criterion, sample) built in process
from command-line style arguments, the way fairseq-train builds them."""
from pathlib import Path

import torch
from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import rdrop_fairseq

USER_DIR = str(Path(rdrop_fairseq.__file__).parent)
TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings", "--dropout", "0.3",
    "--optimizer", "adam", "--lr", "1e-3",
]


def write_dictionaries(data_dir: Path, size: int = 40, langs=("de", "en")) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        with open(data_dir / f"dict.{lang}.txt", "w") as handle:
            for i in range(size):
                handle.write(f"w{i} {1000 - i}\n")
    return data_dir


def build(data_dir: Path, *args: str, task="rdrop_translation", model_args=TINY_TRANSFORMER):
    """Returns (cfg, task, model, criterion) as fairseq-train would build them."""
    argv = [str(data_dir), "--user-dir", USER_DIR, "--task", task, *model_args, *args]
    if task.endswith("translation"):
        argv += ["--source-lang", "de", "--target-lang", "en"]
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=argv))
    fairseq_task = tasks.setup_task(cfg.task)
    model = fairseq_task.build_model(cfg.model)
    criterion = fairseq_task.build_criterion(cfg.criterion)
    return cfg, fairseq_task, model, criterion


def translation_sample(dictionary: Dictionary, batch=3, src_len=7, tgt_len=6, seed=0):
    """A right-padded batch with different lengths, in fairseq's sample layout."""
    gen = torch.Generator().manual_seed(seed)
    pad, eos = dictionary.pad(), dictionary.eos()
    low = dictionary.nspecial
    src = torch.randint(low, len(dictionary), (batch, src_len), generator=gen)
    tgt = torch.randint(low, len(dictionary), (batch, tgt_len), generator=gen)
    src[:, -1] = eos
    for row in range(1, batch):  # shorter rows are padded
        src[row, : row] = pad
        tgt[row, tgt_len - row:] = pad
        tgt[row, tgt_len - row - 1] = eos
    tgt[0, -1] = eos
    prev = torch.full_like(tgt, pad)
    prev[:, 0] = eos
    prev[:, 1:] = tgt[:, :-1]
    prev[prev.eq(eos) & (torch.arange(tgt_len) > 0)] = pad
    return {
        "id": torch.arange(batch),
        "nsentences": batch,
        "ntokens": int(tgt.ne(pad).sum()),
        "net_input": {
            "src_tokens": src,
            "src_lengths": src.ne(pad).sum(1),
            "prev_output_tokens": prev,
        },
        "target": tgt,
    }


def clone_sample(value):
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, dict):
        return {key: clone_sample(item) for key, item in value.items()}
    return value


def assert_same_sample(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_sample(a[key], b[key])
        elif torch.is_tensor(a[key]):
            assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
