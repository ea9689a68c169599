"""Paper B (L-TOSC-KD) on the shared core: ``methods`` (the TOSC systems, mode ``ltosc``),
``store`` (modes ``precompute_logits``, ``verify_logits``), ``modes`` (modes ``ltosc_study``,
``evaluate``, ``export``) and ``report``."""

from experiments.common.layout import RunLayout
from experiments.ltosc.methods import METHOD_LABELS, METHODS, Setup, method_config, run_method, train_method
from experiments.ltosc.report import write_report
from experiments.ltosc.store import precompute_logits, verify_logits
from experiments.ltosc.modes import evaluate, export, fdm_ablation, study, teacher_curves
