"""The former path of ``experiments.common.classifier`` (tests/test_nas.py imports it)."""

from experiments.common.classifier import train_classifier
