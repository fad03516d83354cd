"""configs/*.yaml (fairseq-hydra-train) and scripts/train-*.sh must train the same model.

Both sides go through fairseq's own loading: the script's printed fairseq-train
command through fairseq's argument parser and ``convert_namespace_to_omegaconf``,
the YAML through Hydra with fairseq's schema (``hydra_init``) and ``add_defaults``,
as fairseq-hydra-train does.  Every key the YAML sets must equal the script's value,
and every setting the script changes from fairseq's defaults must be in the YAML.
"""
import dataclasses
import functools
import math
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import rdrop_fairseq

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
USER_DIR = str(Path(rdrop_fairseq.__file__).parent)
GROUPS = ("common", "task", "model", "criterion", "optimizer", "lr_scheduler", "optimization",
          "dataset", "checkpoint", "distributed_training")
# Paths the user supplies on the command line (the YAML has ??? there).
SUPPLIED = {("task", "data"), ("common", "user_dir")}


CASES = [
    ("iwslt14", "train-iwslt14.sh", ()),
    ("wmt14", "train-wmt14.sh", ()),
    ("wikitext103", "train-wikitext103.sh", ()),
    ("wikitext103-adaptive", "train-wikitext103.sh", ("--adaptive",)),
]


@functools.lru_cache(maxsize=None)
def printed_argv(script, flags):
    # The scripts' defaults: none of their variables (LR, SEED, UPDATE_FREQ, WORLD_SIZE, ...) from the
    # caller's environment.  FP16=1 stands for "on a CUDA machine", where the YAMLs are meant to run.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH", "TMPDIR") if k in os.environ}
    env.update(FP16="1" if script != "train-iwslt14.sh" else "0", USER_DIR=USER_DIR)
    out = subprocess.run(["bash", str(REPO / "scripts" / script), "--print-args", *flags],
                         env=env, capture_output=True, text=True, check=True).stdout
    argv = shlex.split(out)
    assert argv[0] == "fairseq-train"
    return tuple(argv[1:])


@functools.lru_cache(maxsize=None)
def fairseq_cfg(argv):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), list(argv))
    return convert_namespace_to_omegaconf(args)


def composed(name, overrides=()):
    """The YAML as fairseq-hydra-train's Hydra composes it, before ``add_defaults``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from fairseq.dataclass.initialize import hydra_init

    hydra_init(name)
    GlobalHydra.instance().clear()
    # version_base 1.1: what fairseq-hydra-train's @hydra.main (no version_base) gets.
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.1"):
        return compose(config_name=name,
                       overrides=["task.data=/data", f"common.user_dir={USER_DIR}", *overrides])


@functools.lru_cache(maxsize=None)
def hydra_cfg(name):
    from fairseq.dataclass.initialize import add_defaults

    cfg = composed(name)
    add_defaults(cfg)
    return cfg


def value(cfg, group, key):
    node = cfg[group]
    got = getattr(node, key) if not hasattr(node, "keys") else node[key]
    return OmegaConf.to_container(got) if OmegaConf.is_config(got) else got


def same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def yaml_keys(name):
    raw = OmegaConf.load(CONFIGS / f"{name}.yaml")
    return {(group, key) for group in raw for key in raw[group]}


def test_every_script_has_a_config():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {"iwslt14", "wmt14", "wikitext103", "wikitext103-adaptive"} <= names


@pytest.mark.parametrize("name,script,flags", CASES)
def test_yaml_values_equal_the_script(name, script, flags):
    script_cfg = fairseq_cfg(printed_argv(script, flags))
    yaml_cfg = hydra_cfg(name)
    keys = yaml_keys(name) - SUPPLIED
    assert keys, f"{name}.yaml sets nothing"
    differ = {
        f"{g}.{k}": (value(yaml_cfg, g, k), value(script_cfg, g, k))
        for g, k in sorted(keys)
        if not same(value(yaml_cfg, g, k), value(script_cfg, g, k))
    }
    assert not differ, f"configs/{name}.yaml (left) differs from scripts/{script} (right): {differ}"


@pytest.mark.parametrize("name,script,flags", CASES)
def test_every_script_setting_is_in_the_yaml(name, script, flags):
    argv = printed_argv(script, flags)
    script_cfg = fairseq_cfg(argv)
    # The same task, arch, criterion, optimizer and scheduler with fairseq's defaults otherwise.
    names = (argv[0],)
    for flag in ("--user-dir", "--task", "--arch", "--criterion", "--optimizer", "--lr-scheduler"):
        names += (flag, argv[argv.index(flag) + 1])
    default_cfg = fairseq_cfg(names)
    yaml_cfg = hydra_cfg(name)
    in_yaml = yaml_keys(name)
    other_group_keys = {k for g in GROUPS if g != "model" for k in (script_cfg[g] or {})}
    lost = {}
    for group in GROUPS:
        node = script_cfg[group]
        for key in (vars(node) if not hasattr(node, "keys") else node.keys()):
            if group == "model" and key in other_group_keys:
                continue  # the legacy model Namespace repeats every other option
            wanted = value(script_cfg, group, key)
            if (group, key) in SUPPLIED or same(wanted, value(default_cfg, group, key)):
                continue
            # Hydra's model node holds only the YAML's keys (fairseq applies the arch later);
            # the other groups carry every field, interpolations included.
            if group == "model" and (group, key) not in in_yaml:
                lost[f"{group}.{key}"] = (None, wanted)
            elif group != "model" and not same(value(yaml_cfg, group, key), wanted):
                lost[f"{group}.{key}"] = (value(yaml_cfg, group, key), wanted)
    assert not lost, f"configs/{name}.yaml (left) misses settings of scripts/{script} (right): {lost}"


def plugin_dataclasses(cfg):
    """{group: the plugin's config dataclass} for the task and criterion that ``cfg`` names."""
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    found = {"task": TASK_DATACLASS_REGISTRY.get(cfg.task._name),
             "criterion": REGISTRIES["criterion"]["dataclass_registry"].get(cfg.criterion._name)}
    return {group: dc for group, dc in found.items() if dc is not None and dc.__module__.startswith("rdrop_fairseq.")}


def plugin_options(dc):
    """{option: default} of the fields the plugin adds to the fairseq config that ``dc`` extends."""
    base = next(b for b in dc.__mro__[1:] if b.__module__.startswith("fairseq."))
    inherited = {f.name for f in dataclasses.fields(base)}
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(dc) if f.name not in inherited}


def hydra_value(default):
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return "[" + ",".join(map(str, default)) + "]"
    return str(default)


@pytest.mark.parametrize("name", sorted({case[0] for case in CASES}))
def test_the_plugins_options_take_plain_overrides_before_the_plugin_is_imported(name):
    """docs/reproduction.md: fairseq-hydra-train composes and resolves the YAML before it imports
    common.user_dir, so an R-Drop option that the YAML does not list needs a leading +, and a
    ${task.*} default of the model must find its key in the YAML's task."""
    from fairseq.dataclass.initialize import add_defaults
    from omegaconf import open_dict

    raw = composed(name)
    groups = plugin_dataclasses(raw)
    assert set(groups) == {"task", "criterion"}, groups
    overrides = [f"{group}.{option}={hydra_value(default)}"
                 for group, dc in groups.items() for option, default in plugin_options(dc).items()]
    assert any(o.startswith("task.rdrop_copies=") for o in overrides) and any(
        o.startswith("criterion.rdrop_alpha=") for o in overrides), overrides
    cfg = composed(name, overrides)  # Hydra refuses a key the YAML lacks: "To append to your config use +"
    plain = {group: OmegaConf.to_container(cfg[group]) for group in groups}
    add_defaults(cfg)
    # add_defaults fills a group only from a registered dataclass: before the plugin's import,
    # its task and criterion stay as the YAML (and the overrides) give them
    with open_dict(cfg):
        for group, node in plain.items():
            cfg[group] = node
    OmegaConf.to_container(cfg, resolve=True)


TINY_TRANSLATION = [f"+model.{side}_{key}={size}" for side in ("encoder", "decoder")
                    for key, size in (("layers", 1), ("embed_dim", 32), ("ffn_embed_dim", 64), ("attention_heads", 2))]
TINY_LM = ["+model.decoder_layers=1", "+model.decoder_embed_dim=32", "+model.decoder_input_dim=32",
           "+model.decoder_output_dim=32", "+model.decoder_ffn_embed_dim=64", "+model.decoder_attention_heads=2",
           "task.tokens_per_sample=64"]
HYDRA_RUNS = {
    "iwslt14": ("lohelp_bin", [*TINY_TRANSLATION, "task.eval_bleu=false", "checkpoint.best_checkpoint_metric=loss",
                               "checkpoint.maximize_best_checkpoint_metric=false"]),
    "wmt14": ("lohelp_bin", [*TINY_TRANSLATION, "task.source_lang=de", "task.target_lang=en"]),
    "wikitext103": ("austen_bin", TINY_LM),
    "wikitext103-adaptive": ("austen_bin", [*TINY_LM, "+model.adaptive_input_cutoff='100,400'",
                                            "+model.adaptive_softmax_cutoff='100,400'"]),
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(HYDRA_RUNS))
def test_fairseq_hydra_train_runs_the_config(request, tmp_path, name):
    """The README's command in a fresh process, which composes and resolves the YAML before it
    imports the plugin; the R-Drop options are overridden without a leading +."""
    fixture, overrides = HYDRA_RUNS[name]
    data = request.getfixturevalue(fixture)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDROP_")}
    cmd = ["fairseq-hydra-train", "--config-dir", str(CONFIGS), "--config-name", name,
           f"task.data={data}", f"common.user_dir={USER_DIR}", "common.cpu=true", "common.fp16=false",
           "optimization.max_update=2", "optimization.update_freq=[1]", "dataset.max_tokens=512",
           "dataset.num_workers=0", "checkpoint.no_save=true", f"checkpoint.save_dir={tmp_path / 'ck'}",
           f"hydra.run.dir={tmp_path / 'hydra'}", "task.rdrop_every_k_steps=2", "criterion.rdrop_chunk_tokens=64",
           *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert '"train_kl_loss"' in output and "done training" in output, output[-3000:]
