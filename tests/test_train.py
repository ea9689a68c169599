"""Training core: data parallelism, exact resume, metrics, and the classifier mode."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rkdsc_jax import data, models, train
from rkdsc_jax.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(mesh, num_steps=20, batch_size=32, seed=0):
    source = data.synthetic("train", 256, image_shape=(12, 12, 1), seed=seed)
    model = models.SmallCNN(num_classes=10, features=(8, 16), hidden=32, dropout=0.1)
    tx = train.make_optimizer(
        _Cfg(optimizer="adamw", learning_rate=3e-3, warmup_steps=3, weight_decay=1e-4), num_steps
    )
    state = jax.jit(
        functools.partial(train.create_train_state, model, tx, seed=seed, train=False),
        out_shardings=train.replicated(mesh),
    )(jnp.zeros((1, 12, 12, 1)))
    iterator = data.train_iterator(source, batch_size=batch_size, num_steps=num_steps, seed=seed)
    return state, iterator, train.jit_train_step(train.classifier_train_step, mesh)


class _Cfg(dict):
    __getattr__ = dict.__getitem__


def _run_steps(mesh, num_steps=20):
    state, iterator, step = _setup(mesh, num_steps)
    losses = []
    for _ in range(num_steps):
        state, m = step(state, train.shard_batch(next(iterator), mesh, ("image", "label")))
        losses.append(float(m["loss"]))
    return np.asarray(losses), state


def test_eight_devices_give_the_same_losses_as_one():
    assert jax.device_count() == 8, "conftest sets 8 virtual CPU devices"
    losses_1, state_1 = _run_steps(train.make_mesh(1))
    losses_8, state_8 = _run_steps(train.make_mesh(8))
    assert losses_1[-1] < losses_1[0]  # It trains.
    np.testing.assert_allclose(losses_8, losses_1, rtol=2e-4, atol=2e-5)
    chex.assert_trees_all_close(state_8.params, state_1.params, rtol=1e-3, atol=1e-4)
    # Batch statistics are global-batch statistics, not per-device ones.
    chex.assert_trees_all_close(state_8.batch_stats, state_1.batch_stats, rtol=1e-3, atol=1e-4)


def test_batch_is_really_sharded_over_the_mesh():
    mesh = train.make_mesh(8)
    batch = train.shard_batch({"image": np.zeros((16, 4, 4, 1), np.float32)}, mesh)
    assert len(batch["image"].addressable_shards) == 8
    assert batch["image"].addressable_shards[0].data.shape == (2, 4, 4, 1)
    with pytest.raises(ValueError, match="divisible"):
        train.mesh.check_batch_size(12, mesh)


def _fit(workdir, mesh, num_steps=24, crash_at=None):
    state, iterator, step = _setup(mesh, num_steps)
    calls = 0

    def maybe_crashing_step(state, batch):
        nonlocal calls
        calls += 1
        if calls == crash_at:
            raise RuntimeError("simulated preemption")
        return step(state, batch)

    eval_source = data.synthetic("test", 40, image_shape=(12, 12, 1))
    eval_step = train.jit_eval_step(train.classifier_eval_step, mesh)
    eval_fn = lambda s: train.evaluate(eval_step, s, data.eval_batches(eval_source, batch_size=16), mesh)
    config = train.LoopConfig(num_steps=num_steps, batch_size=32, log_every=4, checkpoint_every=8, eval_every=8)
    return train.fit(state=state, train_step=maybe_crashing_step, train_iter=iterator, mesh=mesh,
                     workdir=str(workdir), config=config, eval_fn=eval_fn)


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_metrics(tmp_path):
    mesh = train.make_mesh(2)
    state_a, summary_a = _fit(tmp_path / "a", mesh)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        _fit(tmp_path / "b", mesh, crash_at=19)  # Dies between the checkpoints at 16 and 24.
    partial_rows = metrics_lib.read_metrics(str(tmp_path / "b" / "metrics.jsonl"))
    assert max(r["step"] for r in partial_rows) == 16
    state_b, summary_b = _fit(tmp_path / "b", mesh)
    assert summary_b["resumed_from_step"] == 16
    strip = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_second"} for r in rows]
    rows_a = strip(metrics_lib.read_metrics(str(tmp_path / "a" / "metrics.jsonl")))
    rows_b = strip(metrics_lib.read_metrics(str(tmp_path / "b" / "metrics.jsonl")))
    assert rows_a == rows_b  # Bit-identical numbers, same rows, no duplicates.
    chex.assert_trees_all_equal(state_a.params, state_b.params)
    assert summary_a["eval"] == summary_b["eval"]


def _fit_with_hooks(workdir, mesh, crash_at=None):
    """10 steps in 'epochs' of 3 (the search's shape): a hook every epoch that keeps a history
    across resumes (``on_start``) and writes its metrics under its own split."""
    state, iterator, step = _setup(mesh, 10)
    history, calls = [], 0

    def maybe_crashing_step(state, batch):
        nonlocal calls
        calls += 1
        if calls == crash_at:
            raise RuntimeError("simulated preemption")
        return step(state, batch)

    def on_start(first_step):
        saved = json.loads((workdir / "history.json").read_text()) if (workdir / "history.json").exists() else []
        history[:] = [h for h in saved if h["step"] <= first_step]

    def snapshot(step_number, state):
        history.append({"step": step_number, "norm": float(_norm(state.params))})
        (workdir / "history.json").write_text(json.dumps(history))
        return {"norm": history[-1]["norm"]}

    hook = train.PeriodicAction(3, snapshot, split="snapshot", at_end=False, on_start=on_start)
    config = train.LoopConfig(num_steps=10, batch_size=32, log_every=5, checkpoint_every=100, epoch_steps=3)
    train.fit(state=state, train_step=maybe_crashing_step, train_iter=iterator, mesh=mesh, workdir=str(workdir),
              config=config, hooks=[hook])
    return history


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_periodic_actions_and_epoch_checkpoints_resume_exactly(tmp_path, monkeypatch):
    mesh = train.make_mesh(2)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    full = _fit_with_hooks(tmp_path / "a", mesh)
    assert [h["step"] for h in full] == [3, 6, 9]
    # A slow commit: the save of step 6 is still in flight when step 8 raises.
    record_checksums = train.Checkpointer._record_checksums
    monkeypatch.setattr(train.Checkpointer, "_record_checksums", lambda self: (time.sleep(1.0), record_checksums(self)))
    with pytest.raises(RuntimeError, match="simulated preemption"):
        _fit_with_hooks(tmp_path / "b", mesh, crash_at=8)  # After the epoch checkpoint at 6.
    # Leaving on the error committed that save rather than abandoning it to a background thread.
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["3", "6"]
    monkeypatch.undo()
    resumed = _fit_with_hooks(tmp_path / "b", mesh)
    assert resumed == full  # The same snapshots, none lost or repeated.
    strip = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_second"} for r in rows]
    rows = [strip(metrics_lib.read_metrics(str(tmp_path / d / "metrics.jsonl"))) for d in "ab"]
    assert rows[0] == rows[1]
    assert [(r["step"], r["split"]) for r in rows[0]] == [(3, "train"), (3, "snapshot"), (5, "train"), (6, "train"),
                                                          (6, "snapshot"), (9, "train"), (9, "snapshot"),
                                                          (10, "train")]


def test_steps_from_epochs_is_the_one_conversion():
    assert train.steps_from_epochs(1000, 128, 1.0) == 8  # ceil
    assert train.steps_from_epochs(1000, 128, 2.5) == 20
    assert train.steps_from_epochs(1000, 128, 1.0, num_steps=3) == 3
    assert train.steps_from_epochs(1000, 128, 3, whole_batches=True) == 21  # 7 full batches an epoch
    assert train.steps_from_epochs(10, 128, 0.01) == 1
    with pytest.raises(ValueError, match="fewer than one batch"):
        train.steps_from_epochs(100, 128, 1, whole_batches=True)


def test_metric_writer_truncates_and_skips_torn_lines(tmp_path):
    writer = train.MetricWriter(str(tmp_path), tensorboard=True)
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "spl')  # A crash mid-write.
    assert [r["step"] for r in train.read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]
    writer = train.MetricWriter(str(tmp_path), tensorboard=False)
    writer.truncate(2)
    assert [r["step"] for r in train.read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))


def test_evaluate_is_exact_with_padding():
    mesh = train.make_mesh(8)

    def eval_step(state, batch):  # "Predicts" label 0 always.
        correct = (batch["label"] == 0) * batch["mask"]
        return {"accuracy": jnp.sum(correct), "count": jnp.sum(batch["mask"])}

    source = data.synthetic("test", 50)
    result = train.evaluate(jax.jit(eval_step), None, data.eval_batches(source, batch_size=16), mesh)
    assert result["count"] == 50
    assert result["accuracy"] == pytest.approx(np.mean(source.labels == 0))


def test_optimizer_schedule_and_bad_name():
    cfg = _Cfg(optimizer="sgd", learning_rate=0.1, warmup_steps=10, weight_decay=0.0, momentum=0.9,
               grad_clip_norm=1.0)
    tx = train.make_optimizer(cfg, 100)
    params = {"w": jnp.ones(3)}
    opt_state = tx.init(params)
    updates, _ = tx.update({"w": jnp.full(3, 100.0)}, opt_state, params)
    assert float(jnp.abs(updates["w"]).max()) == 0.0  # Step 0 of the warm-up has lr 0.
    with pytest.raises(ValueError, match="Unknown optimizer"):
        train.make_optimizer(_Cfg(optimizer="lion", learning_rate=1.0, warmup_steps=0), 10)


def test_loop_config_rejects_checkpoints_off_log_boundaries():
    with pytest.raises(ValueError, match="multiple of log_every"):
        train.LoopConfig(num_steps=10, batch_size=8, log_every=4, checkpoint_every=6)


def _main(workdir, *overrides, env=None):
    cmd = [sys.executable, "-m", "experiments.main",
           "--config=experiments/configs/synthetic_classifier.py", f"--workdir={workdir}", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_main_killed_mid_run_resumes_to_the_same_metrics(tmp_path):
    """The experiment entry point, SIGKILLed after its first checkpoint, then rerun."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    # Big enough images that a step takes a while, so the kill lands mid-run.
    overrides = ["--config.train.num_epochs=6", "--config.model.features=(16,32)"]
    reference = _main(tmp_path / "ref", *overrides, env=env)
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out

    killed = _main(tmp_path / "run", *overrides, env=env)
    checkpoint_dir = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        if checkpoint_dir.exists() and any(p.isdigit() for p in os.listdir(checkpoint_dir)):
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    steps_done = [int(p) for p in os.listdir(checkpoint_dir) if p.isdigit()]
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert steps_done and max(steps_done) < summary["steps"], "the kill came too late to test resume"

    resumed = _main(tmp_path / "run", *overrides, env=env)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "Resuming at step" in out
    strip = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_second"} for r in rows]
    assert strip(train.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))) == strip(
        train.read_metrics(str(tmp_path / "ref" / "metrics.jsonl"))
    )
    resumed_summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed_summary["eval"] == summary["eval"]
    assert summary["eval"]["accuracy"] > 0.9  # Synthetic classes are easy: it really learns.
    for name in ("config.json", "metrics.jsonl", "summary.json", "tensorboard"):
        assert (tmp_path / "ref" / name).exists()


@pytest.mark.slow
def test_default_main_command_reaches_90_percent_on_fashion_mnist(tmp_path):
    """The README's main job (minutes on 2 cores): >= 90 % test accuracy on the real data."""
    if not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
        pytest.skip("dataset-fashion-mnist is not installed")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # Use the config's devices.
    cmd = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/fmnist_classifier.py",
           f"--workdir={tmp_path}"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval"]["accuracy"] >= 0.90 and summary["eval"]["count"] == 10000
