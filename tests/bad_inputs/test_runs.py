"""Bad inputs to a run: a workdir of another config, a second run on a busy workdir, a NaN loss,
impossible loop settings, stale pipeline stages, tuple fields given as strings, a store of
another teacher or class count, an export rebuilt from the current flags (issue 18).

Each case asserts its specific message; valid controls pass.  All cheap: no model trains for
more than a dozen steps of a few parameters."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments.common import export as export_lib
from experiments.common import inputs, results
from experiments.configs import ltosc_fmnist, synthetic_classifier
from rkdsc_jax import data, train
from rkdsc_jax.train import workdir as workdir_lib

# --- Run identity ------------------------------------------------------------------------


def _classifier_config(**changes):
    config = synthetic_classifier.get_config()
    for name, value in changes.items():
        section, _, key = name.rpartition(".")
        (config[section] if section else config)[key] = value
    return config


@pytest.fixture
def recorded_run(tmp_path, monkeypatch):
    monkeypatch.delenv(workdir_lib.ALLOW_ENV, raising=False)
    workdir = tmp_path / "run"
    results.start_run(_classifier_config(), workdir, "first run")
    return workdir


@pytest.mark.parametrize("name, value, shown", [
    ("seed", 1, "seed: 0 → 1"),
    ("train.learning_rate", 0.01, "train.learning_rate: 0.003 → 0.01"),
    ("model.name", "resnet", "model.name: 'small_cnn' → 'resnet'"),
    ("train.batch_size", 64, "train.batch_size: 32 → 64"),
    ("data.num_train_examples", 256, "data.num_train_examples: 512 → 256"),
    ("train.optimizer", "sgd", "train.optimizer: 'adamw' → 'sgd'"),
], ids=["seed", "learning_rate", "model", "batch_size", "num_train_examples", "optimizer"])
def test_a_changed_config_in_an_existing_workdir_is_refused_with_its_fields(recorded_run, name, value, shown):
    assert results.read_json(recorded_run / "run.json")["fields"]["seed"] == 0
    with pytest.raises(workdir_lib.ConfigMismatchError, match="holds a run of another config") as e:
        results.start_run(_classifier_config(**{name: value}), recorded_run, "second run")
    assert shown in str(e.value)
    assert "another --workdir" in str(e.value) and "RKDSC_ALLOW_CONFIG_CHANGE=1" in str(e.value)


def test_a_changed_method_of_a_study_run_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(workdir_lib.ALLOW_ENV, raising=False)
    config = ltosc_fmnist.get_config()
    config.method = "l_tosc"
    results.start_run(config, tmp_path, "l_tosc")
    config.method = "res_tosc"
    with pytest.raises(workdir_lib.ConfigMismatchError, match="method: 'l_tosc' → 'res_tosc'"):
        results.start_run(config, tmp_path, "res_tosc")


@pytest.mark.parametrize("name, value", [
    ("train.log_every", 2), ("train.checkpoint_every", 16), ("train.eval_batch_size", 128),
    ("data.worker_count", 2), ("mesh.num_devices", 2), ("train.keep_checkpoints", 5)],
    ids=["log_every", "checkpoint_every", "eval_batch_size", "worker_count", "num_devices", "keep_checkpoints"])
def test_a_cosmetic_change_is_accepted(recorded_run, name, value):
    before = results.read_json(recorded_run / "run.json")["fingerprint"]
    results.start_run(_classifier_config(**{name: value}), recorded_run, "same run, other intervals")
    assert results.read_json(recorded_run / "run.json")["fingerprint"] == before


def test_a_deliberate_override_continues_under_the_new_config(recorded_run, monkeypatch):
    monkeypatch.setenv(workdir_lib.ALLOW_ENV, "1")
    results.start_run(_classifier_config(seed=7), recorded_run, "continued")
    assert results.read_json(recorded_run / "run.json")["fields"]["seed"] == 7
    monkeypatch.delenv(workdir_lib.ALLOW_ENV)
    results.start_run(_classifier_config(seed=7), recorded_run, "the new record now matches")


def test_a_field_added_to_the_configs_since_is_not_a_difference(recorded_run):
    config = _classifier_config()
    with config.unlocked():
        config.train.some_new_field = 3
    results.start_run(config, recorded_run, "newer code, same run")  # No error.


# --- Pipeline stages ------------------------------------------------------------------------


def _stage(directory, teacher_fingerprint):
    identity = results.run_identity(_classifier_config(), inputs={"teacher": teacher_fingerprint})
    calls = []

    def train_stage():
        calls.append(1)
        results.start_run(_classifier_config(), directory, "stage", identity=identity)
        results.write_json(directory / "summary.json", {"teacher": teacher_fingerprint})
        return {"teacher": teacher_fingerprint}

    return results.run_once(directory, train_stage, identity), calls


def test_a_stage_whose_input_changed_runs_again_and_its_old_directory_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv(workdir_lib.ALLOW_ENV, raising=False)
    stage_dir = tmp_path / "runs" / "stage1" / "seed0"
    assert _stage(stage_dir, "aaa")[1] == [1]
    assert _stage(stage_dir, "aaa") == ({"teacher": "aaa"}, [])  # Control: unchanged, skipped.
    summary, calls = _stage(stage_dir, "bbb")  # The teacher was fine-tuned again.
    assert calls == [1] and summary == {"teacher": "bbb"}
    moved = [p for p in os.listdir(stage_dir.parent) if p.startswith("seed0.superseded-")]
    assert len(moved) == 1
    assert json.loads((stage_dir.parent / moved[0] / "summary.json").read_text()) == {"teacher": "aaa"}


def test_a_changed_stage_is_kept_with_the_override(tmp_path, monkeypatch):
    stage_dir = tmp_path / "stage"
    _stage(stage_dir, "aaa")
    monkeypatch.setenv(workdir_lib.ALLOW_ENV, "1")
    assert _stage(stage_dir, "bbb") == ({"teacher": "aaa"}, [])


# --- The workdir lock ----------------------------------------------------------------------


def _lock_file(workdir, pid, host=None):
    workdir.mkdir(parents=True, exist_ok=True)
    import socket

    (workdir / "run.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                  "since": "2026-12-02T10:00:00"}))


def test_a_second_run_on_a_busy_workdir_is_refused_with_the_holders_pid(tmp_path):
    holder = os.getppid()  # A live process that is not this one.
    _lock_file(tmp_path, holder)
    with pytest.raises(workdir_lib.WorkdirLockedError, match=f"in use by another run: pid {holder} on host "):
        results.start_run(_classifier_config(), tmp_path, "second run")


def test_a_lock_held_on_another_host_is_refused(tmp_path):
    _lock_file(tmp_path, 12345, host="other-machine")
    with pytest.raises(workdir_lib.WorkdirLockedError, match="pid 12345 on host other-machine"):
        with workdir_lib.WorkdirLock(tmp_path):
            pass


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock_file(tmp_path, dead.pid)
    with workdir_lib.WorkdirLock(tmp_path):
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run.lock").exists()  # Released.


def test_the_lock_is_reentrant_in_one_process_and_released(tmp_path):
    with workdir_lib.WorkdirLock(tmp_path):
        with workdir_lib.WorkdirLock(tmp_path):  # A pipeline locks its root, then fit a stage.
            pass
        assert (tmp_path / "run.lock").exists()
    assert not (tmp_path / "run.lock").exists()


# --- Training guards -------------------------------------------------------------------------


class _Iterator:
    """A checkpointable iterator of constant batches."""

    def __init__(self):
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.position += 1
        return {"image": np.full((8, 1), self.position, np.float32), "label": np.zeros(8, np.int32)}

    def get_state(self):
        return json.dumps(self.position).encode()

    def set_state(self, state):
        self.position = json.loads(state)


def _linear_state(tx):
    return train.TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=tx, rng=jax.random.PRNGKey(0))


def _poisoned_step(bad_steps, metric="loss"):
    """A least-squares step whose gradient (and loss) is NaN, or whose grad_norm is inf, at ``bad_steps``."""
    bad_steps = jnp.asarray(bad_steps)

    def step(state, batch):
        def loss_fn(w):
            x = batch["image"][:, 0]
            poison = jnp.where(jnp.isin(state.step + 1, bad_steps), jnp.nan if metric == "loss" else 1.0, 1.0)
            return jnp.mean((w["w"][0] * x - 1.0) ** 2) * poison

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        norm = optax.tree.norm(grads)
        if metric == "grad_norm":
            norm = jnp.where(jnp.isin(state.step + 1, bad_steps), jnp.inf, norm)
        return state.apply_gradients(grads=grads), {"loss": loss, "grad_norm": norm}

    return jax.jit(step)


def _fit(workdir, step, tx=optax.sgd(1e-3), num_steps=12, **loop):
    loop = dict(num_steps=num_steps, batch_size=8, log_every=4, checkpoint_every=4) | loop
    mesh = train.make_mesh(1)
    return train.fit(state=_linear_state(tx), train_step=step, train_iter=_Iterator(), mesh=mesh,
                     workdir=str(workdir), config=train.LoopConfig(**loop))


@pytest.mark.parametrize("metric", ["loss", "grad_norm"])
def test_a_non_finite_metric_stops_the_run_naming_the_step_and_the_last_good_checkpoint(tmp_path, metric):
    with pytest.raises(train.NonFiniteError,
                       match=rf"stopped at step 6: {metric} is (nan|inf); no checkpoint of the non-finite state was "
                             r"written and the last good checkpoint is step 4"):
        _fit(tmp_path, _poisoned_step([6], metric))
    assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [4]
    rows = train.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [4] and all(np.isfinite(v) for k, v in rows[0].items() if k != "split")


def test_a_nan_before_the_first_checkpoint_says_there_is_none(tmp_path):
    with pytest.raises(train.NonFiniteError, match="stopped at step 2: loss is nan.*no checkpoint was written yet"):
        _fit(tmp_path, _poisoned_step([2]))
    assert not [p for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()]


def test_skip_and_count_skips_non_finite_steps_and_reports_them(tmp_path):
    tx = train.make_optimizer(ml_collections.ConfigDict(dict(
        optimizer="sgd", learning_rate=1e-3, warmup_steps=0, weight_decay=0.0, momentum=0.0,
        skip_nonfinite=True)), 12)
    state, summary = _fit(tmp_path, _poisoned_step([3, 6, 7]), tx=tx, skip_nonfinite=True)
    assert summary["nonfinite_steps"] == 3
    assert np.all(np.isfinite(np.asarray(state.params["w"])))
    rows = train.read_metrics(tmp_path / "metrics.jsonl", "train")
    assert [r["nonfinite_steps"] for r in rows] == [1, 3, 3]
    assert all(np.isfinite(r["loss"]) for r in rows)  # The skipped steps are left out of the means.


def test_skip_and_count_gives_up_after_too_many_in_a_row(tmp_path):
    tx = optax.apply_if_finite(optax.sgd(1e-3), 2**30)
    with pytest.raises(train.NonFiniteError, match="for 3 steps in a row"):
        _fit(tmp_path, _poisoned_step([5, 6, 7, 8]), tx=tx, skip_nonfinite=True, max_nonfinite_in_a_row=3)


def test_skip_and_count_needs_an_optimizer_that_skips(tmp_path):
    with pytest.raises(ValueError, match="skip_nonfinite needs an optimizer wrapped in optax.apply_if_finite"):
        _fit(tmp_path, _poisoned_step([]), skip_nonfinite=True)


def test_fit_refuses_a_busy_workdir(tmp_path):
    _lock_file(tmp_path, os.getppid())
    with pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {os.getppid()}"):
        _fit(tmp_path, _poisoned_step([]))
    assert not (tmp_path / "metrics.jsonl").exists()  # No rows from a second writer.


@pytest.mark.parametrize("field, value", [
    ("num_steps", 0), ("num_steps", -5), ("batch_size", 0), ("batch_size", -32), ("log_every", 0),
    ("checkpoint_every", 0), ("num_steps", 2.5), ("eval_every", 0)],
    ids=["steps_0", "steps_negative", "batch_0", "batch_negative", "log_every_0", "checkpoint_every_0",
         "steps_fraction", "eval_every_0"])
def test_loop_config_refuses_impossible_sizes(field, value):
    kwargs = dict(num_steps=8, batch_size=8, log_every=4, checkpoint_every=4) | {field: value}
    with pytest.raises(ValueError, match=rf"LoopConfig\.{field} must be (None or )?an integer >= 1, got "):
        train.LoopConfig(**kwargs)


@pytest.mark.parametrize("field, value", [
    ("learning_rate", float("nan")), ("learning_rate", float("inf")), ("learning_rate", -1e-3),
    ("weight_decay", float("nan")), ("warmup_steps", -1)],
    ids=["lr_nan", "lr_inf", "lr_negative", "weight_decay_nan", "warmup_negative"])
def test_make_optimizer_refuses_non_finite_or_negative_rates(field, value):
    config = dict(optimizer="adamw", learning_rate=1e-3, warmup_steps=0, weight_decay=0.0) | {field: value}
    with pytest.raises(ValueError, match=rf"{field} must be a (finite number|whole number) >= 0, got "):
        train.make_optimizer(ml_collections.ConfigDict(config), 10)


@pytest.mark.parametrize("args, message", [
    (dict(num_examples=100, batch_size=8, num_steps=0), "num_steps must be a whole number >= 1"),
    (dict(num_examples=100, batch_size=8, num_epochs=0.0), "num_epochs must be a finite number > 0"),
    (dict(num_examples=100, batch_size=8, num_epochs=float("nan")), "num_epochs must be a finite number > 0"),
    (dict(num_examples=0, batch_size=8, num_epochs=1.0), "The training set has 0 examples"),
    (dict(num_examples=100, batch_size=0, num_epochs=1.0), "batch_size must be >= 1, got 0"),
], ids=["num_steps_0", "epochs_0", "epochs_nan", "no_examples", "batch_0"])
def test_steps_from_epochs_refuses_impossible_lengths(args, message):
    with pytest.raises(ValueError, match=message):
        train.steps_from_epochs(**args)


def test_valid_loop_settings_pass():
    assert train.steps_from_epochs(100, 8, num_steps=3) == 3
    train.LoopConfig(num_steps=1, batch_size=1, log_every=1, checkpoint_every=1)


# --- Tuple fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ("0,1,2", r"config.pipeline.seeds must be a tuple, got '0,1,2'"),
    (3, r"config.pipeline.seeds must be a tuple, got 3"),
    ((0, "1"), r"config.pipeline.seeds must hold int values, got '1'"),
], ids=["string", "scalar", "string_inside"])
def test_a_tuple_field_given_as_a_string_is_refused(value, message):
    config = ml_collections.ConfigDict({"pipeline": {"seeds": value}})
    with pytest.raises(ValueError, match=message):
        inputs.tuple_field(config, "pipeline.seeds", int)


def test_a_tuple_field_as_ml_collections_parses_it_is_accepted():
    config = ml_collections.ConfigDict({"pipeline": {"seeds": (0, 1, 2)}, "eval": {"snrs_db": (-10, 0.5)}})
    assert inputs.tuple_field(config, "pipeline.seeds", int) == (0, 1, 2)
    assert inputs.tuple_field(config, "eval.snrs_db", (int, float)) == (-10, 0.5)


# --- Export from the run's own config -----------------------------------------------------------


def test_the_export_rebuilds_the_system_from_the_runs_recorded_config(tmp_path):
    trained = ltosc_fmnist.get_config()
    trained.model.num_symbols = 4
    trained.mesh.num_devices = 1
    (tmp_path / "config.json").write_text(trained.to_json_best_effort())
    now = ltosc_fmnist.get_config()
    now.model.num_symbols = 32  # Today's flags differ from the run's.
    now.mesh.num_devices = 2
    rebuilt = export_lib.run_config(now, tmp_path)
    assert rebuilt.model.num_symbols == 4  # The run's own system...
    assert rebuilt.mesh.num_devices == 2  # ...on this machine's devices.
    assert rebuilt.eval.snrs_db == tuple(trained.eval.snrs_db)  # Tuples stay tuples.


def test_an_export_of_a_run_without_its_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json, so its system cannot be rebuilt"):
        export_lib.run_config(ltosc_fmnist.get_config(), tmp_path)


# --- A logit store for another teacher or number of classes -------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Stores of teacher 'big' on 16 synthetic examples: 1000 classes and 10 classes."""
    from rkdsc_jax.distill import logit_store

    source = data.synthetic("train", 16, image_shape=(8, 8, 1))
    found = {}
    for classes in (1000, 10):
        directory = tmp_path_factory.mktemp(f"store{classes}")
        logits = lambda images, c=classes: jnp.zeros((images.shape[0], c)).at[:, c - 1].set(5.0)  # noqa: E731
        logit_store.precompute_logits(logits, source, directory, num_epochs=1, top_k=3, seed=0, batch_size=8,
                                      teacher_identity={"name": "big", "params_sha256": "x"},
                                      augment_config=data.AugmentConfig("none"))
        found[classes] = directory
    return found, source


class _Teacher:
    def __init__(self, name):
        self.name = name

    def identity(self):
        return {"name": self.name, "params_sha256": "x"}


@pytest.mark.parametrize("classes, teacher, message", [
    (1000, "big", "1000.classes.*10 classes"),
    (10, "other", "was computed for teacher name='big'"),
    (10, "big", None),
], ids=["1000_classes_for_10", "another_teacher", "valid"])
def test_the_training_path_refuses_a_store_of_another_teacher_or_class_count(stores, monkeypatch, classes, teacher,
                                                                           message):
    from experiments.common import teacher as teacher_lib
    from experiments.common.layout import RunLayout
    from experiments.ltosc import methods

    directories, source = stores
    monkeypatch.setattr(teacher_lib, "load_teacher", lambda *a, **k: _Teacher(teacher))
    config = ltosc_fmnist.get_config()
    config.store.top_k = 3
    layout = RunLayout(directories[classes].parent, store_dir=directories[classes])
    if message is None:
        assert methods.open_store(config, layout, source, ()).num_classes == 10
        return
    with pytest.raises(ValueError, match=message):
        methods.open_store(config, layout, source, ())


# --- Plumbing --------------------------------------------------------------------------------------


def test_finetune_writes_the_teacher_where_every_reader_looks(tmp_path, monkeypatch):
    """finetune_teacher once wrote W/teacher while load_teacher read W/teacher/teacher."""
    from experiments.common import teacher as teacher_lib
    from experiments.common.layout import RunLayout

    written = {}
    import types

    stub = types.SimpleNamespace(name="stub", preprocess=types.SimpleNamespace(image_size=8))
    monkeypatch.setattr(teacher_lib, "pretrained_teacher", lambda config, names=(): stub)
    monkeypatch.setattr(teacher_lib, "finetune_teacher", lambda teacher, it, **kw: written.update(kw) or _Teacher("tuned"))
    monkeypatch.setattr(teacher_lib, "evaluate_teacher", lambda *a: {"accuracy": 1.0, "count": 1})
    monkeypatch.setattr(teacher_lib.teachers, "load_finetuned_teacher", lambda t, path: written.update(read=path))
    config = ltosc_fmnist.get_config()
    config.data.name, config.data.augment, config.teacher.finetune.num_steps = "synthetic", "none", 1
    with config.unlocked():
        config.teacher.finetune.batch_size = 8
    teacher_lib.finetune(config, str(tmp_path))
    layout = RunLayout.from_config(config, tmp_path)
    assert written["save_to"] == layout.teacher == tmp_path / "teacher" / "teacher"
    assert written["workdir"] == layout.teacher_run
    (layout.teacher).mkdir(parents=True)
    (layout.teacher / "teacher.json").write_text("{}")
    monkeypatch.setattr(teacher_lib, "pretrained_teacher", lambda config, names=(): "pretrained")
    teacher_lib.load_teacher(config, (), layout)
    assert written["read"] == written["save_to"]


@pytest.mark.parametrize("subset", ["first", "random"])
@pytest.mark.parametrize("num_examples", [0, -5], ids=["zero", "negative"])
def test_a_training_set_of_no_examples_is_refused(subset, num_examples):
    config = ltosc_fmnist.get_config()
    config.data.name, config.data.subset, config.data.num_train_examples = "synthetic", subset, num_examples
    message = r"data.num_train_examples must be a whole number >= 1|num_examples=-?\d+: .* ask for an int"
    with pytest.raises(ValueError, match=message):
        inputs.train_source(config)


def test_adding_seeds_or_methods_to_a_pipeline_keeps_its_finished_stages():
    from experiments.common.layout import RunLayout
    from experiments.configs import rkdsc_fmnist
    from experiments.rkdsc import stages

    config = rkdsc_fmnist.get_config()
    layout = RunLayout.from_config(config, "/tmp/unused")
    before = stages.run_identity(stages.seed_config(config, 0), layout, "rkdsc")
    config.pipeline.seeds, config.pipeline.methods = (0, 1, 2), ("stage1", "rkdsc")
    config.export.latency_repeats = 3
    assert stages.run_identity(stages.seed_config(config, 0), layout, "rkdsc") == before
    config.stage2.learning_rate = 0.5  # Control: stage 2's own field changes stage 2 ...
    assert stages.run_identity(stages.seed_config(config, 0), layout, "rkdsc") != before
    assert stages.run_identity(stages.seed_config(config, 0), layout, "stage1")["fields"] == stages.run_identity(
        stages.seed_config(rkdsc_fmnist.get_config(), 0), layout, "stage1")["fields"]  # ... not stage 1.


@pytest.mark.parametrize("field, value, message", [
    ("objective.channels", "awgn,rayleigh", r"config.objective.channels must be a tuple, got 'awgn,rayleigh'"),
    ("objective.snr_range", "-5,15", r"config.objective.snr_range must be a tuple, got '-5,15'"),
], ids=["channels_string", "snr_range_string"])
def test_the_objective_refuses_tuple_fields_given_as_strings(field, value, message):
    from experiments.ltosc import methods

    plain = ltosc_fmnist.get_config().to_dict()
    section, key = field.split(".")
    plain[section][key] = value  # What a config built from a dict (a notebook, a JSON file) can hold.
    config = ml_collections.ConfigDict(plain)
    config.method = "l_tosc"
    with pytest.raises(ValueError, match=message):
        methods.build_objective(config, 10)


def test_a_measurement_of_another_config_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.delenv(workdir_lib.ALLOW_ENV, raising=False)
    path = tmp_path / "latency.json"
    old = results.run_identity(_classifier_config())
    results.write_with_identity(path, {"ms": 1.0}, old)
    assert results.current_json(path, old)["ms"] == 1.0  # Control: same config, kept.
    assert results.current_json(path, results.run_identity(_classifier_config(**{"model.name": "resnet"}))) is None
    results.write_json(path, {"ms": 2.0})  # Written before identities: kept.
    assert results.current_json(path, old)["ms"] == 2.0
