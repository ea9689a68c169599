"""Paper A end to end (SPEC §4): teacher → KDL-DARTS student → two-stage robust distillation
→ evaluation → report.

Modes (``config.mode``):
- ``rkd_stage1``: the student encoder (a KDL-DARTS genotype, or any encoder of
  ``rkdsc_jax.models.tosc.ENCODERS``) learns the teacher's features through a projection and
  its logits, without a channel.
- ``rkd_stage2``: the CAT codec and the channel are inserted; codec and encoder train from
  stage 1's weights under a random SNR, channel and symbol budget per example.
- ``rkdsc``: the whole pipeline in one workdir (``experiments.common.layout``), every stage
  skipped when its output exists (an interrupted pipeline resumes where it stopped; a stage
  killed half-way resumes from its checkpoint): ``teacher/``, ``search/``,
  ``runs/{stage1,rkdsc,no_kd,cnn}/seed<s>/``, ``runs/teacher/``, ``latency.json``, the report,
  ``export/rkdsc_seed<s>/``.
- ``export``: the transmitter and receiver of a finished ``rkdsc``, ``no_kd`` or ``cnn`` run.

The single-stage modes read the teacher and the genotype from ``config.pipeline_dir``
(default: the workdir).
"""

from __future__ import annotations

import copy
import time

import ml_collections

from experiments.common import export as export_lib
from experiments.common import inputs, results
from experiments.common import teacher as teacher_lib
from experiments.darts import search as darts_search
from experiments.rkdsc import report, stages
from rkdsc_jax.train import workdir as workdir_lib


def _pipeline_dir(config, workdir: str) -> str:
    return config.get("pipeline_dir") or workdir


def rkd_stage1(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``rkd_stage1``; the teacher and genotype come from ``config.pipeline_dir``."""
    return stages.train_stage1(config, workdir, setup=stages.Setup(config, _pipeline_dir(config, workdir)))


def rkd_stage2(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``rkd_stage2``: from ``config.stage2.init_from`` (default ``<pipeline_dir>/runs/stage1/seed<s>``)."""
    setup = stages.Setup(config, _pipeline_dir(config, workdir))
    stage1_dir = config.stage2.get("init_from") or setup.layout.run("stage1", config.seed)
    return stages.train_stage2(config, workdir, setup=setup, stage1_dir=stage1_dir)


def equal_symbols(config, pipeline_dir: str) -> list[int]:
    """The symbol counts the teacher is sent at for a fair comparison: every CAT budget and the
    largest (what RKD-SC's curves and the CNN baseline send)."""
    setup = stages.Setup(config, pipeline_dir)
    return stages._budgets(config, setup.system.max_symbols)


def teacher_curves(config, pipeline_dir: str) -> dict:
    """The teacher's features over the channel to its own head (all of them: a reference), its
    clean accuracy, and the teacher at each of RKD-SC's symbol budgets through a PCA (and a
    trained linear) codec, the comparison."""
    return teacher_lib.teacher_over_channel(config, stages.pipeline_layout(config, pipeline_dir),
                                            equal_symbols=equal_symbols(config, pipeline_dir),
                                            codec_snr_range=tuple(config.stage2.snr_range))


def teacher_curves_identity(config, layout) -> dict:
    # The equal-bandwidth rows' settings are an input: a run recorded without them is computed again.
    codecs = {"budgets": list(config.codec.budgets or ()), "symbols_per_token": config.codec.symbols_per_token,
              "snr_range": list(config.stage2.snr_range)}
    return results.run_identity(config, only=("seed", "data", "teacher", "channel", "eval"),
                                inputs={"teacher": teacher_lib.teacher_input(config, layout),
                                        "equal_bandwidth": codecs})


def search_config(config, pipeline_dir: str) -> ml_collections.ConfigDict:
    """The ``experiments.darts.search`` config of the pipeline's search: its teacher, data and student size."""
    s = config.search
    child = ml_collections.ConfigDict()
    child.mode = "search"
    child.seed = config.seed
    child.data = copy.deepcopy(config.data)
    child.data.num_train_examples = s.num_train_examples
    child.data.subset = "first"  # The search's data: the first examples, split in halves.
    child.data.augment = s.augment
    child.search = copy.deepcopy(s)
    child.teacher = copy.deepcopy(config.teacher)
    child.teacher.finetuned_dir = str(stages.pipeline_layout(config, pipeline_dir).teacher)
    if not s.lam:
        child.teacher.kind = "none"
    genotype_net = config.student.encoders.get("genotype", {})
    child.retrain = ml_collections.ConfigDict({"channels": genotype_net.get("channels", 16),
                                               "layers": genotype_net.get("layers", 5)})
    child.train = ml_collections.ConfigDict({"log_every": s.log_every, "checkpoint_every": s.checkpoint_every,
                                             "keep_checkpoints": 2, "eval_batch_size": config.eval.batch_size})
    child.mesh = copy.deepcopy(config.mesh)
    return child


def export(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``export`` of a pipeline: ``rkdsc``, ``no_kd`` (the student system) or ``cnn``."""
    method = config.export.method
    if method not in ("rkdsc", "no_kd", "cnn"):
        raise ValueError(f"export.method={method!r}: paper A's deployable systems are 'rkdsc', 'no_kd' and "
                         "'cnn' (stage 1 has no channel codec).")

    def build(run_config):  # The system as the run was trained, from its own recorded config.
        setup = stages.Setup(run_config, workdir)
        spec_of = (lambda summary: setup.cnn_spec(summary["num_symbols"])) if method == "cnn" else (
            lambda summary: setup.system_spec)
        return spec_of, setup.eval_source

    return export_lib.export_run(config, workdir, build)


def pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``rkdsc``: every stage of paper A in order, resumable; then the report.  A stage whose
    fields or inputs (teacher, search, stage 1) changed since it ran is computed again: its old
    directory is moved aside (``results.finished``)."""
    started = time.perf_counter()
    layout = stages.pipeline_layout(config, workdir)
    layout.root.mkdir(parents=True, exist_ok=True)
    seeds = inputs.tuple_field(config, "pipeline.seeds", int)
    methods = list(inputs.tuple_field(config, "pipeline.methods", str))
    with workdir_lib.WorkdirLock(layout.root):
        total = 8
        if config.teacher.finetune.enabled:
            results.stage("fine-tune the teacher", 1, total, started)
            if results.finished(layout.teacher_run, teacher_lib.teacher_identity(config)) is None:
                teacher_lib.finetune(config, workdir)
                results.ensure_recorded(layout.teacher_run, teacher_lib.teacher_identity(config))

        if config.student.encoder == "genotype" and not config.student.get("genotype"):
            results.stage("KDL-DARTS architecture search", 2, total, started)
            if not config.search.enabled:
                raise ValueError("The student is the pipeline's searched genotype but search.enabled is False; set "
                                 "--config.student.genotype to a genotype JSON (or a search workdir), or enable it.")
            child = search_config(config, workdir)
            identity = darts_search.search_identity(child, str(layout.search))
            if results.finished(layout.search, identity) is None:
                darts_search.search(child, str(layout.search))
                results.ensure_recorded(layout.search, identity)

        results.stage("the teacher over the channel", 3, total, started)
        run_dir, identity = layout.run("teacher"), teacher_curves_identity(config, layout)
        if results.finished(run_dir, identity) is None:
            results.write_json(run_dir / "summary.json", teacher_curves(config, workdir), checksum=True)
            results.write_json(run_dir / workdir_lib.RUN_FILE, identity)

        setup = None
        for seed in seeds:
            child = stages.seed_config(config, seed)

            def todo(method):  # Checked in order: rkdsc's identity includes the stage 1 it starts from.
                return results.finished(layout.run(method, seed), stages.run_identity(child, layout, method)) is None

            needs_stage1 = "stage1" in methods or "rkdsc" in methods
            run_stage1 = needs_stage1 and todo("stage1")
            pending = [m for m in methods if m != "stage1" and (m != "rkdsc" or not run_stage1) and todo(m)]
            if run_stage1 and "rkdsc" in methods and "rkdsc" not in pending:
                pending.insert(0, "rkdsc")  # A new stage 1 makes any earlier stage 2 stale.
            if not run_stage1 and not pending:
                continue
            setup = setup or stages.Setup(config, workdir)
            shown = (["stage1"] if run_stage1 else []) + pending
            results.stage(f"seed {seed}: stage 1, stage 2 and the baselines ({', '.join(shown)})", 4, total,
                          started)
            if run_stage1:
                stages.train_stage1(child, layout.run("stage1", seed), setup=setup)
            if "rkdsc" in pending:
                if results.finished(layout.run("rkdsc", seed), stages.run_identity(child, layout, "rkdsc")) is None:
                    stages.train_stage2(child, layout.run("rkdsc", seed), stage1_dir=layout.run("stage1", seed),
                                        setup=setup)
            if "no_kd" in pending:
                stages.train_stage2(child, layout.run("no_kd", seed), distill=False, setup=setup)
            if "cnn" in pending:
                stages.train_cnn_baseline(child, layout.run("cnn", seed), setup=setup,
                                          num_symbols=setup.system.max_symbols)

        results.stage("encoder latency (batch 1, this machine)", 5, total, started)
        path = layout / "latency.json"
        identity = stages.latency_identity(config, layout)
        if results.current_json(path, identity) is None:
            setup = setup or stages.Setup(config, workdir)
            results.write_with_identity(path, stages.encoder_latency(config, setup), identity)

        results.stage("export the deployable transmitter and receiver", 6, total, started)
        if not export_lib.exported(config, workdir):
            export(config, workdir)

        results.stage("report", 7, total, started)
        out = report.write_report(config, workdir)
        results.stage(f"done: {layout / 'report.md'}", 8, total, started)
        return out
