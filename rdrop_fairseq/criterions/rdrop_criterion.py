"""What the R-Drop criteria share: the passes, the step's loss and the metrics."""
import logging
import math

import torch
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.logging import metrics
from fairseq.models import BaseFairseqModel, FairseqDecoder
from fairseq.models.transformer import TransformerModelBase

from ..rdrop_loss import rdrop_loss, rdrop_loss_from_logits
from ..sub_models import SubModelPasses

logger = logging.getLogger(__name__)

ALPHA_HELP = "weight alpha of the symmetric KL between sub-models (paper Eq. 4); 0 turns R-Drop off"
CHUNK_HELP = (
    "target tokens per chunk of the KL computation, which bounds its extra memory "
    "to about 3 * chunk * vocabulary floats; 0 picks about 2^19 / vocabulary on a CPU, 2^22 / vocabulary on a GPU. "
    "The torch path only (RDROP_KERNEL=torch, or a CPU): the fused Triton kernels need no chunks"
)


class RDropCriterionMixin:
    """Mixed in before a fairseq criterion; training steps become R-Drop steps.

    Evaluation steps, alpha = 0 and the skipped steps of k-step R-Drop call the
    wrapped criterion unchanged, so they cost and log exactly what it does.
    """

    def init_rdrop(self, task, rdrop_alpha: float, rdrop_chunk_tokens: int):
        if not (math.isfinite(rdrop_alpha) and rdrop_alpha >= 0):  # nan would pass "< 0" and silently turn R-Drop off
            raise ValueError(f"--rdrop-alpha must be a finite number >= 0, got {rdrop_alpha}")
        if rdrop_chunk_tokens < 0:
            raise ValueError(f"--rdrop-chunk-tokens must be >= 0, got {rdrop_chunk_tokens}")
        self.rdrop_alpha = float(rdrop_alpha)
        self.rdrop_chunk_tokens = rdrop_chunk_tokens
        self.sub_model_passes = getattr(task, "sub_model_passes", None) or SubModelPasses()
        self._dropout_checked = False

    def forward(self, model, sample, reduce=True, update_num=None):
        training = model.training and self.rdrop_alpha > 0
        copies = self.sub_model_passes.copies_for(training, update_num)
        if copies == 1 or not reduce:
            return super().forward(model, sample, reduce=reduce)
        self._warn_without_dropout(model)
        return self.rdrop_forward(model, sample, copies)

    def rdrop_forward(self, model, sample, copies):
        """An R-Drop training step of ``copies`` sub-models: ``(loss, sample_size, logging_output)``."""
        net_output = self.sub_model_passes.forward(model, sample["net_input"], copies)
        (loss, smoothed, nll, kl), extra_logs = self.compute_rdrop_loss(
            model, net_output, sample, copies
        )
        sample_size, ntokens, nsentences = self.sample_sizes(sample)
        logging_output = {
            "loss": smoothed.data / copies,
            "nll_loss": nll.data / copies,
            "kl_loss": kl.data,
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": sample_size,
            **extra_logs,
        }
        return loss, sample_size, logging_output

    def token_count(self, sample):
        """``ntokens`` as the wrapped criterion logs it."""
        return sample["ntokens"]

    def sample_sizes(self, sample):
        """``(sample_size, ntokens, nsentences)`` as the wrapped criterion logs them."""
        sentences, tokens = sample["target"].size(0), self.token_count(sample)
        return (sentences if self.sentence_avg else tokens), tokens, sentences

    def compute_rdrop_loss(self, model, net_output, sample, copies):
        """``(loss, smoothed_nll, nll, kl)`` as :func:`rdrop_loss` returns them, summed
        over tokens and copies, and extra logging entries.  ``net_output[0]`` is
        ``(copies * B, T, ...)`` with the copies interleaved (see
        :mod:`~rdrop_fairseq.sub_models`).  A criterion whose output layer gives no full
        ``(copies * B, T, V)`` log-probabilities overrides this."""
        target = model.get_targets(sample, net_output)
        logits = log_softmax_input(model, net_output)
        if getattr(getattr(unwrapped(model), "decoder", None), "adaptive_softmax", None) is not None:
            raise ValueError(
                f"--criterion {registered_name(self)} cannot train a model with an adaptive softmax "
                "(--adaptive-softmax-cutoff): fairseq's AdaptiveSoftmax.get_log_prob writes its result in "
                "place, so no gradient passes through it; use --criterion rdrop_adaptive_loss"
            )
        if logits is not None:
            scores, target = self.trim_prefix(logits, target)
            loss_fn = rdrop_loss_from_logits
        else:
            scores, target = self.trim_prefix(model.get_normalized_probs(net_output, log_probs=True), target)
            loss_fn = rdrop_loss
        terms = loss_fn(
            scores,
            target,
            copies,
            self.rdrop_alpha,
            epsilon=getattr(self, "eps", 0.0),
            ignore_index=self.padding_idx,
            chunk_tokens=self.rdrop_chunk_tokens,
        )
        extra_logs = {}
        if getattr(self, "report_accuracy", False):
            # on the baseline's scale, like ntokens: the copies' mean count of correct tokens
            copies_target = target.repeat_interleave(copies, dim=0)
            mask = copies_target.ne(self.padding_idx)
            correct = scores.argmax(-1).eq(copies_target) & mask
            extra_logs["n_correct"] = correct.sum().item() / copies
            extra_logs["total"] = mask.sum().item() // copies
        return terms, extra_logs

    def trim_prefix(self, scores, target):
        """``(copies * B, T, V)`` scores and ``(B, T)`` targets without the first
        ``--ignore-prefix-size`` positions: strided views, not copies."""
        prefix = getattr(self, "ignore_prefix_size", 0)
        if prefix > 0:
            scores, target = scores[:, prefix:], target[:, prefix:]
        return scores, target

    def _warn_without_dropout(self, model):
        if not self._dropout_checked:
            self._dropout_checked = True
            if not self.sub_model_passes.copies_can_differ(model):
                logger.warning(
                    "R-Drop is on (--rdrop-alpha %s) but the model has no dropout: "
                    "the sub-models are identical and the KL term is zero",
                    self.rdrop_alpha,
                )

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        rdrop_logs = [log for log in logging_outputs if "kl_loss" in log]
        if rdrop_logs:
            kl_sum = sum(log["kl_loss"] for log in rdrop_logs)
            sample_size = sum(log.get("sample_size", 0) for log in rdrop_logs)
            metrics.log_scalar("kl_loss", kl_sum / sample_size / math.log(2), sample_size, round=4)


_PLAIN_MODEL_NORMALIZERS = (BaseFairseqModel.get_normalized_probs, TransformerModelBase.get_normalized_probs)


def log_softmax_input(model, net_output):
    """``net_output[0]`` if the model's log-probabilities are fairseq's plain
    ``log_softmax(net_output[0].float())`` (transformer, LSTM and convolutional models
    without an adaptive softmax), else None.  The loss then starts from these logits
    and never stores the log-probabilities; any other model goes through its own
    ``get_normalized_probs``."""
    model = unwrapped(model)
    decoder = getattr(model, "decoder", None)
    plain = (
        isinstance(model, BaseFairseqModel)
        and _method(model, "get_normalized_probs") in _PLAIN_MODEL_NORMALIZERS
        and _method(model, "get_normalized_probs_scriptable") is BaseFairseqModel.get_normalized_probs_scriptable
        and isinstance(decoder, FairseqDecoder)
        and _method(decoder, "get_normalized_probs") is FairseqDecoder.get_normalized_probs
        and _method(decoder, "get_normalized_probs_scriptable") is FairseqDecoder.get_normalized_probs_scriptable
        and getattr(decoder, "adaptive_softmax", None) is None
    )
    return net_output[0] if plain else None


def registered_name(criterion) -> str:
    """The name ``--criterion`` takes for ``criterion``'s class."""
    names = [name for name, cls in CRITERION_REGISTRY.items() if cls is type(criterion)]
    return names[0] if names else type(criterion).__name__


def unwrapped(model):
    """The fairseq model inside distributed wrappers."""
    while not isinstance(model, BaseFairseqModel) and isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _method(obj, name):
    """The function behind ``obj.name``; None if it is not a method (e.g. set on the instance)."""
    return getattr(getattr(obj, name, None), "__func__", None)
