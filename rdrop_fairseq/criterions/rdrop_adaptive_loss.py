from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.criterions.adaptive_loss import AdaptiveLoss, AdaptiveLossConfig

from ..adaptive_softmax import adaptive_rdrop_loss
from .rdrop_criterion import ALPHA_HELP, RDropCriterionMixin

ADAPTIVE_CHUNK_HELP = (
    "target tokens per chunk of the full-vocabulary NLL and KL, which bounds their extra memory to "
    "a few copies * chunk * vocabulary floats; 0 picks about 2^24 / (copies * vocabulary)"
)
UNSUPPORTED_DDP_BACKENDS = ("c10d", "pytorch_ddp")


@dataclass
class RDropAdaptiveLossConfig(AdaptiveLossConfig):
    rdrop_alpha: float = field(default=1.0, metadata={"help": ALPHA_HELP})
    rdrop_chunk_tokens: int = field(default=0, metadata={"help": ADAPTIVE_CHUNK_HELP})


@register_criterion("rdrop_adaptive_loss", dataclass=RDropAdaptiveLossConfig)
class RDropAdaptiveLoss(RDropCriterionMixin, AdaptiveLoss):
    """Adaptive-softmax NLL of every sub-model (``adaptive_loss``'s, in fp32) plus alpha
    times the KL between their full-vocabulary distributions, both from the same
    distributions, computed in chunks (:func:`~rdrop_fairseq.adaptive_softmax.adaptive_rdrop_loss`)."""

    def __init__(self, task, sentence_avg, rdrop_alpha=1.0, rdrop_chunk_tokens=0):
        super().__init__(task, sentence_avg)
        self.init_rdrop(task, rdrop_alpha, rdrop_chunk_tokens)

    @classmethod
    def build_criterion(cls, cfg: RDropAdaptiveLossConfig, task):
        if cfg.ddp_backend in UNSUPPORTED_DDP_BACKENDS:
            raise ValueError(
                f"--criterion rdrop_adaptive_loss needs --ddp-backend legacy_ddp, not "
                f"{cfg.ddp_backend}: as for fairseq's adaptive_loss, PyTorch's "
                "DistributedDataParallel fails on the adaptive softmax clusters that "
                "receive no gradient in a step"
            )
        return cls(task, cfg.sentence_avg, cfg.rdrop_alpha, cfg.rdrop_chunk_tokens)

    def token_count(self, sample):
        # adaptive_loss counts the non-padding targets, not the batch's ntokens
        return int(sample["target"].ne(self.padding_idx).sum())

    def compute_rdrop_loss(self, model, net_output, sample, copies):
        adaptive_softmax = getattr(model.decoder, "adaptive_softmax", None)
        if adaptive_softmax is None:
            raise ValueError(
                "--criterion rdrop_adaptive_loss needs a model with an adaptive softmax "
                "(--adaptive-softmax-cutoff, e.g. --arch transformer_lm_wiki103); "
                "use --criterion rdrop_cross_entropy otherwise"
            )
        target = model.get_targets(sample, net_output)
        loss, nll, kl = adaptive_rdrop_loss(
            adaptive_softmax,
            net_output[0],
            target,
            copies,
            self.rdrop_alpha,
            ignore_index=self.padding_idx,
            chunk_tokens=self.rdrop_chunk_tokens,
        )
        return (loss, nll, nll, kl), {}
