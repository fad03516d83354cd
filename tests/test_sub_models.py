import pytest
import torch
from torch import nn

from rdrop_fairseq.sub_models import SubModelPasses, dropout_rate, has_active_dropout, has_active_layerdrop, repeat_batch


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
    out, _ = passes.forward(net, {"x": x}, copies=3)
    assert torch.equal(out[0::3], x)


def test_active_dropout_detection():
    assert has_active_dropout(Net())
    assert not has_active_dropout(Net(p=0.0).main)


def test_active_layerdrop_detection():
    from fairseq.modules import LayerDropModuleList

    net = nn.Sequential(LayerDropModuleList(0.2, [nn.Linear(2, 2)]))
    assert has_active_layerdrop(net)
    assert not has_active_layerdrop(net.eval())
    assert not has_active_layerdrop(nn.Sequential(LayerDropModuleList(0.0, [nn.Linear(2, 2)])))
