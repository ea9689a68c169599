"""The former path of ``experiments.darts.search`` (tests/test_nas.py imports it); new code
imports ``experiments.darts.search``."""

from experiments.darts.search import PairedIterator, load_genotype, retrain, search, teacher_fn

_teacher_fn = teacher_fn
