"""Paper A's pipeline (experiments.rkdsc) end to end on synthetic data with a tiny ViT teacher,
its resumption after a kill, and the report's claim arithmetic."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from experiments import rkdsc
from experiments.common import export as export_lib
from experiments.common import teacher as teacher_lib
from experiments.configs import rkdsc_fmnist
from experiments.darts import search as darts_search
from experiments.rkdsc import modes, stages
from rkdsc_jax import genotype_data, train
from rkdsc_jax.models import tosc
from rkdsc_jax.nas import genotypes, network

DARTS_V2 = genotype_data.path("DARTS_V2")


def _tiny_config(vit_dir):
    config = rkdsc_fmnist.get_config()
    config.data.name = "synthetic"
    config.data.normalization = "unit"
    config.data.augment = "none"
    config.data.num_eval_examples = 128
    config.teacher.kind = "vit"
    config.teacher.hub_id = vit_dir
    config.teacher.image_size = None
    t = config.teacher.finetune
    t.num_steps, t.batch_size, t.learning_rate, t.head_learning_rate = 30, 32, 3e-3, 3e-2
    t.warmup_steps, t.log_every, t.checkpoint_every = 5, 10, 10
    config.search.num_train_examples = 128
    config.student.encoders.genotype = dict(channels=4, layers=3)
    config.codec.width, config.codec.depth, config.codec.heads = 16, 1, 2
    config.codec.symbols_per_token, config.codec.budgets = 1, (12,)
    for stage in (config.stage1, config.stage2):
        stage.batch_size, stage.num_steps, stage.warmup_steps = 32, 6, 1
        stage.log_every, stage.checkpoint_every = 3, 3
    config.baselines.cnn = dict(features=(8, 16))
    config.baselines.cnn_decoder_hidden = 16
    config.eval.batch_size = 64
    config.eval.snrs_db = (-10.0, 0.0, 25.0)
    config.eval.bandwidth_snrs_db = (10.0,)
    config.eval.latency_repeats = 2
    config.eval.linear_codec_steps = 20
    config.export.latency_repeats = 2
    config.mesh.num_devices = 2
    return config


# Pools and skips: a genotype whose network compiles in seconds (the pipeline compiles it ~16 times).
CHEAP_GENOTYPE = {
    "normal": [["skip_connect", 0], ["max_pool_3x3", 1], ["avg_pool_3x3", 2], ["skip_connect", 1],
               ["max_pool_3x3", 3], ["skip_connect", 0], ["avg_pool_3x3", 4], ["skip_connect", 1]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1],
               ["skip_connect", 3], ["avg_pool_3x3", 0], ["skip_connect", 4], ["max_pool_3x3", 1]],
    "reduce_concat": [2, 3, 4, 5],
}


def _fake_search(searches):
    """A stand-in for experiments.darts.search.search (whose supernet takes minutes to compile on CPU,
    see test_nas' slow test of the mode): writes a genotype where the real one writes its own."""

    def search(config, workdir):
        searches.append(config)
        genotype = genotypes.Genotype.from_dict(CHEAP_GENOTYPE)
        os.makedirs(workdir, exist_ok=True)
        genotypes.save(genotype, os.path.join(workdir, "genotype.json"))
        summary = {"genotype": genotype.to_dict(), "op_histogram": genotypes.op_histogram(genotype),
                   "derived_params": 1, "derived_params_at": dict(config.retrain), "lam": config.search.lam,
                   "mu": config.search.mu, "order": config.search.order, "steps": 2, "total_wall_time_s": 1.0}
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary

    return search


def test_pipeline_runs_every_stage_resumes_after_a_kill_and_reports(tmp_path, monkeypatch, tiny_vit_dir):
    config = _tiny_config(tiny_vit_dir)
    workdir = str(tmp_path / "pipeline")
    searches = []
    monkeypatch.setattr(darts_search, "search", _fake_search(searches))

    # Killed while training the last baseline: every earlier stage has written its output.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(stages, "train_cnn_baseline", killed)
        with pytest.raises(KeyboardInterrupt):
            rkdsc.pipeline(config, workdir)
    for finished in ("teacher", "search", "runs/teacher", "runs/stage1/seed0", "runs/rkdsc/seed0",
                     "runs/no_kd/seed0"):
        assert os.path.exists(os.path.join(workdir, finished, "summary.json")), finished
    assert not os.path.exists(os.path.join(workdir, "report.md"))
    # The search distils from the pipeline's fine-tuned teacher and sizes the derived network as the student.
    assert searches[0].teacher.finetuned_dir == os.path.join(workdir, "teacher", "teacher")
    assert (searches[0].search.lam, searches[0].retrain.channels, searches[0].retrain.layers) == (0.5, 4, 3)

    # Run again: only the unfinished stages run.
    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    finished_stages = [(teacher_lib, "finetune"), (darts_search, "search"), (modes, "teacher_curves"),
                       (stages, "train_stage1"), (stages, "train_stage2")]
    with monkeypatch.context() as patch:
        for module, name in finished_stages:
            patch.setattr(module, name, fail)
        results = rkdsc.pipeline(config, workdir)

    curves = results["curves"]
    # The tiny ViT teacher has 32 features (16 symbols): RKD-SC's largest budget, 49, holds them all, so its
    # equal-bandwidth rows send 16 symbols; budget 12 is in the bandwidth table.
    reference = "teacher, all features (16 symbols, reference)"
    pca = "teacher, PCA 16 symbols (all features; budget 49)"
    linear = "teacher, linear codec 16 symbols (trained, upper bound) (all features; budget 49)"
    assert set(curves) == {"RKD-SC", "stage-1 student (no codec)", "same student, no KD", "CNN SemCom", reference,
                           pca, linear}
    for method, by_kind in curves.items():
        assert set(by_kind) == {"awgn", "rayleigh"}, method
        assert set(by_kind["awgn"]) >= {"-10", "0", "25"}, method  # The teacher's codecs also at 10 dB.
        assert all(0.0 <= a <= 1.0 for curve in by_kind.values() for accs in curve.values() for a in accs)
    equal_bandwidth = json.load(open(os.path.join(workdir, "runs", "teacher", "summary.json")))["equal_bandwidth"]
    assert {k: v["num_symbols"] for k, v in equal_bandwidth["pca"].items()} == {"12": 12, "49": 16}
    teacher = json.load(open(os.path.join(workdir, "teacher", "summary.json")))
    assert teacher["eval"]["accuracy"] > 0.5  # 10 synthetic classes: chance is 0.1.

    # The bandwidth sweep: one model, every budget and its largest; ratio = symbols / 28·28.
    bandwidth = results["bandwidth"]
    assert set(bandwidth["bandwidth_ratio"]) == {"12", "49"}
    assert bandwidth["bandwidth_ratio"]["49"] == pytest.approx(49 / 784)
    assert set(bandwidth["accuracy"]) == {"awgn@10", "rayleigh@10"}

    # The deployed encoder is the searched cell network without its classifier, counted independently.
    genotype = genotypes.load(os.path.join(workdir, "search", "genotype.json"))
    encoder = network.GenotypeNetwork(genotype=genotype, num_classes=10, channels=4, layers=3, include_head=False)
    variables = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False))
    complexity = results["complexity"]
    assert complexity["student_encoder"] == train.param_count(variables["params"])
    assert complexity["student_deployed"] == complexity["student_transmitter"] + complexity["receiver"]

    latency = results["latency"]
    assert latency["batch_size"] == 1 and min(latency["teacher_encoder_ms"], latency["student_transmitter_ms"]) > 0
    assert {c["claim"]["name"].split(" ")[0] for c in results["claims"]} >= {"parameters", "keeps", "more", "RKD-SC",
                                                                            "encoder"}
    keeps = next(c for c in results["claims"] if c["claim"]["name"].startswith("keeps"))
    assert "teacher through its linear codec trained under noise at 16 symbols" in keeps["claim"]["name"] and keeps["verdict"] == "inconclusive"
    # Equal compute, from the summaries: RKD-SC trains stage 1 + stage 2, the baselines as many steps in one go.
    arm = {m: json.load(open(os.path.join(workdir, "runs", m, "seed0", "summary.json")))
           for m in ("rkdsc", "no_kd", "cnn")}
    assert (arm["no_kd"]["total_steps"], arm["no_kd"]["total_examples_seen"]) == (12, 12 * 32)
    assert (arm["cnn"]["total_steps"], arm["cnn"]["total_examples_seen"]) == (12, 12 * 32)
    assert (arm["rkdsc"]["stage1_steps"], arm["rkdsc"]["steps"], arm["rkdsc"]["total_examples_seen"]) == (6, 6, 12 * 32)
    assert results["compute"]["equal"] is True
    kd_claims = [c for c in results["claims"] if c["claim"]["name"].startswith("RKD-SC beats")]
    assert kd_claims and not any(c["claim"]["protocol"].startswith("UNEQUAL compute") for c in kd_claims)
    report = open(os.path.join(workdir, "report.md")).read()
    for heading in ("KDL-DARTS search", "Accuracy vs SNR, rayleigh", "bandwidth ratio", "Parameters", "latency",
                    "Paper A's claims", "verdict", "Compute per arm", "| RKD-SC (49 symbols) |",
                    "| teacher, PCA 12 symbols | 12 |"):
        assert heading in report, heading
    for plot in ("accuracy_vs_snr.png", "accuracy_vs_bandwidth.png"):
        assert os.path.getsize(os.path.join(workdir, plot)) > 1000

    # The deployable RKD-SC of seed 0: the transmitter is the searched encoder + the CAT encoder.
    check = json.load(open(os.path.join(workdir, "export", "rkdsc_seed0", "latency.json")))
    assert check["check"]["same_predictions"]
    assert check["latency"]["transmitter_params"] == complexity["student_transmitter"]
    assert check["latency"]["receiver_params"] == complexity["receiver"]

    # A third run redoes nothing and reports the same numbers.
    with monkeypatch.context() as patch:
        for module, name in [*finished_stages, (stages, "train_cnn_baseline"), (stages, "encoder_latency"),
                             (modes, "export"), (export_lib, "export_run")]:
            patch.setattr(module, name, fail)
        again = rkdsc.pipeline(config, workdir)
    assert again["curves"] == curves

    # The export carries the config its run recorded.
    spec = json.load(open(os.path.join(workdir, "export", "rkdsc_seed0", "spec.json")))
    run_config = spec.get("run_config") or spec["metadata"]["run_config"]
    assert run_config == json.load(open(os.path.join(workdir, "runs", "rkdsc", "seed0", "config.json")))

    # Stage 1 was trained again (another fingerprint): stage 2, which starts from it, is stale and runs
    # again, its old directory kept aside; stage 1 itself and the baselines stay.
    stage1_record = os.path.join(workdir, "runs", "stage1", "seed0", "run.json")
    record = json.load(open(stage1_record))
    json.dump(record | {"fingerprint": "0" * 64}, open(stage1_record, "w"))
    with monkeypatch.context() as patch:
        for module, name in [*finished_stages, (stages, "train_cnn_baseline")]:
            patch.setattr(module, name, fail)
        with pytest.raises(AssertionError, match="a finished stage ran again"):
            rkdsc.pipeline(config, workdir)
    assert [p for p in os.listdir(os.path.join(workdir, "runs", "rkdsc")) if p.startswith("seed0.superseded-")]
    assert os.path.exists(os.path.join(workdir, "runs", "no_kd", "seed0", "summary.json"))


def test_a_teacher_for_other_classes_is_refused(tmp_path, tiny_vit_dir):
    config = _tiny_config(tiny_vit_dir)
    config.teacher.finetune.enabled = False  # The saved ViT predicts 3 classes; the data has 10.
    with pytest.raises(ValueError, match="predicts 3 classes but synthetic has 10"):
        rkdsc.Setup(config, str(tmp_path))


def test_genotype_encoder_is_the_cell_network_without_its_head():
    genotype = genotypes.load(DARTS_V2)
    encoder = tosc.make_encoder("genotype", genotype=genotype.to_dict(), channels=4, layers=3)
    full = network.GenotypeNetwork(genotype=genotype, num_classes=10, channels=4, layers=3)
    images = jnp.zeros((2, 28, 28, 1))
    enc_vars = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), images, train=False))
    full_vars = jax.eval_shape(lambda: full.init(jax.random.PRNGKey(0), images, train=False))
    features = jax.eval_shape(lambda v: encoder.apply(v, images, train=False), enc_vars)
    # Two reductions: 28 → 14 → 7; the last cell concatenates 4 nodes of 4·4 channels.
    assert features.shape == (2, 7, 7, 4 * 4 * 4)
    head = full_vars["params"]["classifier"]
    assert train.param_count(enc_vars["params"]) == train.param_count(full_vars["params"]) - train.param_count(head)


def test_search_config_follows_the_pipeline():
    config = rkdsc_fmnist.get_config()
    config.search.num_train_examples = 640
    config.student.encoders.genotype = dict(channels=12, layers=4)
    child = rkdsc.search_config(config, "/tmp/pipeline")
    assert child.mode == "search" and child.data.num_train_examples == 640
    assert child.teacher.finetuned_dir == "/tmp/pipeline/teacher/teacher"
    assert (child.retrain.channels, child.retrain.layers) == (12, 4)  # The student network's size.
    config.search.lam = 0.0
    assert rkdsc.search_config(config, "/tmp/pipeline").teacher.kind == "none"  # Plain DARTS needs no teacher.


def test_a_stage_depends_on_the_given_genotypes_content(tmp_path):
    """A genotype file edited in place makes the stages trained on it stale (their identity changes)."""
    config = rkdsc_fmnist.get_config("capacity")
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(genotype_data.as_dict("DARTS_V2")))
    config.student.genotype = str(path)
    layout = stages.pipeline_layout(config, str(tmp_path / "pipeline"))
    before = stages.run_identity(config, layout, "no_kd")
    assert before["inputs"]["genotype"]["normal"][0] == ["sep_conv_3x3", 0]
    edited = genotype_data.as_dict("DARTS_V2") | {"normal": genotype_data.as_dict("DARTS_V1")["normal"]}
    path.write_text(json.dumps(edited))
    assert stages.run_identity(config, layout, "no_kd") != before
    assert stages.latency_identity(config, layout)["inputs"]["genotype"] == stages.genotype_input(config, layout)[
        "genotype"]
