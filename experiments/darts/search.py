"""Modes ``search`` (KDL-DARTS / DARTS) and ``retrain`` (a network built from a genotype).

``search`` splits the training set in two reproducible halves (``data.split_train_validation``),
runs the bi-level step of ``rkdsc_jax.nas.search`` over both, and writes into the workdir:
checkpoints (the whole ``SearchState`` + both data iterators), ``metrics.jsonl``,
``alphas/epoch_NNN.json`` (α, softmax(α), the derived genotype, its op histogram),
``genotype.json`` (the final cell, DARTS JSON form), ``alpha_history.json`` and
``alphas.png`` (softmax(α) of every edge over the epochs), ``summary.json``.

``retrain`` trains ``nas.network.GenotypeNetwork`` from ``config.retrain.genotype`` (a JSON
path, a search workdir or a shipped genotype's name: ``DARTS_V1``/``DARTS_V2``/``KDL_FMNIST``).  Both run
on ``train.fit``; the search's per-epoch α snapshot is one of its periodic actions.
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath

from experiments.common import inputs, results
from experiments.common import teacher as teacher_lib
from experiments.common.layout import RunLayout
from rkdsc_jax import data, evaluation, models, train
from rkdsc_jax.nas import genotypes, network, search_space
from rkdsc_jax.nas import search as search_lib


class PairedIterator:
    """Zips the train-half and validation-half grain iterators into one batch dict
    (validation fields prefixed ``val_``); checkpointable by ``train.Checkpointer``."""

    def __init__(self, train_iter, val_iter):
        self.train_iter, self.val_iter = train_iter, val_iter

    def __iter__(self):
        return self

    def __next__(self):
        batch = dict(next(self.train_iter))
        batch.update({f"val_{k}": v for k, v in next(self.val_iter).items()})
        return batch

    def get_state(self) -> bytes:
        return json.dumps({"train": self.train_iter.get_state(), "val": self.val_iter.get_state()}).encode()

    def set_state(self, state: bytes) -> None:
        state = json.loads(state)
        self.train_iter.set_state(state["train"])
        self.val_iter.set_state(state["val"])


def teacher_fn(config, num_classes: int, sample_shape, class_names=(), workdir: str | None = None):
    """images → logits of the frozen teacher.

    ``config.teacher.kind``: ``classifier`` (a ``train_classifier`` checkpoint in
    ``teacher.workdir``, same input normalisation as the supernet) or a pretrained teacher
    of ``experiments.common.teacher`` (``efficientnet_lite0`` — fine-tuned when the config
    says so —, ``clip``, ``vit``), which reads the supernet's normalised images mapped back to [0, 1].
    """
    kind = config.teacher.kind
    if kind == "none":
        return None
    if kind in teacher_lib.TEACHER_KINDS:
        teacher = teacher_lib.load_teacher(config, class_names, RunLayout.from_config(config, workdir or "."))
        mean, std = (jnp.asarray(v, jnp.float32) for v in data.NORMALIZATIONS[config.data.normalization])

        def logits(images):
            features = teacher.feature_fn(teacher.variables, teacher.preprocess(images * std + mean))
            return teacher.head_fn(teacher.head_params, features)

        return logits
    if kind == "classifier":
        model = models.classifier_from_config(config.teacher.model, num_classes)
        checkpointer = train.Checkpointer(epath.Path(config.teacher.workdir) / "checkpoints")
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"No teacher checkpoint in {config.teacher.workdir}/checkpoints; train one "
                                    "with experiments/configs/fmnist_classifier.py first.")
        # Params and batch statistics only: the teacher was trained with its own optimiser.
        variables = checkpointer.restore_variables()
        checkpointer.close()
        expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *sample_shape)),
                                                     train=False))
        if jax.tree.structure(expected["params"]) != jax.tree.structure(variables["params"]) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(expected["params"]),
                                                   jax.tree.leaves(variables["params"]))):
            raise ValueError(f"The teacher checkpoint in {config.teacher.workdir} is not a {config.teacher.model.name} "
                             f"with config.teacher.model's settings on {sample_shape} inputs; set "
                             "config.teacher.model (and data.image_size) to what the teacher was trained with.")
        return lambda x: model.apply(variables, x, train=False)
    if kind == "store":
        raise ValueError("teacher.kind='store' (FDM logit store) is not wired into the search yet; use "
                         "'classifier', a pretrained teacher or 'none'.")
    raise ValueError(f"Unknown teacher.kind {kind!r}; use 'none', 'classifier' or one of "
                     f"{teacher_lib.TEACHER_KINDS}.")



def _hparams(config) -> search_lib.SearchHParams:
    s = config.search
    return search_lib.SearchHParams(order=s.order, second_order_method=s.second_order_method, lam=s.lam,
                                    temperature=s.temperature, mu=s.mu, unroll_momentum=s.unroll_momentum)


def plot_alpha_history(history: list[dict], path) -> None:
    """One panel per edge: softmax(α) of each op over epochs, normal and reduce cells."""
    from matplotlib.figure import Figure  # The object API: no global backend to select.

    primitives = history[0]["primitives"]
    epochs = [h["epoch"] for h in history]
    num_edges = len(history[0]["normal"]["softmax"])
    fig = Figure(figsize=(1.6 * num_edges, 4.2))
    axes = fig.subplots(2, num_edges, sharey=True, squeeze=False)
    for row, cell_type in enumerate(("normal", "reduce")):
        probs = np.asarray([h[cell_type]["softmax"] for h in history])  # (epochs, edges, ops)
        for e in range(num_edges):
            ax = axes[row, e]
            for k, name in enumerate(primitives):
                ax.plot(epochs, probs[:, e, k], label=name, lw=1)
            ax.set_title(f"{cell_type[0]}{e}", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, -1].legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    evaluation.save_figure(fig, path, dpi=110)


class AlphaSnapshots:
    """The search's per-epoch hook: validation accuracy, then α, softmax(α), the derived genotype
    and its op histogram as ``alphas/epoch_NNN.json``, ``alpha_history.json`` and ``alphas.png``."""

    def __init__(self, workdir: epath.Path, evaluate, derive, complexity, steps_per_epoch: int):
        self.workdir, self.evaluate, self.derive = workdir, evaluate, derive
        self.complexity, self.steps_per_epoch = complexity, steps_per_epoch
        self.history: list[dict] = []
        self.val: dict = {}

    def on_start(self, first_step: int) -> None:
        """Keeps the epochs a resumed run has already done (and drops any after its checkpoint)."""
        saved = results.read_json(self.workdir / "alpha_history.json") or []
        self.history = [h for h in saved if h["epoch"] * self.steps_per_epoch <= first_step]

    def __call__(self, step: int, state) -> dict:
        epoch = step // self.steps_per_epoch
        self.val = self.evaluate(state)
        arch = jax.device_get(state.arch)
        genotype = self.derive(arch)
        snapshot = genotypes.alpha_snapshot(arch) | {
            "epoch": epoch, "step": step, "genotype": genotype.to_dict(),
            "op_histogram": genotypes.op_histogram(genotype), "val": self.val,
            "complexity": float(self.complexity(arch))}
        self.history.append(snapshot)
        results.write_json(self.workdir / "alphas" / f"epoch_{epoch:03d}.json", snapshot)
        results.write_json(self.workdir / "alpha_history.json", self.history)
        if jax.process_index() == 0:
            plot_alpha_history(self.history, self.workdir / "alphas.png")
        logging.info("epoch %d | val accuracy %.4f | complexity %.4f | genotype normal %s | reduce %s",
                     epoch, self.val["accuracy"], snapshot["complexity"], list(genotype.normal),
                     list(genotype.reduce))
        return self.val


def search_identity(config, workdir: str) -> dict:
    """The search's fields and the teacher it distils from (none for plain DARTS)."""
    uses_teacher = bool(config.search.lam) and config.teacher.kind != "none"
    teacher = teacher_lib.teacher_input(config, RunLayout.from_config(config, workdir)) if uses_teacher else None
    return results.run_identity(config, inputs={"teacher": teacher})


def search(config, workdir: str) -> dict:
    """Runs (or resumes) a KDL-DARTS search on ``train.fit``; returns and writes the summary."""
    workdir, start = results.start_run(config, workdir, "KDL-DARTS search", identity=search_identity(config, workdir))
    mesh = train.make_mesh(config.mesh.num_devices)
    full = inputs.train_source(config)
    train_half, val_half = data.split_train_validation(full, 0.5, seed=config.data.split_seed)
    info = full.info
    s = config.search
    num_steps = train.steps_from_epochs(len(train_half), s.batch_size, s.epochs, whole_batches=True)
    steps_per_epoch = num_steps // s.epochs
    preprocess = inputs.preprocess(config, normalize=True)
    common = dict(batch_size=s.batch_size, num_steps=num_steps, preprocess_config=preprocess)
    iterator = PairedIterator(inputs.train_iterator(config, train_half, seed=config.seed, **common),
                              inputs.train_iterator(config, val_half, seed=config.seed + 1, **common))
    sample_shape = preprocess.output_shape(info.image_shape)

    model = search_space.SearchNetwork(info.num_classes, channels=s.channels, layers=s.layers, steps=s.steps,
                                       multiplier=s.steps, impl=s.impl)
    schedule = search_lib.epoch_cosine_schedule(s.w_lr, s.w_lr_min, s.epochs, steps_per_epoch)
    w_tx = search_lib.make_weight_optimizer(schedule, s.w_momentum, s.w_weight_decay, s.w_grad_clip)
    a_tx = search_lib.make_arch_optimizer(s.a_lr, s.a_b1, s.a_b2, s.a_weight_decay)
    # The seed is an argument, not a constant: every seed then shares one cached compilation.
    state = jax.jit(lambda x, seed: search_lib.create_search_state(model, w_tx, a_tx, x, seed),
                    out_shardings=train.replicated(mesh))(jnp.zeros((1, *sample_shape)), config.seed)
    complexity = search_lib.Complexity.for_model(model, s.count_bn_affine,
                                                 normalization=s.get("complexity_normalization", "global"))
    hp = _hparams(config)
    class_names = inputs.class_names(full)
    teacher = teacher_fn(config, info.num_classes, sample_shape, class_names, str(workdir)) if hp.lam > 0 else None
    step_fn = train.jit_train_step(functools.partial(
        search_lib.search_step, hp=hp, complexity=complexity, lr_schedule=schedule, teacher_fn=teacher), mesh)
    eval_step = train.jit_eval_step(search_lib.eval_step, mesh)
    logging.info("Search on %s: %d train / %d val examples, supernet %d cells × %d channels, %s weights, "
                 "%d α; %s order, λ=%g τ=%g μ=%g; %d steps of batch %d on %d devices.",
                 info.name, len(train_half), len(val_half), s.layers, s.channels,
                 f"{train.param_count(state.params):,}", search_lib.num_arch_params(state.arch), hp.order, hp.lam,
                 hp.temperature, hp.mu, num_steps, s.batch_size, mesh.size)

    val_batches = inputs.eval_batches(val_half, config.train.eval_batch_size, preprocess)
    derive = functools.partial(genotypes.derive, max_skip=s.max_skip, cap_cells=tuple(s.cap_cells))
    snapshots = AlphaSnapshots(workdir, lambda st: train.evaluate(eval_step, st, val_batches(), mesh), derive,
                               complexity, steps_per_epoch)
    loop = train.LoopConfig(num_steps=num_steps, batch_size=s.batch_size, log_every=config.train.log_every,
                            checkpoint_every=config.train.checkpoint_every,
                            keep_checkpoints=config.train.keep_checkpoints, epoch_steps=steps_per_epoch)
    hooks = [train.PeriodicAction(steps_per_epoch, snapshots, split="val", at_end=False, on_start=snapshots.on_start)]
    initial_arch = jax.device_get(state.arch)  # The seed's α before any step (also when resuming).
    state, fitted = train.fit(state=state, train_step=step_fn, train_iter=iterator, mesh=mesh, workdir=str(workdir),
                              config=loop, batch_keys=("image", "label", "val_image", "val_label"), hooks=hooks,
                              name="search")

    arch = jax.device_get(state.arch)
    movement = genotypes.alpha_movement(initial_arch, arch)
    genotype = derive(arch)
    genotype = genotypes.Genotype(genotype.normal, genotype.normal_concat, genotype.reduce, genotype.reduce_concat,
                                  {"name": workdir.name, "seed": config.seed, "lam": hp.lam, "mu": hp.mu,
                                   "order": hp.order})
    r = config.retrain
    summary = {
        "mode": "search", "dataset": info.name, "train_half": len(train_half), "val_half": len(val_half),
        "steps": num_steps, "resumed_from_step": fitted["resumed_from_step"], "order": hp.order, "lam": hp.lam,
        "mu": hp.mu, "temperature": hp.temperature, "genotype": genotype.to_dict(),
        "op_histogram": genotypes.op_histogram(genotype),
        "derived_params": network.genotype_param_count(genotype, info.num_classes, r.channels, r.layers,
                                                       sample_shape),
        "derived_params_at": {"channels": r.channels, "layers": r.layers},
        "complexity": float(complexity(arch)), "expected_cell_params": complexity.expected_params(arch),
        "initial_complexity": float(complexity(initial_arch)), "alpha_movement": movement,
        "complexity_normalization": s.get("complexity_normalization", "global"),
        "val": snapshots.val, "train": fitted["train"], "devices": mesh.size,
        "total_wall_time_s": time.perf_counter() - start,
    }
    results.write_json(workdir / "genotype.json", genotype.to_dict())
    results.write_json(workdir / "summary.json", summary, checksum=True)
    logging.info("Search done: %s; derived network %s params (%d cells, %d channels); α moved: softmax TV per "
                 "edge %.3f normal / %.3f reduce (mean), complexity %.4f → %.4f.",
                 genotypes.op_histogram(genotype), f"{summary['derived_params']:,}", r.layers, r.channels,
                 movement["normal"]["mean_tv"], movement["reduce"]["mean_tv"], summary["initial_complexity"],
                 summary["complexity"])
    return summary


# --- retrain -------------------------------------------------------------------------------


def retrain_step(state, batch, *, aux_weight: float):
    def loss_fn(params):
        (logits, aux), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            rngs=state.step_rng("dropout"), mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        if aux is not None and aux_weight:
            loss = loss + aux_weight * optax.softmax_cross_entropy_with_integer_labels(aux, batch["label"]).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                   "grad_norm": optax.tree.norm(grads)}


def retrain_eval_step(state, batch):
    logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"],
                               train=False)
    mask = batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"loss": jnp.sum(loss * mask), "accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def retrain(config, workdir: str) -> dict:
    """Trains the network of ``config.retrain.genotype`` from scratch and evaluates it."""
    workdir, start = results.start_run(config, workdir, "Retrain")
    r = config.retrain
    genotype = genotypes.load(r.genotype)
    mesh = train.make_mesh(config.mesh.num_devices)
    train_source = inputs.source(config, config.data.train_split, r.num_train_examples)
    eval_source = inputs.source(config, config.data.eval_split, r.num_eval_examples)
    info = train_source.info
    preprocess = inputs.preprocess(config, normalize=True)
    num_steps = train.steps_from_epochs(len(train_source), r.batch_size, r.epochs)
    train_iter = inputs.train_iterator(config, train_source, batch_size=r.batch_size, num_steps=num_steps,
                                       seed=config.seed, preprocess_config=preprocess)
    model = network.GenotypeNetwork(genotype, info.num_classes, r.channels, r.layers, auxiliary=r.auxiliary,
                                    drop_path_prob=r.drop_path_prob, impl=config.search.impl)
    schedule = optax.cosine_decay_schedule(r.learning_rate, num_steps)
    tx = optax.chain(optax.clip_by_global_norm(r.grad_clip), optax.add_decayed_weights(r.weight_decay),
                     optax.sgd(schedule, momentum=r.momentum))
    sample = jnp.zeros((1, *preprocess.output_shape(info.image_shape)), jnp.float32)
    state = jax.jit(functools.partial(train.create_train_state, model, tx, seed=config.seed, train=False),
                    out_shardings=train.replicated(mesh))(sample)
    num_params = network.param_count(state.params)
    logging.info("Retrain %s: %s params (auxiliary head excluded), %d steps of batch %d.",
                 genotype.meta.get("name", r.genotype), f"{num_params:,}", num_steps, r.batch_size)
    step = train.jit_train_step(functools.partial(retrain_step, aux_weight=r.aux_weight), mesh)
    eval_step = train.jit_eval_step(retrain_eval_step, mesh)

    batches = inputs.eval_batches(eval_source, config.train.eval_batch_size, preprocess)
    eval_fn = lambda state: train.evaluate(eval_step, state, batches(), mesh)  # noqa: E731

    loop = train.LoopConfig(num_steps=num_steps, batch_size=r.batch_size, log_every=config.train.log_every,
                            checkpoint_every=config.train.checkpoint_every, eval_every=None,
                            keep_checkpoints=config.train.keep_checkpoints)
    state, summary = train.fit(state=state, train_step=step, train_iter=train_iter, mesh=mesh,
                               workdir=str(workdir), config=loop, eval_fn=eval_fn)
    summary |= {"mode": "retrain", "genotype": genotype.to_dict(), "op_histogram": genotypes.op_histogram(genotype),
                "num_params": num_params, "dataset": info.name, "total_wall_time_s": time.perf_counter() - start}
    results.write_json(workdir / "summary.json", summary, checksum=True)
    logging.info("Retrain done: test accuracy %.4f, %s params.", summary["eval"].get("accuracy", float("nan")),
                 f"{num_params:,}")
    return summary
