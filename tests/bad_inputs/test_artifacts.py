"""Damaged or mismatched artifacts (checkpoints, exports, JSON results): each is refused with
a message naming the file and the fix, or, for a checkpoint, fallen back from to the newest
intact step, never loaded as valid."""

import logging
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rkdsc_jax import data, deploy, files, train
from rkdsc_jax.train import checkpoint as ckpt
from rkdsc_jax.train import metrics as metrics_lib

STEPS = (8, 16, 24)


def _state(step=0, width=64):
    """A train state whose kernel (64x64 float32, 16 kB of noise) dominates the checkpoint."""
    rng = np.random.default_rng(step)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(width, 64)), jnp.float32),
                        "bias": jnp.full((64,), float(step))}}
    state = train.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1), rng=jax.random.PRNGKey(0))
    return state.replace(step=step)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved") / "checkpoints"
    checkpointer = train.Checkpointer(str(directory), async_save=False)
    for step in STEPS:
        checkpointer.save(step, _state(step))
    checkpointer.close()
    return directory


@pytest.fixture
def checkpoints(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


def _largest_array_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(path, at=0.5, count=8):
    data_ = bytearray(path.read_bytes())
    i = int(len(data_) * at)
    for k in range(count):
        data_[i + k] ^= 0xFF
    path.write_bytes(bytes(data_))


def _damage(kind, step_dir):
    target = _largest_array_file(step_dir)
    if kind == "flipped_bytes_middle":
        _flip(target, 0.5)
    elif kind == "flipped_bytes_start":
        _flip(target, 0.0, 4)
    elif kind == "truncated_file":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif kind == "deleted_file":
        target.unlink()
    elif kind == "zeroed_file":
        target.write_bytes(bytes(target.stat().st_size))
    elif kind == "garbled_sidecar":
        (step_dir / ckpt.SIDECAR).write_text('{"files": ')
    elif kind == "no_step_metadata":
        (step_dir / "_CHECKPOINT_METADATA").unlink()
    elif kind == "deleted_metadata_file":
        (step_dir / "state" / "_METADATA").unlink()
    else:
        raise AssertionError(kind)


def test_the_flip_really_damages_array_data(checkpoints):
    """Control for the cases below: without checksums the flipped step restores as valid but
    wrong, which is what the old Checkpointer did."""
    _flip(_largest_array_file(checkpoints / "24"))
    restored = train.Checkpointer(str(checkpoints), verify=False).restore(_state(), step=24)
    assert not np.array_equal(restored.params["dense"]["kernel"], _state(24).params["dense"]["kernel"])


DAMAGE = ["flipped_bytes_middle", "flipped_bytes_start", "truncated_file", "deleted_file", "zeroed_file",
          "garbled_sidecar", "no_step_metadata", "deleted_metadata_file"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_step_is_moved_aside_and_the_newest_intact_one_restores(checkpoints, caplog, kind):
    _damage(kind, checkpoints / "24")
    checkpointer = train.Checkpointer(str(checkpoints))
    with caplog.at_level(logging.WARNING):
        assert checkpointer.latest_step() == 16
    warning = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warning) == 1 and "step 24" in warning[0] and "falling back to step 16" in warning[0]
    assert "\n" not in warning[0]
    restored = checkpointer.restore(_state())
    chex.assert_trees_all_equal(restored.params, _state(16).params)
    assert sorted(os.listdir(checkpoints)) == ["16", "24.damaged", "8"]  # Kept for inspection.
    checkpointer.save(24, _state(24))  # The run can write step 24 again.
    checkpointer.wait()
    assert checkpointer.check_step(24) == ("ok", "checksums match")
    checkpointer.close()


def test_every_step_damaged_is_an_error_naming_the_directory(checkpoints):
    for step in STEPS:
        _flip(_largest_array_file(checkpoints / str(step)))
    with pytest.raises(ckpt.CheckpointDamagedError,
                       match=rf"Every checkpoint in {checkpoints} is damaged \(step 24: file state/.* does not match "
                             rf"its recorded SHA-256; step 16.*Delete {checkpoints} to start this run from scratch"):
        train.Checkpointer(str(checkpoints)).latest_step()
    assert sorted(os.listdir(checkpoints)) == ["16", "24", "8"]  # Nothing moved: the user decides.


def test_asking_for_a_damaged_step_is_an_error(checkpoints):
    _flip(_largest_array_file(checkpoints / "16"))
    with pytest.raises(ckpt.CheckpointDamagedError, match=r"Checkpoint step 16 in .* is damaged \(file state/"):
        train.Checkpointer(str(checkpoints)).restore(_state(), step=16)


def test_restore_variables_refuses_a_damaged_final_step_instead_of_exporting_an_older_one(checkpoints):
    _flip(_largest_array_file(checkpoints / "24"))
    with pytest.raises(ckpt.CheckpointDamagedError,
                       match=r"newest checkpoint, step 24 in .* is damaged .*resumes from step 16\), or pass step=16"):
        train.Checkpointer(str(checkpoints)).restore_variables()
    variables = train.Checkpointer(str(checkpoints)).restore_variables(step=16)
    chex.assert_trees_all_equal(variables["params"], _state(16).params)


def test_stray_empty_step_directory_does_not_block_resume(checkpoints, caplog):
    (checkpoints / "32").mkdir()
    checkpointer = train.Checkpointer(str(checkpoints))
    with caplog.at_level(logging.WARNING):
        assert checkpointer.latest_step() == 24
    assert any("Ignoring checkpoint directory" in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)
    assert not (checkpoints / "32").exists()
    checkpointer.save(32, _state(32))  # The run can write that step.
    checkpointer.close()
    assert train.Checkpointer(str(checkpoints)).latest_step() == 32


def test_step_without_checksums_is_used_with_a_warning(checkpoints, caplog):
    """A step from before checksums (or whose recording failed) has Orbax's commit marker:
    complete, only unverified."""
    (checkpoints / "24" / ckpt.SIDECAR).unlink()
    with caplog.at_level(logging.WARNING):
        restored = train.Checkpointer(str(checkpoints)).restore(_state())
    assert any("step 24" in r.getMessage() and "using it unverified" in r.getMessage() for r in caplog.records)
    chex.assert_trees_all_equal(restored.params, _state(24).params)


def test_unreadable_unverified_step_is_one_clear_error_not_an_orbax_traceback(checkpoints):
    (checkpoints / "24" / ckpt.SIDECAR).unlink()
    (checkpoints / "24" / "state" / "_METADATA").write_text("{not json")
    with pytest.raises(ckpt.CheckpointRestoreError,
                       match=r"Could not read the metadata of checkpoint step 24 in .*delete that step directory"):
        train.Checkpointer(str(checkpoints)).restore(_state())


def test_leftovers_of_killed_writes_are_removed_when_a_checkpointer_opens(checkpoints):
    (checkpoints / "32.orbax-checkpoint-tmp-1764000000").mkdir()
    (checkpoints / "32.orbax-checkpoint-tmp-1764000000" / "junk").write_text("x")
    (checkpoints / f".notes.json.{'a' * 32}.tmp").write_text("{")
    (checkpoints / "keep.tmp").write_text("not ours")
    train.Checkpointer(str(checkpoints), read_only=True).latest_step()  # Reading alone removes nothing.
    assert len(os.listdir(checkpoints)) == 6
    checkpointer = train.Checkpointer(str(checkpoints))
    checkpointer.wait()
    assert sorted(os.listdir(checkpoints)) == ["16", "24", "8", "keep.tmp"]
    assert checkpointer.latest_step() == 24


MISMATCH = [
    ("wider_kernel", lambda s: s.replace(params={**s.params, "dense": {**s.params["dense"],
                                                                      "kernel": jnp.zeros((32, 64))}}),
     r"params/dense/kernel has shape \(64, 64\) in the checkpoint but \(32, 64\) in the model"),
    ("extra_layer", lambda s: s.replace(params={**s.params, "head": {"kernel": jnp.zeros((64, 10))}}),
     r"params/head/kernel \(shape \(64, 10\)\) is in the model but not in the checkpoint"),
    ("missing_bias", lambda s: s.replace(params={"dense": {"kernel": s.params["dense"]["kernel"]}}),
     r"params/dense/bias \(shape \(64,\)\) is in the checkpoint but not in the model"),
]


@pytest.mark.parametrize("change, message", [m[1:] for m in MISMATCH], ids=[m[0] for m in MISMATCH])
def test_restoring_into_another_model_names_the_first_mismatching_parameter(checkpoints, change, message):
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"Checkpoint step 24 in .* does not fit this model: "
                       + message + r".*use a new workdir"):
        train.Checkpointer(str(checkpoints)).restore(change(_state()))


# -- a damaged checkpoint inside train.fit: resume from the intact step, end bit-identical.

def _fit(workdir, num_steps=12):
    source = data.synthetic("train", 64, image_shape=(4, 4, 1), seed=0)
    iterator = data.train_iterator(source, batch_size=8, num_steps=num_steps, seed=0)
    state = train.TrainState.create(apply_fn=None, params={"w": jnp.zeros((16, 10))}, tx=optax.sgd(0.5),
                                    rng=jax.random.PRNGKey(0))

    def loss_fn(params, batch):
        logits = batch["image"].reshape(batch["image"].shape[0], -1) @ params["w"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    @jax.jit
    def step(state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    config = train.LoopConfig(num_steps=num_steps, batch_size=8, log_every=4, checkpoint_every=4)
    return train.fit(state=state, train_step=step, train_iter=iterator, mesh=train.make_mesh(1),
                     workdir=str(workdir), config=config)


def test_fit_resumes_from_the_newest_intact_checkpoint_and_ends_identical(tmp_path):
    state_a, _ = _fit(tmp_path / "a")
    _fit(tmp_path / "b")
    step_12 = tmp_path / "b" / "checkpoints" / "12"
    _flip(max((p for p in step_12.rglob("*") if p.is_file() and "ocdbt" in str(p)), key=lambda p: p.stat().st_size))
    state_b, summary = _fit(tmp_path / "b")
    assert summary["resumed_from_step"] == 8
    chex.assert_trees_all_equal(state_a.params, state_b.params)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_second"} for r in rows]  # noqa: E731
    assert strip(metrics_lib.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))) == strip(
        metrics_lib.read_metrics(str(tmp_path / "b" / "metrics.jsonl")))


# -- exports ------------------------------------------------------------------------------

def _spec():
    return deploy.SystemSpec(
        kind="tosc", encoder="cnn", encoder_kwargs={"features": (4, 8), "convs_per_stage": 1},
        system_kwargs=dict(num_classes=5, num_symbols=6, channel_adaptive=True, decoder_hidden=16,
                           input_mean=(0.3,), input_std=(0.4,)),
        input_shape=(28, 28, 1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    spec = _spec()
    model = spec.build()
    shapes = jax.eval_shape(lambda k, x: model.init(k, x, 0.0, lambda y: y), jax.random.PRNGKey(0),
                            jnp.zeros((1, 28, 28, 1)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes)
    directory = tmp_path_factory.mktemp("export") / "e"
    deploy.export(str(directory), spec, variables, metadata={"accuracy": 0.5},
                  run_config={"seed": 3, "train": {"learning_rate": 0.01}})
    return directory


@pytest.fixture
def export_copy(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "e")
    return tmp_path / "e"


def _largest(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _edit_spec(directory, old, new):
    path = directory / "spec.json"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


EXPORT_DAMAGE = [
    ("transmitter_flipped", lambda d: _flip(_largest(d / "transmitter")), deploy.load_transmitter,
     deploy.DamagedExportError, r"The transmitter of the export in .* is damaged or incomplete \(file .* does not "
     r"match its recorded SHA-256\); export it again"),
    ("receiver_flipped", lambda d: _flip(_largest(d / "receiver")), deploy.load_receiver,
     deploy.DamagedExportError, r"The receiver of the export .* is damaged"),
    ("receiver_file_deleted", lambda d: _largest(d / "receiver").unlink(), deploy.load_receiver,
     deploy.DamagedExportError, r"file .* is missing\); export it again"),
    ("transmitter_dir_missing", lambda d: shutil.rmtree(d / "transmitter"), deploy.load_transmitter,
     FileNotFoundError, r"transmitter is missing: the export in .* is incomplete; export it again"),
    ("spec_truncated", lambda d: (d / "spec.json").write_text((d / "spec.json").read_text()[:100]),
     deploy.load_receiver, deploy.DamagedExportError, r"spec.json is not valid JSON .*export it again"),
    ("spec_edited_num_classes", lambda d: _edit_spec(d, '"num_classes": 5', '"num_classes": 6'),
     deploy.load_receiver, deploy.DamagedExportError, r"spec.json does not match the SHA-256 recorded"),
    ("spec_empty", lambda d: (d / "spec.json").write_text(""), deploy.read_spec, deploy.DamagedExportError,
     r"spec.json is empty"),
    ("spec_other_format", lambda d: files.atomic_write_json(d / "spec.json", {"format": "other/2"}),
     deploy.read_spec, ValueError, r"has format 'other/2'; this rkdsc_jax reads 'rkdsc_jax.deploy/1'"),
]


@pytest.mark.parametrize("damage, load, error, message", [c[1:] for c in EXPORT_DAMAGE],
                         ids=[c[0] for c in EXPORT_DAMAGE])
def test_damaged_export_refuses_to_load(export_copy, damage, load, error, message):
    damage(export_copy)
    with pytest.raises(error, match=message):
        load(str(export_copy))


def test_each_half_is_verified_on_its_own(export_copy):
    """A device ships without the receiver: its transmitter still loads, and the other way round."""
    shutil.rmtree(export_copy / "receiver")
    assert deploy.load_transmitter(str(export_copy)).num_params() > 0


def test_export_carries_the_run_config_and_its_checksums(exported):
    spec = deploy.read_spec(str(exported))
    assert spec["run_config"] == {"seed": 3, "train": {"learning_rate": 0.01}}
    assert spec["metadata"] == {"accuracy": 0.5}
    assert set(spec["checksums"]) == {"transmitter", "receiver"} and files.CHECKSUM_KEY not in spec
    assert all(len(h) == 64 for h in spec["checksums"]["transmitter"].values())


@pytest.mark.parametrize("name, value, message", [
    ("metadata", ["not", "a", "dict"], r"metadata must be a dict \(JSON-able\) or None, got list"),
    ("run_config", "config.json", r"run_config must be a dict \(JSON-able\) or None, got str"),
], ids=["metadata_list", "run_config_path"])
def test_export_refuses_non_dict_metadata(tmp_path, name, value, message):
    with pytest.raises(TypeError, match=message):
        deploy.export(str(tmp_path / "e"), _spec(), {"params": {}}, **{name: value})


def test_export_removes_leftovers_of_killed_exports(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "e")
    for leftover in ("e.partial-999999", "e.previous-999999"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "junk").write_text("x")
    loaded = deploy.load_transmitter(str(tmp_path / "e")).variables
    receiver = deploy.load_receiver(str(tmp_path / "e")).variables
    both = {c: {**loaded.get(c, {}), **receiver.get(c, {})} for c in ("params", "batch_stats")}
    deploy.export(str(tmp_path / "e"), _spec(), both, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["e"]
    assert deploy.read_spec(str(tmp_path / "e"))["run_config"] is None


# -- JSON results (a stage's summary.json marks it finished) -------------------------------

JSON_DAMAGE = [
    ("truncated", lambda p: p.write_text(p.read_text()[:15]), r"is not valid JSON \(.* at line \d+, column \d+\): it "
     r"was truncated or damaged\. Delete it to have it written again"),
    ("empty", lambda p: p.write_text(""), r"summary.json is empty: it was truncated or damaged"),
    ("binary_garbage", lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), r"summary.json is not UTF-8 text"),
    ("digit_changed", lambda p: p.write_text(p.read_text().replace("0.875", "0.975")),
     r"summary.json does not match the SHA-256 recorded when it was written"),
]


@pytest.mark.parametrize("damage, message", [c[1:] for c in JSON_DAMAGE], ids=[c[0] for c in JSON_DAMAGE])
def test_damaged_summary_json_is_an_error_not_a_crash_or_a_finished_stage(tmp_path, damage, message):
    path = tmp_path / "summary.json"
    files.atomic_write_json(path, {"eval": {"accuracy": 0.875}, "steps": 12}, checksum=True)
    assert files.read_json(path) == {"eval": {"accuracy": 0.875}, "steps": 12}  # Valid control.
    damage(path)
    with pytest.raises(files.DamagedFileError, match=message):
        files.read_json(path)


def test_read_json_controls(tmp_path):
    assert files.read_json(tmp_path / "missing.json") is None
    files.atomic_write_json(tmp_path / "plain.json", [1, 2.5, None])  # No checksum: read as before.
    assert files.read_json(tmp_path / "plain.json") == [1, 2.5, None]
    with pytest.raises(TypeError, match="checksum=True needs a dict"):
        files.atomic_write_json(tmp_path / "list.json", [1], checksum=True)


def test_remove_temporaries_removes_only_atomic_write_leftovers(tmp_path):
    names = [f".summary.json.{'0123456789abcdef' * 2}.tmp", "summary.json", "data.tmp", ".hidden.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    assert files.remove_temporaries(tmp_path) == [names[0]]
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])
