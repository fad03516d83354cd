"""Tiny fairseq language models, built through the tasks as fairseq-train builds them."""
from pathlib import Path

import torch
from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import rdrop_fairseq

USER_DIR = str(Path(rdrop_fairseq.__file__).parent)
SMALL_DECODER = [
    "--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-input-dim", "16",
    "--decoder-output-dim", "16", "--decoder-ffn-embed-dim", "32",
    "--decoder-attention-heads", "2", "--dropout", "0.3", "--tokens-per-sample", "16",
]


def write_dictionary(data_dir: Path, num_words: int) -> Dictionary:
    dictionary = Dictionary()
    for i in range(num_words):
        dictionary.add_symbol(f"w{i}", n=num_words - i)
    dictionary.save(str(data_dir / "dict.txt"))
    return Dictionary.load(str(data_dir / "dict.txt"))


def build(data_dir: Path, *extra, num_words=40, task="rdrop_language_modeling",
          criterion="rdrop_cross_entropy", arch="transformer_lm", model_args=SMALL_DECODER):
    """(task, model, criterion, cfg) from fairseq-train style flags."""
    write_dictionary(data_dir, num_words)
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_dir), "--user-dir", USER_DIR, "--task", task, "--criterion", criterion,
        "--arch", arch, *model_args, *extra,
    ])
    cfg = convert_namespace_to_omegaconf(args)
    lm_task = tasks.setup_task(cfg.task)
    model = lm_task.build_model(cfg.model)
    return lm_task, model, lm_task.build_criterion(cfg.criterion), cfg


def lm_sample(dictionary: Dictionary, batch=3, length=9, seed=0, pad_tail=(0, 2, 4)):
    """A language-model batch whose rows end in ``pad_tail[i]`` pads (left-aligned, as fairseq)."""
    gen = torch.Generator().manual_seed(seed)
    low, high = dictionary.nspecial, len(dictionary)
    tokens = torch.randint(low, high, (batch, length + 1), generator=gen)
    source, target = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    lengths = torch.full((batch,), length)
    for row, pads in enumerate(pad_tail[:batch]):
        if pads:
            source[row, -pads:] = dictionary.pad()
            target[row, -pads:] = dictionary.pad()
            lengths[row] -= pads
    return {
        "id": torch.arange(batch),
        "net_input": {"src_tokens": source, "src_lengths": lengths},
        "target": target,
        "ntokens": int(target.ne(dictionary.pad()).sum()),
        "nsentences": batch,
    }


def run_seeded(seed, fn, *args, **kwargs):
    torch.manual_seed(seed)
    return fn(*args, **kwargs)


def param_grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def seeded_with_grads(seed, fn, model, *args):
    """``fn(model, *args)`` under ``seed``, and the parameter gradients of its first output."""
    model.zero_grad()
    outputs = run_seeded(seed, fn, model, *args)
    outputs[0].backward()
    return outputs, param_grads(model)
