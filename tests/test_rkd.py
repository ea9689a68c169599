"""Paper A's RKD system and its two training stages on a tiny encoder and a fixed teacher."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rkdsc_jax import train
from rkdsc_jax.distill import rkd_steps
from rkdsc_jax.models import rkd, tosc

NUM_CLASSES, TEACHER_DIM = 4, 6


def _system():
    encoder = tosc.make_encoder("tinyvit", dims=(8, 16), depths=(1, 1), num_heads=(1, 2), windows=(7, 4))
    # 28 px → /4 patch embedding → 7×7 → merge → 4×4 = 16 tokens.
    return rkd.RKDSystem(encoder, NUM_CLASSES, TEACHER_DIM, num_tokens=16, cat_width=16, cat_depth=1, cat_heads=2,
                         symbols_per_token=2)


def _teacher():
    """A fixed linear 'teacher' on the mean pixel row: features and logits of known form."""
    w = jax.random.normal(jax.random.PRNGKey(7), (28, TEACHER_DIM))
    head = jax.random.normal(jax.random.PRNGKey(8), (TEACHER_DIM, NUM_CLASSES))

    def fn(variables, images):
        features = images[..., 0].mean(axis=1) @ variables["w"]
        return features, features @ variables["head"]

    return fn, {"w": w, "head": head}


def _state(model, lr=3e-3):
    images = jnp.zeros((1, 28, 28, 1))
    variables = jax.jit(functools.partial(model.init, method="init_all"))(jax.random.PRNGKey(0), images)
    return train.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                   batch_stats=variables["batch_stats"], tx=optax.adam(lr),
                                   rng=jax.random.PRNGKey(1))


def test_shapes_budget_mask_and_token_check():
    model = _system()
    state = _state(model)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = jax.random.uniform(jax.random.PRNGKey(2), (3, 28, 28, 1))
    stage1 = jax.jit(functools.partial(model.apply, method="stage1"))
    logits, projected = stage1(variables, images)
    assert logits.shape == (3, NUM_CLASSES) and projected.shape == (3, TEACHER_DIM)
    x, mask = jax.jit(functools.partial(model.apply, method="transmit"))(variables, images, 5.0, 0,
                                                                         jnp.array([3, 32, 10]))
    assert x.shape == (3, 64) and mask.shape == (3, 32)
    np.testing.assert_array_equal(mask.sum(-1), [3, 32, 10])
    # Symbols past the budget are zero in both the real and the imaginary half.
    assert float(jnp.abs(x[0, 3:32]).max()) == 0 and float(jnp.abs(x[0, 35:]).max()) == 0
    assert float(jnp.abs(x[0, :3]).max()) > 0
    with pytest.raises(ValueError, match="num_tokens=16"):
        stage1(variables, jnp.zeros((1, 40, 40, 1)))  # 25 tokens.


def test_stage1_learns_the_teachers_features_and_logits():
    model = _system()
    state = _state(model)
    teacher_fn, teacher_vars = _teacher()
    objective = rkd_steps.RKDObjective(ce_weight=0.0)
    step = jax.jit(lambda s, b: rkd_steps.stage1_step(s, b, teacher_vars, objective=objective, teacher_fn=teacher_fn))
    images = jax.random.uniform(jax.random.PRNGKey(3), (32, 28, 28, 1))
    batch = {"image": images, "label": jnp.zeros(32, jnp.int32)}
    history = []
    for _ in range(40):
        state, metrics = step(state, batch)
        history.append((float(metrics["feature"]), float(metrics["kd"])))
    first, last = np.array(history[:3]).mean(0), np.array(history[-3:]).mean(0)
    assert last[0] < 0.3 * first[0] and last[1] < 0.5 * first[1], history


@pytest.mark.parametrize("freeze", [False, True])
def test_stage2_trains_the_codec_and_freezes_the_encoder_on_request(freeze):
    model = _system()
    state = _state(model)
    teacher_fn, teacher_vars = _teacher()
    objective = rkd_steps.RKDObjective(budgets=(4, 16, 32), freeze_encoder=freeze)
    step = jax.jit(lambda s, b: rkd_steps.stage2_step(s, b, teacher_vars, objective=objective, teacher_fn=teacher_fn,
                                                      max_symbols=32))
    batch = {"image": jax.random.uniform(jax.random.PRNGKey(4), (16, 28, 28, 1)), "label": jnp.arange(16) % 4}
    before = state.params
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, state.params)
    decoder = {k: v for k, v in changed["cat_decoder"].items() if k != "to_tokens"}  # Token outputs: unused.
    assert all(jax.tree.leaves(changed["cat_encoder"])) and all(jax.tree.leaves(decoder))
    assert any(jax.tree.leaves(changed["encoder"])) != freeze
    assert not any(jax.tree.leaves(changed["projection"]))  # Stage 2 does not use the projection.


def test_stage2_eval_counts_and_high_snr_is_noise_free():
    model = _system()
    state = _state(model)
    batch = {"image": jax.random.uniform(jax.random.PRNGKey(5), (8, 28, 28, 1)), "label": jnp.arange(8) % 4,
             "index": jnp.arange(8), "mask": jnp.array([1.0] * 6 + [0.0] * 2)}
    evaluate = jax.jit(functools.partial(rkd_steps.stage2_eval_step, kind="awgn", num_symbols=8))
    sums = [evaluate(state, batch, 200.0, jax.random.PRNGKey(k)) for k in (0, 1)]
    assert float(sums[0]["count"]) == 6
    assert float(sums[0]["accuracy"]) == float(sums[1]["accuracy"])  # Noise-free: the key does not matter.
    with pytest.raises(ValueError, match="feature_loss"):
        rkd_steps.RKDObjective(feature_loss="l1")
