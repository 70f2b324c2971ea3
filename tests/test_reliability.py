"""Nothing lost, nothing silent: bad input, divergence, interruption and resume, determinism."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from divjax import cli, engine, runner
from divjax.config import ConfigError, NetworkConfig
from divjax.rundir import RunDirectory, RunDirectoryError
from tests.helpers import TINY_FLAGS, tiny


def _divjax(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "divjax.cli", *args], capture_output=True, text=True, **kwargs)


# ------------------------------------------------------------------------------------------ bad input

FLAG_VALUES = {
    "--nodes": st.one_of(st.integers(-3, 70), st.sampled_from(["x", "1.5", ""])),
    "--degree": st.integers(-2, 80),
    "--omega": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["half"])),
    "--dt": st.floats(-1, 2),
    "--step-time": st.floats(-1, 1),
    "--duration": st.floats(-10, 1e9),
    "--fast-mbps": st.floats(-1, 100),
    "--slowdown": st.floats(-1, 20),
    "--stragglers": st.integers(-1, 100),
    "--transport": st.sampled_from(["fifo", "shared", "tcp", ""]),
    "--network": st.sampled_from(["uniform", "stragglers", "diablo", "mesh"]),
    "--algorithms": st.sampled_from(["divshare", "swift,adpsgd", "dpsgd", "gossip", ","]),
    "--topology": st.sampled_from(["ring", "torus", "regular", "star"]),
    "--queue-capacity": st.integers(-1, 100),
    "--task": st.sampled_from(["synthetic", "cifar10", "imagenet"]),
    "--data-dir": st.sampled_from(["/nonexistent", "."]),
    "--eval-nodes": st.integers(-1, 100),
}


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: FLAG_VALUES[k] for k in keys})))
def test_fuzzed_command_lines_run_or_fail_clearly(flags):
    """Every command line is either refused with a ConfigError / usage error naming a value, or gives
    configs that build (everything short of compiling) - never another exception."""
    argv = ["run"] + [str(x) for flag, value in flags.items() for x in (flag, value)]
    try:
        args = cli._parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: a value of the wrong type
        assert exit_.code == 2
        return
    try:
        configs = cli.configs_from_args(args)
        for cfg in configs:
            if cfg.task.name == "synthetic" and cfg.nodes * cfg.duration / cfg.tick < 5e7:
                engine.build(cfg)
    except ConfigError as err:
        assert "is not allowed" in str(err) or "unknown config field" in str(err)


def test_queue_capacity_below_one_round_is_refused():
    with pytest.raises(ConfigError, match=r"queue_capacity=3 is not allowed: a divshare node queues 4"):
        engine.build(tiny(queue_capacity=3, omega=0.5))  # J * m = 2 * 2


def test_capacity_overflow_can_be_an_error():
    cfg = tiny(algorithm="swift", queue_capacity=2, snapshot_slots=2, on_capacity="error",
               network=NetworkConfig(stragglers=1, slowdown=50.0, fast_mbps=0.02))
    with pytest.raises(runner.CapacityError, match="lost to capacity"):
        runner.run(cfg, progress=False)


# ------------------------------------------------------------------------------------------ divergence


def _with_nan_in_node(sim, node: int, value: float = jnp.nan):
    state = sim.initial_state()
    params = {k: {n: v.at[node].set(value) for n, v in layer.items()} for k, layer in state.params.items()}
    return runner.Progress(state=state.replace(params=params), entries=[], node_accuracy=[], done=0)


def test_nan_in_one_node_stops_the_run_with_its_id():
    sim = engine.build(tiny(duration=4.0, eval_every=1.0))
    seen = []
    with pytest.raises(runner.DivergenceError, match=r"1 node\(s\) \(3\) hold NaN or inf at t = 1 s") as err:
        runner.simulate(sim, progress=False, resume=_with_nan_in_node(sim, 3),
                        after_evaluation=lambda p: seen.append(len(p.entries)))
    assert err.value.nodes.tolist() == [3]
    assert seen == [1]  # the evaluation that found it was still handed over (and would be written)


def test_a_finite_model_whose_loss_overflows_has_diverged():
    # Weights of 1e30 are finite, but their logits and test loss are not (what a huge lr leaves behind).
    sim = engine.build(tiny(duration=4.0, eval_every=1.0, lr=1e-9))
    with pytest.raises(runner.DivergenceError, match=r"1 node\(s\) \(4\) hold NaN or inf at t = 1 s"):
        runner.simulate(sim, progress=False, resume=_with_nan_in_node(sim, 4, value=1e30))


def test_divergence_can_be_carried_on_with_nodes_marked():
    sim = engine.build(tiny(duration=3.0, eval_every=1.0, on_divergence="continue"))
    with pytest.warns(UserWarning, match="NaN or inf"):
        result = runner.simulate(sim, progress=False, resume=_with_nan_in_node(sim, 2))
    assert result.history["time"].tolist() == [1.0, 2.0, 3.0]  # the run went on to its end
    finite = np.isfinite(np.asarray(engine.flatten_models(result.state.params))).all(axis=1)
    assert not finite[2]  # node 2 is still marked (its NaN is never mixed away)
    assert result.history["diverged_nodes"][-1] == np.sum(~finite) >= 1
    assert np.all(np.diff(result.history["diverged_nodes"]) >= 0)  # NaN only spreads


# ------------------------------------------------------------------------------------------ run directories


def test_existing_run_directory_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = _divjax("run", *TINY_FLAGS, "--duration", "2", "--out", str(out))
    assert proc.returncode == 2 and "already exists and is not empty" in proc.stderr
    assert (out / "notes.txt").read_text() == "mine"
    proc = _divjax("run", *TINY_FLAGS, "--algorithms", "divshare", "--duration", "2", "--out", str(out),
                   "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "status.json").read_text())["complete"]


def test_a_diverging_seed_among_vmapped_seeds_stops_only_itself(tmp_path):
    from divjax import execution
    from divjax.rundir import RunDirectory

    runs = [RunDirectory.create(tmp_path / f"seed{seed}", [tiny(duration=4.0, eval_every=1.0, seed=seed, lr=lr)])
            for seed, lr in ((0, 0.05), (1, 1e8))]  # lr 1e8 diverges at t = 3 s
    with pytest.raises(runner.DivergenceError):
        execution.execute_together(runs, progress=False)
    # The group stopped at the diverging seed's evaluation, so each seed ran again alone: seed 0 finished.
    assert runs[0].complete and len(runs[0].rows()) == 5 and "vmapped_with" not in runs[0].status
    assert not runs[1].complete


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    cfg = tiny(duration=3.0, eval_every=1.0)
    run = RunDirectory.create(tmp_path / "run", [cfg])
    sim = engine.build(cfg)
    runner.simulate(sim, progress=False,
                    after_evaluation=lambda p: run.save_progress(cfg.algorithm, p.entries, p.write))
    (checkpoint,) = (tmp_path / "run").glob("checkpoint-*.npz")
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(RunDirectoryError, match=r"checkpoint-\w+\.npz is corrupted"):
        RunDirectory.open(tmp_path / "run").load_checkpoint(cfg.algorithm)
    proc = _divjax("resume", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 1 and "is corrupted" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoints_stream_to_disk_without_a_copy_of_the_state(tmp_path):
    """A checkpoint is written array by array: no host copy of a big leaf (the snapshot ring) is ever made
    whole (the msgpack checkpoints built ~3 copies and ran the MovieLens baselines out of memory)."""
    ring = jnp.arange(1 << 26, dtype=jnp.float32)  # 256 MiB
    progress = runner.Progress(state={"ring": ring, "tick": jnp.int32(7)}, entries=[{"time": 1.5}],
                               node_accuracy=[np.zeros(3)], done=7)
    run = RunDirectory.create(tmp_path / "run", [tiny()])
    tracemalloc.start()
    try:
        run.save_progress("divshare", progress.entries, progress.write)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < ring.nbytes / 4, f"writing a checkpoint allocated {peak / 2**20:.0f} MiB on the host"
    with np.load(run.load_checkpoint("divshare")) as data:
        assert np.array_equal(data["state_00000"], np.asarray(ring)) and int(data["state_00001"]) == 7
        assert int(data["done"]) == 7


def test_resume_of_a_complete_run_does_nothing(tmp_path):
    out = tmp_path / "run"
    assert _divjax("run", *TINY_FLAGS, "--algorithms", "dpsgd", "--duration", "2", "--out", str(out)).returncode == 0
    proc = _divjax("resume", str(out))
    assert proc.returncode == 0 and "is complete" in proc.stdout


def _kill_when(out: Path, rows: int, extra_delay: float, env: dict, timeout: float = 240.0) -> None:
    """Start a run and SIGKILL it once metrics.csv holds ``rows`` rows (plus a random delay)."""
    proc = subprocess.Popen([sys.executable, "-m", "divjax.cli", "run", *RUN_FLAGS, "--out", str(out),
                             "--checkpoint-every", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.csv"
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) > rows:
                time.sleep(extra_delay)
                break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        proc.wait()


RUN_FLAGS = [*TINY_FLAGS, "--algorithms", "divshare,adpsgd", "--duration", "12", "--eval-every", "0.5"]


def _shared_compilation_cache(tmp_path: Path) -> dict:
    """An environment in which every divjax process compiles a program once for all of them (JAX's
    persistent cache): the kills then land in the simulation, not in compilation, and the test is ~2x faster."""
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def test_killed_run_resumes_bit_identical(tmp_path):
    env = _shared_compilation_cache(tmp_path)
    reference = tmp_path / "uninterrupted"
    assert _divjax("run", *RUN_FLAGS, "--out", str(reference), env=env).returncode == 0
    expected = (reference / "metrics.csv").read_text()
    summaries = json.loads((reference / "status.json").read_text())["summaries"]
    rng = random.Random(0)
    resumed_runs = 0
    for trial, rows in enumerate((3, 20, 35)):  # in the first algorithm, late in it, in the second
        out = tmp_path / f"killed{trial}"
        _kill_when(out, rows, rng.uniform(0, 0.3), env)
        status = json.loads((out / "status.json").read_text())
        if status["complete"]:
            continue  # the kill came too late to matter
        resumed_runs += 1
        proc = _divjax("resume", str(out), "--no-progress", env=env)
        assert proc.returncode == 0, proc.stderr
        assert (out / "metrics.csv").read_text() == expected  # bit for bit
        resumed = json.loads((out / "status.json").read_text())["summaries"]
        for algorithm, summary in summaries.items():
            for key, value in summary.items():
                if "second" not in key:  # wall time and throughput differ, the simulation does not
                    assert resumed[algorithm][key] == value, (algorithm, key)
    assert resumed_runs >= 2


def test_corrupted_data_file_is_a_clear_error_before_any_run_directory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ml-latest-small.zip").write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "run"
    proc = _divjax("run", "--task", "movielens", "--data-dir", str(data), "--out", str(out), "--no-progress")
    assert proc.returncode == 2
    assert "ml-latest-small.zip" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
