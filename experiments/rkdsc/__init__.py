"""Paper A (RKD-SC) on the shared core: ``stages`` (stage 1, stage 2, the baselines, latency),
``modes`` (modes ``rkdsc``, ``rkd_stage1``, ``rkd_stage2``, ``export``) and ``report``."""

from experiments.rkdsc.modes import export, pipeline, rkd_stage1, rkd_stage2, search_config, teacher_curves
from experiments.rkdsc.report import METHOD_LABELS, paper_claims, write_report
from experiments.rkdsc.stages import Setup, train_cnn_baseline, train_stage1, train_stage2
