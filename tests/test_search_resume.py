"""The bi-level search (mode ``search``) on ``train.fit``: killed after its first epoch and run
again, it ends exactly as an uninterrupted search (α, genotype, per-epoch snapshots, metrics).
Slow: the supernet compiles for minutes on CPU."""

import json

import numpy as np
import pytest


def _config():
    from experiments.configs import darts_fmnist

    config = darts_fmnist.get_config("plain")
    config.data.name, config.data.normalization, config.data.augment = "synthetic", "unit", "none"
    config.data.num_train_examples = 128
    s = config.search
    s.layers, s.channels, s.batch_size, s.epochs = 3, 4, 32, 2  # 2 steps an epoch, 4 in all.
    config.train.log_every, config.train.checkpoint_every = 1, 100  # Checkpoints at the epochs' ends.
    config.mesh.num_devices = 2
    return config


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from experiments.darts import search as darts_search
    from rkdsc_jax import train

    full = darts_search.search(_config(), str(tmp_path / "full" / "search"))

    snapshot = darts_search.AlphaSnapshots.__call__

    def killed_at_epoch_2(self, step, state):
        if step // self.steps_per_epoch == 2:
            raise KeyboardInterrupt("killed")
        return snapshot(self, step, state)

    with monkeypatch.context() as patch:
        patch.setattr(darts_search.AlphaSnapshots, "__call__", killed_at_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            darts_search.search(_config(), str(tmp_path / "killed" / "search"))
    resumed = darts_search.search(_config(), str(tmp_path / "killed" / "search"))

    assert resumed["resumed_from_step"] == 2 and full["resumed_from_step"] == 0
    for key in ("genotype", "op_histogram", "complexity", "val", "train", "expected_cell_params"):
        assert resumed[key] == full[key], key
    history = [json.loads((tmp_path / d / "search" / "alpha_history.json").read_text()) for d in ("full", "killed")]
    assert [h["epoch"] for h in history[1]] == [1, 2] and history[0] == history[1]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_second"} for r in rows]
    rows = [strip(train.read_metrics(tmp_path / d / "search" / "metrics.jsonl")) for d in ("full", "killed")]
    assert rows[0] == rows[1]
    for d in ("full", "killed"):
        checkpointer = train.Checkpointer(tmp_path / d / "search" / "checkpoints")
        assert checkpointer.latest_step() == 4
        checkpointer.close()
    genotypes = [json.loads((tmp_path / d / "search" / "genotype.json").read_text()) for d in ("full", "killed")]
    assert genotypes[0] == genotypes[1] and np.isfinite(full["complexity"])
