from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.sentence_prediction import SentencePredictionConfig, SentencePredictionCriterion

from ..rdrop_loss import rdrop_loss_from_logits, rdrop_regression_loss
from .rdrop_criterion import ALPHA_HELP, RDropCriterionMixin


@dataclass
class RDropSentencePredictionConfig(SentencePredictionConfig):
    rdrop_alpha: float = field(default=1.0, metadata={"help": ALPHA_HELP})


@register_criterion("rdrop_sentence_prediction", dataclass=RDropSentencePredictionConfig)
class RDropSentencePredictionCriterion(RDropCriterionMixin, SentencePredictionCriterion):
    """fairseq's ``sentence_prediction`` with R-Drop training steps (paper §3.3, GLUE).

    Classification: the cross-entropy of every sub-model plus alpha times their
    symmetric KL.  Regression (``--regression-target``): the squared error of every
    sub-model plus alpha times the mean squared difference between their predictions.
    Evaluation steps are the stock criterion's, so the GLUE metrics are unchanged: one
    ordinary pass, one prediction per example."""

    def __init__(self, cfg: RDropSentencePredictionConfig, task):
        super().__init__(cfg, task)
        self.init_rdrop(task, cfg.rdrop_alpha, 0)

    def sample_sizes(self, sample):
        """The stock criterion's: one per target value, B, or B * C for a regression on C values."""
        values = sample["target"].numel()
        return values, sample["ntokens"], values

    def forward(self, model, sample, reduce=True, update_num=None):
        if self.classification_head_name not in getattr(model, "classification_heads", {}):
            raise ValueError(
                f"--criterion rdrop_sentence_prediction needs a model with the classification head "
                f"'{self.classification_head_name}' (--classification-head-name), e.g. --task sentence_prediction"
            )
        return super().forward(model, sample, reduce, update_num)

    def rdrop_forward(self, model, sample, copies):
        head_input = {**sample["net_input"], "features_only": True,
                      "classification_head_name": self.classification_head_name}
        loss, sample_size, logging_output = super().rdrop_forward(model, {**sample, "net_input": head_input}, copies)
        # RoBERTa's --mha-reg-scale-factor / --ffn-reg-scale-factor terms, added to each
        # sub-model's loss as the stock criterion adds them to its one, and logged as it does.
        for name, reg_loss in self.model_regularisers(model).items():
            loss = loss + copies * reg_loss
            logging_output["loss"] = logging_output["loss"] + reg_loss.data
            logging_output[name] = reg_loss.data
        return loss, sample_size, logging_output

    @staticmethod
    def model_regularisers(model):
        args = getattr(model, "args", None)
        terms = {}
        if getattr(args, "mha_reg_scale_factor", 0.0):
            terms["mha_reg_loss"] = model._get_adaptive_head_loss()
        if getattr(args, "ffn_reg_scale_factor", 0.0):
            terms["ffn_reg_loss"] = model._get_adaptive_ffn_loss()
        return terms

    def logging_outputs_can_be_summed(self) -> bool:
        """False with ``--report-mcc``, ``--report-acc-and-f1`` or
        ``--report-pearson-and-spearman``: evaluation steps then log per-example
        ``pred``/``targ`` lists, which fairseq's trainer must gather from every worker
        (``_all_gather_list_sync``), not sum (``_fast_stat_sync_sum`` would compute
        ``0 + list`` and fail).  The stock criterion (fairseq 0.12.3.1) says True even
        then, so its multi-GPU validation fails with those flags."""
        return not self.keep_pred_and_targ

    def compute_rdrop_loss(self, model, net_output, sample, copies):
        logits = net_output[0]
        target = model.get_targets(sample, [logits]).view(-1)
        if self.regression_target:
            loss, mse, consistency = rdrop_regression_loss(logits, target, copies, self.rdrop_alpha)
            return (loss, mse, mse, consistency), {}
        terms = rdrop_loss_from_logits(logits.unsqueeze(1), target.unsqueeze(1), copies, self.rdrop_alpha)
        # Accuracy on the baseline's scale: the copies' mean number of correct predictions.
        correct = logits.detach().argmax(-1).view(-1, copies).eq(target.unsqueeze(1))
        return terms, {"ncorrect": correct.sum().to(torch.float) / copies}
