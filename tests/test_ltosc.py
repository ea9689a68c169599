"""Paper B's TOSC system, its steps and the study pipeline (on synthetic data, tiny teacher)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import ltosc
from experiments.configs import ltosc_fmnist
from rkdsc_jax import channels, data, train
from rkdsc_jax.distill import tosc_steps
from rkdsc_jax.models import tosc


def test_objective_rejects_bad_settings():
    with pytest.raises(ValueError, match="targets='store' or 'online'"):
        tosc_steps.Objective(loss="ib", targets="labels")
    with pytest.raises(ValueError, match="channels"):
        tosc_steps.Objective(channels=("awgn", "rician"))
    with pytest.raises(ValueError, match="snr_range"):
        tosc_steps.Objective(snr_range=(10.0, -5.0))
    with pytest.raises(ValueError, match="top_k"):
        tosc_steps.Objective(top_k=11, num_classes=10)


def test_mixed_channel_picks_each_examples_channel():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 8))
    snr = jnp.linspace(-5.0, 15.0, 6)
    use_rayleigh = jnp.array([True, False, True, False, False, True])
    mixed = tosc_steps.mixed_channel(key, x, snr, use_rayleigh, csi="perfect", equalizer="zf")
    awgn_key, rayleigh_key = jax.random.split(key)
    awgn = channels.transmit(awgn_key, x, snr, kind="awgn")
    rayleigh = channels.transmit(rayleigh_key, x, snr, kind="rayleigh", csi="perfect", equalizer="zf")
    np.testing.assert_allclose(mixed, np.where(np.asarray(use_rayleigh)[:, None], rayleigh, awgn))


def test_topk_distribution_matches_the_stores_smoothing():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.2, 0.1]]))
    smoothed = tosc_steps.topk_distribution(logits, top_k=2, temperature=1.0)
    # Top-2 = 0.5 and one of the 0.2s; the remaining 0.3 is spread over the other two classes.
    assert np.isclose(float(smoothed.sum()), 1.0)
    assert np.isclose(float(smoothed[0, 0]), 0.5)
    np.testing.assert_allclose(np.sort(np.asarray(smoothed[0, 1:])), [0.15, 0.15, 0.2], atol=1e-6)


def _tiny_model(num_symbols=4):
    encoder = tosc.make_encoder("tinyvit", dims=(16, 32), depths=(1, 1), num_heads=(1, 2), windows=(7, 4))
    return tosc.TOSC(encoder, num_classes=4, num_symbols=num_symbols, decoder_hidden=32)


def test_tosc_sends_the_configured_number_of_symbols_and_normalises_inputs():
    model = _tiny_model(num_symbols=5)
    images = jnp.full((2, 28, 28, 1), 0.5)
    variables = jax.jit(lambda im: model.init(jax.random.PRNGKey(0), im, 0.0, lambda x: x))(images)
    sent = []
    logits, (x, mu, sigma) = jax.jit(lambda v, im: model.apply(v, im, 3.0, lambda x: sent.append(x.shape) or x))(
        variables, images)
    assert sent == [(2, 10)] and logits.shape == (2, 4)
    np.testing.assert_array_equal(x, mu)  # Deterministic unless sampling.
    shifted = tosc.TOSC(model.encoder, 4, 5, decoder_hidden=32, input_mean=(0.5,), input_std=(2.0,))
    # (0.5 − 0.5)/2 = 0 equals a zero image under the identity normalisation.
    a = jax.jit(lambda v, im: shifted.apply(v, im, 3.0, lambda x: x)[0])(variables, images)
    b = jax.jit(lambda v, im: model.apply(v, im, 3.0, lambda x: x)[0])(variables, jnp.zeros_like(images))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_train_step_learns_from_labels_and_from_teacher_probabilities():
    source = data.synthetic("train", 128, num_classes=4, seed=5)
    model = _tiny_model()
    for targets in ("labels", "online"):
        objective = tosc_steps.Objective(loss="ce" if targets == "labels" else "kd", targets=targets, num_classes=4,
                                         snr_range=(10.0, 20.0), top_k=2)
        tx = optax.adam(3e-3)
        state = train.create_train_state(model, tx, jnp.zeros((1, 28, 28, 1)), 0, snr_db=0.0,
                                         channel_fn=lambda x: x)
        # A perfect "teacher": the one-hot label as logits (scaled), to check the plumbing.
        oracle = lambda variables, images: variables["table"][images[:, 0, 0, 0].astype(jnp.int32)]  # noqa: E731
        step = jax.jit(lambda s, b, v: tosc_steps.train_step(s, b, v, objective=objective,
                                                             teacher_logits_fn=oracle))
        iterator = data.train_iterator(source, batch_size=32, num_steps=30, seed=0,
                                       augment_config=data.AugmentConfig("none"))
        losses = []
        for batch in iterator:
            images = batch["image"].astype(np.float32) / 255.0
            # Encode the label in pixel (0, 0) so the oracle can read it.
            images[:, 0, 0, 0] = batch["label"]
            state, metrics = step(state, {"image": images, "label": batch["label"]},
                                  {"table": 10.0 * jnp.eye(4)})
            losses.append(float(metrics["loss"]))
        assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), (targets, losses)


def test_teacher_over_channel_recovers_clean_accuracy_at_high_snr():
    """The power normalisation is undone exactly, so at 100 dB the head sees its features."""
    kernel = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    params = {"network": {"w": jax.random.normal(jax.random.PRNGKey(1), (28 * 28, 6))}, "head": kernel}
    feature_fn = lambda v, images: images.reshape(images.shape[0], -1) @ v["w"]  # noqa: E731
    head_fn = lambda h, f: f @ h  # noqa: E731
    images = jax.random.uniform(jax.random.PRNGKey(2), (16, 28, 28, 1))
    labels = jnp.argmax(head_fn(kernel, feature_fn(params["network"], images)), -1)
    batch = {"image": images, "label": labels, "index": jnp.arange(16), "mask": jnp.ones(16)}
    for kind, snr, expected in (("awgn", 100.0, 16), ("rayleigh", 100.0, 16)):
        sums = tosc_steps.teacher_over_channel_eval_step(params, batch, snr, jax.random.PRNGKey(3),
                                                         feature_fn=feature_fn, head_fn=head_fn, kind=kind)
        assert int(sums["accuracy"]) == expected and int(sums["count"]) == 16
    noisy = tosc_steps.teacher_over_channel_eval_step(params, batch, -30.0, jax.random.PRNGKey(3),
                                                      feature_fn=feature_fn, head_fn=head_fn, kind="awgn")
    assert int(noisy["accuracy"]) < 16


def _study_config(vit_dir):
    config = ltosc_fmnist.get_config()
    config.data.name = "synthetic"
    config.data.normalization = "unit"
    config.data.augment = "none"  # Random templates: shifted or flipped, they are other classes.
    config.data.num_eval_examples = 128  # Of 512: every arm is evaluated at 3 SNRs × 2 channels.
    config.teacher.kind = "vit"
    config.teacher.hub_id = vit_dir
    config.teacher.image_size = None
    config.teacher.finetune.num_steps = 40
    config.teacher.finetune.batch_size = 32
    config.teacher.finetune.learning_rate = 3e-3
    config.teacher.finetune.head_learning_rate = 3e-2
    config.teacher.finetune.warmup_steps = 5
    config.teacher.finetune.log_every = 10
    config.teacher.finetune.checkpoint_every = 10
    config.store.num_epochs = 2
    config.store.batch_size = 128
    config.store.shard_size = 256
    config.store.verify_samples = 32
    config.model.encoders.tinyvit = dict(dims=(16, 32), depths=(1, 1), num_heads=(1, 2), windows=(7, 4))
    config.model.encoders.resnet = dict(stage_sizes=(1, 1), widths=(8, 16), bottleneck=False, small_input=True)
    config.model.num_symbols = 4
    config.model.decoder_hidden = 32
    config.train.batch_size = 32
    config.train.num_epochs = 1.0
    config.train.warmup_steps = 2
    config.train.log_every = 4
    config.train.checkpoint_every = 12  # One save per arm (resuming is test_train's and test_rkdsc's).
    config.eval.batch_size = 128
    config.eval.snrs_db = (-4.0, 0.0, 12.0)
    config.eval.report_snrs_db = (-4.0, 0.0, 12.0)
    config.eval.linear_codec_steps = 20
    config.study.methods = ("l_tosc_kd", "l_tosc")
    config.study.seeds = (0,)
    config.study.train_sizes = (512,)  # The whole set: the main run is reused (subsets: test_logit_store).
    config.study.size_seeds = (0,)
    config.study.size_snrs_db = (-4.0, 0.0)
    config.study.loss_ablation, config.study.betas, config.study.ablation_seeds = (), (), (0,)
    config.study.ablation_steps = 1
    config.export.latency_repeats = 2
    config.mesh.num_devices = 2
    return config


def test_study_runs_every_stage_writes_the_report_and_resumes(tmp_path, monkeypatch, tiny_vit_dir):
    config = _study_config(tiny_vit_dir)
    # A study on a subset: the FDM ablation (stage 6) once crashed on it, comparing the store with the whole
    # split; the size sweep's smaller point is a nested subset the store covers.
    config.data.num_train_examples = 384
    config.study.train_sizes = (256, 512)
    config.study.size_methods = ("l_tosc_kd",)
    config.study.loss_ablation, config.study.betas = ("l_tosc_kd_kl",), (10.0,)
    config.study.long_factor = 2
    workdir = str(tmp_path / "study")
    results = ltosc.study(config, workdir)

    curves = results["curves"]
    # The tiny ViT teacher has 32 features: 16 symbols sent as they are (the reference), 4 (the students')
    # through the PCA codec and the trained linear codec.
    assert set(curves) == {"L-TOSC-KD", "L-TOSC", "teacher, all features (16 symbols, reference)",
                           "teacher, PCA 4 symbols", "teacher, linear codec 4 symbols (trained, upper bound)"}
    la_tosc = json.load(open(os.path.join(workdir, "runs", "la_tosc", "summary.json")))
    assert la_tosc["equal_bandwidth"]["pca"]["4"]["num_symbols"] == 4
    assert la_tosc["codec_fit_examples"] == 384 and la_tosc["linear_codec_steps"] == 20
    assert set(curves["teacher, PCA 4 symbols"]["awgn"]) == {"-4", "0", "12"}
    assert set(curves["L-TOSC-KD"]["rayleigh"]) == {"-4", "0", "12"}
    for method in ("L-TOSC-KD", "L-TOSC"):
        assert all(0.0 <= a <= 1.0 for curve in curves[method].values() for accs in curve.values() for a in accs)
    teacher = json.load(open(os.path.join(workdir, "teacher", "summary.json")))
    assert teacher["eval"]["accuracy"] > 0.5  # 10 synthetic classes: chance is 0.1.
    ablation = results["fdm_ablation"]
    assert ablation["storage"]["records"] == 384 * 2
    assert ablation["seconds_per_step"]["l_tosc_kd"] > 0 and ablation["speedup"] > 0
    assert results["store_verification"]["max_abs_prob_diff"] < 1e-2
    assert {row[1] for row in results["train_size"]["rows"]} == {"256", "512"}
    main_run = json.load(open(os.path.join(workdir, "runs", "l_tosc_kd", "seed0", "summary.json")))
    reused = json.load(open(os.path.join(workdir, "runs", "size512", "l_tosc_kd", "seed0", "summary.json")))
    assert reused == main_run  # 512 >= the study's 384 examples: the main run is that point.
    subset = json.load(open(os.path.join(workdir, "runs", "size256", "l_tosc_kd", "seed0", "summary.json")))
    assert subset["num_train_examples"] == 256 and main_run["num_train_examples"] == 384
    assert subset["steps"] == main_run["steps"] == 12  # The size sweep is fixed-step: equal compute per size.
    # Equal compute, from the arms' summaries: the same optimiser steps on the same number of examples,
    # and the same data (the label arm reads the store's augmented views).
    arms = [json.load(open(os.path.join(workdir, "runs", m, "seed0", "summary.json"))) for m in ("l_tosc_kd", "l_tosc")]
    assert {(a["steps"], a["examples_seen"]) for a in arms} == {(12, 12 * 32)}  # ceil(384 / 32) steps of 32.
    assert len({a["data_stream"] for a in arms}) == 1 and "store's views" in arms[0]["data_stream"]
    assert results["compute"]["equal"] and len(results["compute"]["arms"]) == 2
    # Claims with verdicts over the seeds each arm ran (one here: inconclusive), against the PCA teacher.
    claims = {c["claim"]["name"]: c for c in results["claims"]}
    assert "L-TOSC-KD beats L-TOSC at 0 dB (awgn)" in claims
    assert "the IB loss beats the KL loss at 0 dB (rayleigh)" in claims
    # The loss ablations: the main β, the KL loss and β = 10, each trained like the main runs.
    assert set(results["loss_ablations"]) == {"L-TOSC-KD, IB loss, β = 100 (main runs)", "L-TOSC-KD, KL loss",
                                              "L-TOSC-KD, IB loss, β = 10"}
    beta_run = json.load(open(os.path.join(workdir, "runs", "beta10", "l_tosc_kd", "seed0", "config.json")))
    main_config = json.load(open(os.path.join(workdir, "runs", "l_tosc_kd", "seed0", "config.json")))
    assert beta_run["objective"]["beta"] == 10.0 and beta_run["train"] == main_config["train"]
    assert "L-TOSC-KD beats the teacher at -4 dB (rayleigh; teacher through its linear codec trained under noise at 4 symbols)" in claims
    # The longer-training check: both arms again with twice the main runs' steps, compared like them.
    long_run = json.load(open(os.path.join(workdir, "runs", "long2x", "l_tosc", "seed0", "summary.json")))
    assert long_run["steps"] == 2 * 12 and long_run["data_stream"] == arms[1]["data_stream"]
    assert set(results["longer_training"]["curves"]) == {"L-TOSC-KD, 12 steps", "L-TOSC-KD, 24 steps",
                                                         "L-TOSC, 12 steps", "L-TOSC, 24 steps"}
    assert "L-TOSC-KD beats L-TOSC at 0 dB (awgn), 2× the steps" in claims
    assert {c["verdict"] for c in claims.values()} == {"inconclusive"}
    report = open(os.path.join(workdir, "report.md")).read()
    for heading in ("Accuracy vs SNR, awgn", "FDM ablation", "training-set size", "Paper B's claims", "verdict",
                    "Loss ablations: IB vs KL", "Longer training: have the arms converged?",
                    "Compute per arm", "| L-TOSC-KD (4 symbols) |", "| teacher, PCA 4 symbols |"):
        assert heading in report, heading
    for plot in ("accuracy_vs_snr.png", "accuracy_vs_train_size.png"):
        assert os.path.getsize(os.path.join(workdir, plot)) > 1000

    # The last stage exported L-TOSC-KD; it loads without the training code (see test_deploy).
    exported = os.path.join(workdir, "export", "l_tosc_kd_seed0")
    check = json.load(open(os.path.join(exported, "latency.json")))
    assert check["check"]["same_predictions"] and check["latency"]["batch_size"] == 1
    spec = json.load(open(os.path.join(exported, "spec.json")))
    assert spec["system"]["kind"] == "tosc" and spec["max_symbols"] == 4
    kd_run = json.load(open(os.path.join(workdir, "runs", "l_tosc_kd", "seed0", "summary.json")))
    assert spec["metadata"]["curves"] == kd_run["curves"]
    # The export carries the run's own config and its identity.
    kd_dir = os.path.join(workdir, "runs", "l_tosc_kd", "seed0")
    run_config = spec.get("run_config") or spec["metadata"]["run_config"]
    assert run_config == json.load(open(os.path.join(kd_dir, "config.json")))
    assert spec["metadata"]["run_fingerprint"] == json.load(open(os.path.join(kd_dir, "run.json")))["fingerprint"]

    # A second run redoes nothing: every stage's output exists.
    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    from experiments.common import teacher as teacher_lib
    from experiments.ltosc import methods, modes, store

    for module, name in ((methods, "train_method"), (store, "precompute_logits"), (store, "verify_logits"),
                         (modes, "fdm_ablation"), (modes, "teacher_curves"), (modes, "export"),
                         (teacher_lib, "finetune")):
        monkeypatch.setattr(module, name, fail)
    again = ltosc.study(config, workdir)
    assert again["curves"] == curves
    monkeypatch.undo()

    # Mode export with other flags rebuilds the system the run was trained as (4 symbols, not 8).
    flags = _study_config(tiny_vit_dir)
    flags.data.num_train_examples = 384
    flags.model.num_symbols = 8
    flags.export.overwrite = True
    ltosc.export(flags, workdir)
    assert json.load(open(os.path.join(exported, "spec.json")))["max_symbols"] == 4

    # The teacher was fine-tuned again (another fingerprint): the store built from it is stale and is
    # computed again, its old directory kept aside.
    teacher_run = os.path.join(workdir, "teacher", "run.json")
    record = json.load(open(teacher_run))
    json.dump(record | {"fingerprint": "0" * 64}, open(teacher_run, "w"))
    monkeypatch.setattr(teacher_lib, "finetune", fail)
    monkeypatch.setattr(store, "precompute_logits", fail)
    with pytest.raises(AssertionError, match="a finished stage ran again"):
        ltosc.study(config, workdir)
    assert [p for p in os.listdir(workdir) if p.startswith("logits.superseded-")]


def test_seed_curves_are_collected_and_tabulated_with_their_spread():
    from rkdsc_jax import evaluation

    per_seed = [{"awgn": {"0": 0.5, "4": 0.7}}, {"awgn": {"0": 0.7, "4": 0.9}}]
    curves = evaluation.collect_seeds(per_seed)
    assert curves == {"awgn": {"0": [0.5, 0.7], "4": [0.7, 0.9]}}
    mean, std = evaluation.mean_std(curves["awgn"]["0"])
    assert np.isclose(mean, 0.6) and np.isclose(std, np.sqrt(0.02))  # Sample std of {0.5, 0.7}.
    table = evaluation.curves_table({"A": curves}, "awgn", ["0", "4", "8"])
    assert "| A | 60.00 ± 14.14 | 80.00 ± 14.14 | — |" in table
