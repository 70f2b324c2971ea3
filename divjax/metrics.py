"""Evaluation of a running simulation, and the summary figures of a finished one.

``evaluate`` is compiled once per spec and vmapped over nodes: every node's model on the task's test set
(mean, min and max across nodes are what runs report), the average model, the consensus distance
``(1/n) sum_i ||x_i - mean x||^2``, and the mean training loss since the last evaluation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from divjax.state import SimParams, SimSpec, SimState, flatten_models

EVAL_BLOCK_ROWS = 1 << 20  # test samples scored at once, summed over the models of a block


@functools.partial(jax.jit, static_argnums=(0,))
def evaluate(spec: SimSpec, p: SimParams, s: SimState, nodes: jax.Array) -> dict[str, jax.Array]:
    """Test metrics of the models of ``nodes`` (``node_*`` arrays, one entry per listed node), of the
    average model over all nodes (``average_model_*``), the consensus distance and the training loss.

    Nodes are evaluated ``task.eval_node_batch`` at a time, and never more than ``EVAL_BLOCK_ROWS`` test rows
    at once (``lax.map``), which bounds the memory of big models on big test sets. A node's model is scored
    on its own test set, or on the shared one.
    """
    task, test = spec.task, p.data.test
    masks = test.mask()
    shared = p.data.shared_test

    def score(node: jax.Array) -> dict[str, jax.Array]:
        params = jax.tree.map(lambda x: x[node], s.params)
        t = 0 if shared else node
        return task.evaluate(params, test.x[t], test.y[t], masks[t])

    # A block scores (block x test rows) samples at once: with a shared test set that grows with n (the
    # synthetic task's), n models at once would need memory in n^2.
    block = min(task.eval_node_batch, nodes.shape[0], max(1, EVAL_BLOCK_ROWS // test.y.shape[1]))
    per_node = jax.lax.map(score, nodes, batch_size=block)
    average = jax.tree.map(lambda x: jnp.mean(x, axis=0), s.params)
    if shared:
        average_metrics = task.evaluate(average, test.x[0], test.y[0], masks[0])
    else:  # the union of every node's test set
        flat = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
        average_metrics = task.evaluate(average, flat(test.x), flat(test.y), flat(masks))
    flat_models = flatten_models(s.params)
    train_loss = s.train_loss_sum / jnp.maximum(s.train_loss_steps, 1)
    return {
        **{f"node_{k}": v for k, v in per_node.items()},
        **{f"average_model_{k}": v for k, v in average_metrics.items()},
        "consensus_distance": consensus_distance(flat_models),
        "train_loss": jnp.where(s.train_loss_steps > 0, train_loss, jnp.nan),
        "finite": _finite_nodes(flat_models, s.train_loss_sum, nodes, per_node["loss"]),
    }


def _finite_nodes(flat_models: jax.Array, train_loss_sum: jax.Array, evaluated: jax.Array,
                  test_loss: jax.Array) -> jax.Array:
    """Which nodes have not diverged: model, training loss since the last evaluation and (for the evaluated
    nodes) test loss all finite. A model can stay finite while its loss overflows (weights of 1e20 after a
    huge learning rate), so the losses are checked too."""
    finite = jnp.all(jnp.isfinite(flat_models), axis=1) & jnp.isfinite(train_loss_sum)
    return finite.at[evaluated].set(finite[evaluated] & jnp.isfinite(test_loss))


def consensus_distance(flat_models: jax.Array) -> jax.Array:
    """``(1/n) sum_i ||x_i - x_bar||^2`` of flat models ``[n, d]``."""
    return jnp.mean(jnp.sum((flat_models - jnp.mean(flat_models, axis=0)) ** 2, axis=1))


def reset_train_loss(s: SimState) -> SimState:
    """Start a new training-loss window (after an evaluation)."""
    return s.replace(train_loss_sum=jnp.zeros_like(s.train_loss_sum),
                     train_loss_steps=jnp.zeros_like(s.train_loss_steps))


def time_to_target(times: np.ndarray, values: np.ndarray, target: float) -> float:
    """First evaluation time at which ``values`` reaches ``target``; ``inf`` if it never does."""
    reached = np.flatnonzero(np.asarray(values) >= target)
    return float(times[reached[0]]) if reached.size else float("inf")


def delivery_ratio(delivered: np.ndarray, sent: np.ndarray, nodes: np.ndarray) -> float:
    """Share of the messages sent by ``nodes`` that landed (``nan`` if they sent none)."""
    total = sent[nodes].sum()
    return float(delivered[nodes].sum() / total) if total else float("nan")
