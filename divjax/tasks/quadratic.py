"""A least-squares task with a known optimum, for checking convergence theory (spec/paper.md §5).

Node i holds ``N`` rows ``a_ij ~ N(0, I_d)`` and targets ``b_ij = a_ij^T (x0 + zeta u_i) + sigma e_ij``, with
``x0 ~ N(0, I/d)`` shared, ``u_i ~ N(0, I/d)`` node-specific and ``e_ij ~ N(0, 1)``. Its objective is
``f_i(x) = (1/2N) ||A_i x - b_i||^2`` and the global objective ``f = (1/n) sum_i f_i``:

    f(x) = x^T H x / 2 - g^T x + c,   H = (1/n) sum_i A_i^T A_i / N,   g = (1/n) sum_i A_i^T b_i / N,

minimised at ``x* = H^{-1} g`` with ``f* = c - g^T x* / 2`` (:func:`objective`, computed in float64 from the
float32 data the simulation trains on). ``zeta`` sets the heterogeneity, ``(1/n) sum_i ||grad f_i(x*)||^2``
about ``zeta^2`` (exactly :meth:`QuadraticObjective.heterogeneity`), ``sigma`` the gradient noise at x*.
Every node starts from ``x = 0``.

Test set and metrics: 1,000 points ``a ~ N(0, I_d)`` labelled with the optimum's prediction ``a^T x*``.
``loss`` is ``mean (a^T x - a^T x*)^2 / 2``, about ``||x - x*||^2 / 2``; ``accuracy`` is the fraction of test
points predicted within ``tolerance`` of ``a^T x*``. As ``a^T (x - x*) ~ N(0, ||x - x*||^2)``, accuracy is
about ``erf(tolerance / (sqrt(2) ||x - x*||))``: a target accuracy is a distance to the optimum,
``||x - x*|| <= tolerance / z`` with z the two-sided normal quantile (accuracy 0.9: ``tolerance / 1.645``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from divjax.config import TaskConfig
from divjax.tasks.base import NodeShards, Params, TaskData, masked_mean

TEST_POINTS = 1000


@dataclass(frozen=True)
class QuadraticTask:
    """A linear model ``{"w": [d]}`` fitted by least squares (no intercept)."""

    dim: int = 10
    tolerance: float = 0.1
    name: str = "quadratic"
    eval_node_batch: int = 1024

    def init_params(self, key: jax.Array) -> Params:
        return {"w": jnp.zeros(self.dim, jnp.float32)}

    def loss(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        return masked_mean(0.5 * (x @ params["w"] - y) ** 2, mask)

    def evaluate(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        error = x @ params["w"] - y
        return {"accuracy": masked_mean((jnp.abs(error) <= self.tolerance).astype(jnp.float32), mask),
                "loss": masked_mean(0.5 * error ** 2, mask)}

    def objective(self, data: TaskData) -> QuadraticObjective:
        """The global objective of this task's data (see :func:`objective`)."""
        return objective(data)


@dataclass(frozen=True)
class QuadraticObjective:
    """The global objective ``f = (1/n) sum_i f_i`` of a quadratic task's training data, in float64.

    Attributes:
      inputs, targets: ``[n, N, d]`` rows ``a_ij`` and ``[n, N]`` targets ``b_ij`` of every node.
      hessian, linear, constant: ``H``, ``g``, ``c`` with ``f(x) = x^T H x/2 - g^T x + c``.
      optimum, optimal_value: ``x* = H^{-1} g`` and ``f* = f(x*)``.
    """

    inputs: np.ndarray
    targets: np.ndarray
    hessian: np.ndarray
    linear: np.ndarray
    constant: float
    optimum: np.ndarray
    optimal_value: float

    def value(self, x: np.ndarray) -> float:
        """``f(x)``."""
        return float(x @ self.hessian @ x / 2 - self.linear @ x + self.constant)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """``grad f(x) = H x - g``."""
        return self.hessian @ x - self.linear

    def node_gradients(self, x: np.ndarray) -> np.ndarray:
        """``[n, d]``: ``grad f_i(x) = A_i^T (A_i x - b_i) / N``."""
        residual = self.inputs @ x - self.targets
        return np.einsum("ijd,ij->id", self.inputs, residual) / self.targets.shape[1]

    def gradient_norm2(self, params: Params) -> float:
        """``||grad f(x_bar)||^2`` for a model ``{"w": [d]}``, or for stacked node models ``{"w": [n, d]}``
        (then x_bar is their average): the stationarity measure convergence theorems bound."""
        w = np.asarray(params["w"], np.float64)
        x_bar = w.mean(axis=0) if w.ndim == 2 else w
        return float(np.sum(self.gradient(x_bar) ** 2))

    def heterogeneity(self, x: np.ndarray | None = None) -> float:
        """``(1/n) sum_i ||grad f_i(x) - grad f(x)||^2`` at x (default x*): the zeta^2 of the theory."""
        x = self.optimum if x is None else x
        return float(np.mean(np.sum((self.node_gradients(x) - self.gradient(x)) ** 2, axis=1)))

    def gradient_variance(self, x: np.ndarray | None = None) -> float:
        """``(1/n) sum_i (1/N) sum_j ||grad l_ij(x) - grad f_i(x)||^2`` at x (default x*): the variance of a
        one-sample stochastic gradient (a minibatch of B rows drawn without replacement has at most 1/B of
        it): the sigma^2 of the theory."""
        x = self.optimum if x is None else x
        per_sample = self.inputs * (self.inputs @ x - self.targets)[..., None]
        return float(np.mean(np.sum((per_sample - self.node_gradients(x)[:, None]) ** 2, axis=2)))


def objective(data: TaskData) -> QuadraticObjective:
    """The exact global objective and optimum of a quadratic task's training shards (every node the same
    number of samples, as :func:`generate` makes them)."""
    a = np.asarray(data.train.x, np.float64)
    b = np.asarray(data.train.y, np.float64)
    sizes = np.asarray(data.train.sizes)
    if np.any(sizes != a.shape[1]):
        raise ValueError("the quadratic objective needs every node's shard full (no padding)")
    n, rows, _ = a.shape
    hessian = np.einsum("ijd,ije->de", a, a) / (n * rows)
    linear = np.einsum("ijd,ij->d", a, b) / (n * rows)
    constant = float(np.sum(b ** 2) / (2 * n * rows))
    optimum = np.linalg.solve(hessian, linear)
    return QuadraticObjective(inputs=a, targets=b, hessian=hessian, linear=linear, constant=constant,
                              optimum=optimum, optimal_value=constant - float(linear @ optimum) / 2)


def generate(cfg: TaskConfig, nodes: int, seed: int) -> TaskData:
    """Draw every node's rows and targets (numpy, deterministic in ``seed``), and the shared test set
    labelled with the exact optimum's predictions."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x0AD]))
    d, rows = cfg.dim, cfg.samples_per_node
    x0 = rng.normal(0.0, 1.0 / np.sqrt(d), d)
    local = x0 + cfg.zeta * rng.normal(0.0, 1.0 / np.sqrt(d), (nodes, d))
    a = rng.standard_normal((nodes, rows, d)).astype(np.float32)
    b = (np.einsum("ijd,id->ij", a, local) + cfg.sigma * rng.standard_normal((nodes, rows))).astype(np.float32)
    train = NodeShards(x=jnp.asarray(a), y=jnp.asarray(b), sizes=jnp.full(nodes, rows, jnp.int32),
                       size_floor=rows)
    optimum = objective(TaskData(train=train, test=train)).optimum
    test_x = rng.standard_normal((TEST_POINTS, d))
    test = NodeShards(x=jnp.asarray(test_x[None], jnp.float32), y=jnp.asarray((test_x @ optimum)[None], jnp.float32),
                      sizes=jnp.asarray([TEST_POINTS], jnp.int32))
    return TaskData(train=train, test=test)


def build(cfg: TaskConfig, nodes: int, seed: int) -> tuple[QuadraticTask, TaskData]:
    """The quadratic task of a config, with its data for ``nodes`` nodes."""
    return QuadraticTask(dim=cfg.dim, tolerance=cfg.tolerance), generate(cfg, nodes, seed)
