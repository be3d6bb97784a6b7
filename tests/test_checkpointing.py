"""Checkpoints: a run saved before a training metric existed still resumes (the new sum starts at zero)."""
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpointing, sharding, step


def small_state(sums):
    return step.TrainState(step=jnp.asarray(7, jnp.int32), params={"w": jnp.arange(3.0)}, batch_stats={},
                           opt_state=(), rng=jax.random.PRNGKey(0), warmup=jnp.asarray(False),
                           error_ema=jnp.asarray(0.5), sums=sums)


def test_restore_fills_a_metric_the_checkpoint_lacks_and_drops_a_removed_one(tmp_path):
    mesh = sharding.make_mesh()
    replicated = sharding.replicated(mesh)
    old = jax.device_put(small_state({"loss": jnp.asarray(3.0), "gone": jnp.asarray(1.0), "count": jnp.asarray(2.0)}),
                         replicated)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(7, old, {"wandb_run_id": "abc"})
    ckpt.close()

    now = small_state({"loss": jnp.zeros(()), "error": jnp.zeros(()), "count": jnp.zeros(())})
    abstract = checkpointing.abstract_with_sharding(jax.eval_shape(lambda: now), replicated)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    state, meta, filled = ckpt.restore(7, abstract)
    ckpt.close()
    assert filled == ["error"] and meta["wandb_run_id"] == "abc" and len(meta["digest"]) == 64
    assert set(state.sums) == {"loss", "error", "count"}
    assert float(state.sums["loss"]) == 3.0 and float(state.sums["error"]) == 0.0 and float(state.sums["count"]) == 2.0
    assert state.sums["error"].sharding.is_equivalent_to(replicated, 0)
    np.testing.assert_array_equal(state.params["w"], [0.0, 1.0, 2.0])
    assert int(state.step) == 7
