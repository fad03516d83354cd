import pytest
import torch
from torch import nn

from rdrop_fairseq.sub_models import (
    SubModelPasses,
    dropout_modules,
    dropout_rate,
    drawn_per_pass,
    repeat_batch,
)


def test_copies_follow_training_mode_and_the_k_step_schedule():
    passes = SubModelPasses(copies=3, every_k_steps=4)
    assert passes.copies_for(training=False, update_num=0) == 1
    assert [passes.copies_for(True, n) for n in range(9)] == [3, 1, 1, 1, 3, 1, 1, 1, 3]
    assert passes.copies_for(True, None) == 3  # stock tasks give no update number


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        ({"copies": 1}, "--rdrop-copies"),
        ({"every_k_steps": 0}, "--rdrop-every-k-steps"),
        ({"dropout_rates": (0.1,)}, "--rdrop-dropout-rates"),
        ({"dropout_rates": (0.1, 1.0)}, "--rdrop-dropout-rates"),
        ({"dropout_rates": (-0.1, 0.3)}, "--rdrop-dropout-rates"),
    ],
)
def test_bad_options_are_refused_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        SubModelPasses(**kwargs)


def test_repeat_batch_makes_new_tensors_and_leaves_the_input_alone():
    tokens = torch.arange(6).view(2, 3)
    batch = {"src_tokens": tokens, "src_lengths": torch.tensor([3, 2]), "lang": "de", "scalar": torch.tensor(7)}
    repeated = repeat_batch(batch, 3)
    assert repeated["src_tokens"].shape == (6, 3)
    for copy in range(3):  # interleaved: sample b's copies are rows 3b .. 3b + 2
        assert torch.equal(repeated["src_tokens"][copy::3], tokens)
    assert repeated["src_lengths"].tolist() == [3, 3, 3, 2, 2, 2]  # still non-increasing
    assert repeated["lang"] == "de" and repeated["scalar"] is batch["scalar"]
    repeated["src_tokens"].zero_()
    assert torch.equal(batch["src_tokens"], torch.arange(6).view(2, 3))


def test_repeat_batch_repeats_the_tensors_inside_lists_and_tuples():
    tokens = torch.arange(4).view(2, 2)
    repeated = repeat_batch({"pair": (tokens, [tokens + 10, "x"])}, 2)
    first, (second, text) = repeated["pair"]
    assert isinstance(repeated["pair"], tuple) and isinstance(repeated["pair"][1], list) and text == "x"
    assert torch.equal(first, tokens.repeat_interleave(2, dim=0))
    assert torch.equal(second, (tokens + 10).repeat_interleave(2, dim=0))


class Net(nn.Module):
    def __init__(self, p=0.3):
        super().__init__()
        self.cfg = type("Cfg", (), {"dropout": p})()
        self.main = nn.Dropout(p)
        self.attention = nn.Dropout(0.1)

    def forward(self, x):
        return self.attention(self.main(x)), {"rates": (self.main.p, self.attention.p)}


def test_dropout_rate_sets_the_main_dropout_and_restores_it_even_on_error():
    net = Net()
    with dropout_rate(net, 0.6):
        assert (net.main.p, net.attention.p) == (0.6, 0.1)
    with pytest.raises(RuntimeError):
        with dropout_rate(net, 0.0):
            raise RuntimeError("boom")
    assert (net.main.p, net.attention.p) == (0.3, 0.1)


def test_separate_dropout_rates_give_one_pass_per_copy_in_order():
    net = Net()
    seen = []
    net.register_forward_hook(lambda mod, args, out: seen.append(out[1]["rates"]))
    passes = SubModelPasses(copies=3, dropout_rates=(0.0, 0.2, 0.5))
    x = torch.arange(1.0, 9.0).view(2, 4)
    out, _ = passes.forward(net, {"x": x}, copies=3)
    assert out.shape == (6, 4)
    assert [rates[0] for rates in seen] == [0.0, 0.2, 0.5]
    assert net.main.p == 0.3
    # interleaved as one pass over a repeated batch: copy 0 (rate 0) of sample b is row 3b
    net.attention.p = 0.0
    out, extra = passes.forward(net, {"x": x}, copies=3)
    assert torch.equal(out[0::3], x)
    assert extra["rates"] == (0.0, 0.0)  # the other entries are the first pass's


def test_one_copy_is_one_plain_pass_at_the_models_own_rate():
    net = Net()
    seen = []
    net.register_forward_hook(lambda mod, args, out: seen.append((out[0].shape[0], out[1]["rates"])))
    out, _ = SubModelPasses(copies=2, dropout_rates=(0.0, 0.5)).forward(net, {"x": torch.ones(2, 4)}, copies=1)
    assert out.shape == (2, 4) and seen == [(2, (0.3, 0.1))]


def test_equal_rates_are_one_pass_over_the_repeated_batch_at_that_rate():
    net = Net()
    seen = []
    net.register_forward_hook(lambda mod, args, out: seen.append((out[0].shape[0], out[1]["rates"])))
    passes = SubModelPasses(copies=2, dropout_rates=(0.5, 0.5))
    x = torch.arange(1.0, 9.0).view(2, 4)
    out, _ = passes.forward(net, {"x": x}, copies=2)
    assert out.shape == (4, 4) and seen == [(4, (0.5, 0.1))]
    assert net.main.p == 0.3


def test_whether_the_copies_can_differ():
    assert SubModelPasses().copies_can_differ(Net())
    assert SubModelPasses().copies_can_differ(Net(p=0.0))  # the attention dropout still differs
    no_dropout = Net(p=0.0)
    no_dropout.attention.p = 0.0
    assert not SubModelPasses().copies_can_differ(no_dropout)
    # per-copy rates replace the main dropout: only theirs and the other dropout count
    assert SubModelPasses(dropout_rates=(0.0, 0.1)).copies_can_differ(no_dropout)
    only_main = Net(p=0.3)
    only_main.attention.p = 0.0
    assert not SubModelPasses(dropout_rates=(0.0, 0.0)).copies_can_differ(only_main)
    assert SubModelPasses().copies_can_differ(only_main)


def test_active_layerdrop_detection():
    from fairseq.modules import LayerDropModuleList

    net = nn.Sequential(LayerDropModuleList(0.2, [nn.Linear(2, 2)]))
    assert drawn_per_pass(net) == (True, False) and SubModelPasses().copies_can_differ(net)
    assert drawn_per_pass(net.eval()) == (False, False)
    assert drawn_per_pass(nn.Sequential(LayerDropModuleList(0.0, [nn.Linear(2, 2)]))) == (False, False)
    # --encoder-layerdrop alone: a decoder without LayerDrop after it does not hide it
    encoder_only = nn.Sequential(LayerDropModuleList(0.2, [nn.Linear(2, 2)]), LayerDropModuleList(0.0, [nn.Linear(2, 2)]))
    assert drawn_per_pass(encoder_only) == (True, False)


class _LayerDropNet(nn.Module):
    def __init__(self):
        super().__init__()
        from fairseq.modules import LayerDropModuleList

        self.layers = LayerDropModuleList(0.5, [nn.Linear(4, 4) for _ in range(3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return (x,)


@pytest.mark.parametrize("dropout_rates", [(), (0.1, 0.3)])
@pytest.mark.parametrize("find_unused_parameters", [True, False])
def test_layerdrop_under_ddp_finding_unused_parameters_is_refused_naming_the_backend(tmp_path, find_unused_parameters,
                                                                                    dropout_rates):
    # DDP with find_unused_parameters keeps only the last forward pass's set of used parameters; the
    # passes of R-Drop with LayerDrop use different layers, and the first backward fails in DDP.
    import torch.distributed as dist
    from fairseq.distributed import ModuleProxyWrapper
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = ModuleProxyWrapper(DistributedDataParallel(_LayerDropNet(), find_unused_parameters=find_unused_parameters))
        wrapped.train()
        x = torch.randn(3, 4)
        passes = SubModelPasses(dropout_rates=dropout_rates)  # per-copy rates make a pass per copy too
        if find_unused_parameters:
            with pytest.raises(ValueError, match="--ddp-backend legacy_ddp"):
                passes.forward(wrapped, {"x": x}, 2)
        else:
            assert passes.forward(wrapped, {"x": x}, 2)[0].shape == (6, 4)
        assert passes.forward(wrapped.eval(), {"x": x}, 2)[0].shape == (6, 4)  # no LayerDrop in eval
    finally:
        dist.destroy_process_group()


# --rdrop-dropout-rates on fairseq models whose attention, activation (and pooler) dropout
# equal --dropout: only the main dropout takes the sub-model's rate.
SAME_RATES = ["--dropout", "0.1", "--attention-dropout", "0.1", "--activation-dropout", "0.1"]
SMALL_ENCODER = [
    "--encoder-layers", "1", "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--tokens-per-sample", "16",
]


def _rates(model):
    found = {id(m) for m in dropout_modules(model)}
    return {name: m.p for name, m in model.named_modules() if id(m) in found}


def _transformer(tmp_path):
    from tiny_fairseq import TINY_TRANSFORMER, build, write_dictionaries

    return build(write_dictionaries(tmp_path), model_args=TINY_TRANSFORMER + SAME_RATES)[2]


def _transformer_lm(tmp_path):
    from tiny_lm import SMALL_DECODER, build

    return build(tmp_path, model_args=SMALL_DECODER + SAME_RATES)[1]


def _roberta_with_head(tmp_path):
    from tiny_lm import build

    args = SMALL_ENCODER + SAME_RATES + ["--pooler-dropout", "0.1"]
    model = build(tmp_path, task="masked_lm", criterion="masked_lm", arch="roberta_base", model_args=args)[1]
    model.register_classification_head("head", num_classes=2)
    return model


def _lightconv(tmp_path):
    from tiny_fairseq import build, write_dictionaries

    args = [
        "--arch", "lightconv", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "8", "--decoder-embed-dim", "8", "--encoder-conv-dim", "8", "--decoder-conv-dim", "8",
        "--encoder-ffn-embed-dim", "8", "--decoder-ffn-embed-dim", "8",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--encoder-kernel-size-list", "[3]", "--decoder-kernel-size-list", "[3]",
        "--dropout", "0.1", "--attention-dropout", "0.1", "--relu-dropout", "0.1",
        "--input-dropout", "0.1", "--weight-dropout", "0.1", "--optimizer", "adam",
    ]
    return build(write_dictionaries(tmp_path), model_args=args)[2]


@pytest.mark.parametrize(
    "make,main",
    [
        (_transformer, {
            "encoder.dropout_module", "encoder.layers.0.dropout_module",
            "decoder.dropout_module", "decoder.layers.0.dropout_module",
        }),
        (_transformer_lm, {"decoder.dropout_module", "decoder.layers.0.dropout_module"}),
        # the classification head's --pooler-dropout is not --dropout either
        (_roberta_with_head, {
            "encoder.sentence_encoder.dropout_module", "encoder.sentence_encoder.layers.0.dropout_module",
        }),
        # lightconv's --relu-dropout, --input-dropout and --weight-dropout keep theirs
        (_lightconv, {
            "encoder.dropout_module", "encoder.layers.0.dropout_module",
            "decoder.dropout_module", "decoder.layers.0.dropout_module",
        }),
    ],
    ids=["transformer", "transformer_lm", "roberta_head", "lightconv"],
)
def test_dropout_rate_changes_only_the_main_dropout_when_the_other_rates_equal_it(tmp_path, make, main):
    model = make(tmp_path)
    rates = _rates(model)
    assert set(rates.values()) == {0.1} and main < rates.keys()
    assert len(rates) > len(main)  # attention, activation, ... dropout are there, at --dropout's rate
    with dropout_rate(model, 0.3):
        inside = _rates(model)
    assert inside == {name: 0.3 if name in main else 0.1 for name in rates}
    assert _rates(model) == rates


def test_dropout_rate_sets_main_dropout_at_a_rate_of_its_own(tmp_path):
    """Main dropout is chosen by what it is: the LSTM's --encoder-dropout-in (0.2, not
    --dropout) is main dropout as well; so is a layer whose rate was changed by hand."""
    from tiny_fairseq import TINY_TRANSFORMER, build, write_dictionaries

    lstm_args = [
        "--arch", "lstm", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "8", "--decoder-embed-dim", "8", "--encoder-hidden-size", "8",
        "--decoder-hidden-size", "8", "--decoder-out-embed-dim", "8",
        "--dropout", "0.3", "--encoder-dropout-in", "0.2", "--optimizer", "adam",
    ]
    lstm = build(write_dictionaries(tmp_path), model_args=lstm_args)[2]
    modules = [lstm.encoder.dropout_in_module, lstm.encoder.dropout_out_module,
               lstm.decoder.dropout_in_module, lstm.decoder.dropout_out_module]
    with dropout_rate(lstm, 0.5):
        assert [m.p for m in modules] == [0.5] * 4
    assert [m.p for m in modules] == [0.2, 0.3, 0.3, 0.3]

    transformer = build(tmp_path, model_args=TINY_TRANSFORMER + SAME_RATES)[2]
    layer = transformer.encoder.layers[0]
    layer.dropout_module.p = 0.2
    with dropout_rate(transformer, 0.5):
        assert (layer.dropout_module.p, layer.self_attn.dropout_module.p) == (0.5, 0.1)
    assert (layer.dropout_module.p, layer.self_attn.dropout_module.p) == (0.2, 0.1)


def test_dropout_rate_without_a_known_main_rate_sets_every_active_unknown_module():
    net = nn.Sequential(nn.Dropout(0.2), nn.Linear(2, 2), nn.Dropout(0.0))
    with dropout_rate(net, 0.5):
        assert (net[0].p, net[2].p) == (0.5, 0.0)
    assert (net[0].p, net[2].p) == (0.2, 0.0)
