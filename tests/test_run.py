"""The Python API and the `divjax run` command, end to end on tiny configurations."""

import csv
import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from jax.errors import JaxRuntimeError

import divjax
from divjax import cli, engine, network
from divjax.config import Config, ConfigError, NetworkConfig, TaskConfig
from tests.helpers import TINY_FLAGS, tiny


def test_api_runs_and_reports():
    result = divjax.run(tiny(duration=10.0), progress=False)
    h = result.history
    assert h["time"].tolist() == [0.0, 5.0, 10.0]
    assert result.node_accuracy.shape == (3, 6)
    assert np.all((h["min_accuracy"] <= h["mean_accuracy"]) & (h["mean_accuracy"] <= h["max_accuracy"]))
    summary = result.summary()
    assert summary["algorithm"] == "divshare" and summary["messages_sent"] > 0
    assert 0 <= summary["delivery_ratio_stragglers"] <= 1 and 0 <= summary["delivery_ratio_fast"] <= 1
    assert len(result.rows()) == 3
    assert result.stragglers.tolist() == [0]
    # The delivery ratios: messages the straggler (node 0) and the others sent that landed.
    delivered, sent = result.counters["delivered"], result.counters["sent"]
    assert summary["delivery_ratio_stragglers"] == pytest.approx(delivered[0] / sent[0])
    assert summary["delivery_ratio_fast"] == pytest.approx(delivered[1:].sum() / sent[1:].sum())


def test_time_to_target_is_the_first_evaluation_at_or_above_it():
    result = divjax.run(tiny(duration=15.0), progress=False)
    times, accuracy = result.history["time"], result.history["mean_accuracy"]
    assert accuracy[1] < accuracy[3]  # the run learns: a target between them is reached after t = 5
    def at(target):
        return dataclasses.replace(result, config=result.config.replace(target_accuracy=target)).summary()
    assert at(float(accuracy[3]))["time_to_target_s"] == times[np.argmax(accuracy >= accuracy[3])]  # >=, not >
    assert at(float(accuracy.max()) + 1e-6)["time_to_target_s"] == float("inf")
    assert at(0.0)["time_to_target_s"] == 0.0


def test_a_custom_networks_stragglers_are_its_slow_nodes(tmp_path):
    """The stragglers (whose delivery ratio the summary reports apart) come from the network that ran, not
    from the config's preset it replaced."""
    net = network.stragglers(6, count=0, fast_mbps=0.5, latency_ms=2.0)
    slow = dataclasses.replace(net, up_bps=net.up_bps * np.array([1, 1, 1, 1, 0.25, 0.25]))
    assert slow.stragglers().tolist() == [4, 5] and net.stragglers().size == 0
    result = divjax.run(tiny(duration=5.0), network=slow, progress=False)
    assert result.stragglers.tolist() == [4, 5]
    # One run directory holds one configuration: results differing in more than the algorithm are refused.
    other_seed = divjax.run(tiny(duration=5.0, seed=1, algorithm="swift"), progress=False)
    with pytest.raises(ValueError, match="differs from the divshare one in seed"):
        divjax.write_run_dir([result, other_seed], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()


def test_training_learns():
    result = divjax.run(tiny(duration=30.0, local_steps=8), progress=False)
    assert result.history["mean_accuracy"][-1] > result.history["mean_accuracy"][0] + 0.1


def test_same_seed_same_numbers_and_no_recompilation():
    first = divjax.build(tiny(seed=7))
    second = divjax.build(tiny(seed=7, lr=0.1, network=divjax.NetworkConfig(stragglers=2, fast_mbps=0.3)))
    third = divjax.build(tiny(seed=8))
    assert first.spec == second.spec == third.spec
    traces = engine.TRACES[first.spec]
    states = [engine.advance(sim, sim.initial_state(), 40) for sim in (first, first, second, third)]
    assert engine.TRACES[first.spec] - traces <= 1  # compiled at most once for all four runs
    flat = [np.asarray(engine.flatten_models(s.params)) for s in states]
    np.testing.assert_array_equal(flat[0], flat[1])  # same seed: bit-identical
    assert not np.array_equal(flat[0], flat[3])


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    code = cli.main(["run", "--algorithms", "divshare,swift", "--nodes", "6", "--degree", "2",
                     "--local-steps", "4", "--step-time", "0.25", "--duration", "6", "--eval-every", "3",
                     "--stragglers", "1", "--fast-mbps", "0.5", "--out", str(out), "--no-progress"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.csv", "summary.json", "accuracy.png",
                                              "status.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["algorithms"] == ["divshare", "swift"] and config["config"]["nodes"] == 6
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["algorithm"] for r in rows] == ["divshare"] * 3 + ["swift"] * 3
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # The run directory's config.json runs again from the CLI.
    again = cli.configs_from_args(cli._parser().parse_args(["run", "--config", str(out / "config.json")]))
    assert [c.algorithm for c in again] == ["divshare", "swift"] and again[0].nodes == 6  # its own algorithms
    other = cli._parser().parse_args(["run", "--config", str(out / "config.json"), "--algorithms", "adpsgd"])
    assert [c.algorithm for c in cli.configs_from_args(other)] == ["adpsgd"]


@pytest.mark.parametrize("flags, message", [
    (["--degree", "60", "--nodes", "60"], "degree=60 is not allowed"),
    (["--omega", "0"], "omega=0.0 is not allowed"),
    (["--dt", "-1"], "dt=-1.0 is not allowed"),
    (["--fast-mbps", "0"], "network.fast_mbps=0.0 is not allowed"),
    (["--algorithms", "divshare,gossip"], "algorithm='gossip' is not allowed"),
    (["--transport", "tcp"], "network.transport='tcp' is not allowed"),
])
def test_cli_bad_input_is_a_clear_error(flags, message):
    proc = subprocess.run([sys.executable, "-m", "divjax.cli", "run", *flags], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["run", "--algorithms", "divshare,divshare"], "algorithms=divshare,divshare is not allowed: name each"),
    (["run", "--checkpoint-every", "nan"], "--checkpoint-every: 'nan' is not allowed"),
    (["run", "--checkpoint-every", "-1"], "--checkpoint-every: '-1' is not allowed"),
    (["run", "--eval-every", "1", "--eval-every-iterations", "2"], "are not allowed together"),
    (["run", "--data-dir", "."], "task.data_dir='.' is not allowed: the synthetic task generates its data"),
    (["run", "--test-samples", "100"], "task.test_samples=100 is not allowed: only the cifar10 task"),
    (["run", "--batch-size", "1000000000"], "nodes * local_steps * batch_size=1920000000000 is not allowed"),
    (["run", "--omega", "0.0001"], "omega=0.0001 is not allowed: it cuts the model's d=2282"),
    (["run", "--config", "."], "--config .: cannot be read"),
    (["reproduce", "main", "--task", "synthetic", "--scale", "tiny", "--notes", "/nonexistent/notes.md"],
     "--notes /nonexistent/notes.md: no such file"),
])
def test_cli_refuses_values_it_would_ignore_or_choke_on(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before any run directory was written


@pytest.mark.parametrize("config, message", [
    ({"network": 5}, "network=5 is not allowed: expected a"),
    ({"task": "synthetic"}, "task='synthetic' is not allowed: expected a"),
    # A run directory's config.json is read by the same rules as `divjax resume` reads it.
    ({"config": {}, "algorithms": 5}, 'it should hold {"algorithms": [names]'),
    ({"config": {}}, 'it should hold {"algorithms": [names]'),
    ({"config": {}, "algorithms": []}, "algorithms=[] is not allowed"),  # not silently the default three
    ({"config": {}, "algorithms": ["swift", "swift"]}, "algorithms=swift,swift is not allowed"),
], ids=["network", "task", "algorithms", "no-algorithms", "empty-algorithms", "repeated-algorithms"])
def test_cli_config_files_of_the_wrong_shape_are_refused(config, message, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=re.escape(message)):
        cli.configs_from_args(cli._parser().parse_args(["run", "--config", str(path)]))


def test_running_out_of_memory_is_a_clear_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 512000000000 bytes.")

    monkeypatch.setattr(cli, "execute", exhausted)
    code = cli.main(["run", *TINY_FLAGS, "--duration", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "divjax: error: out of memory (RESOURCE_EXHAUSTED" in err and "lower nodes" in err
    assert f"{tmp_path / 'run'} is marked incomplete" in err
    assert not json.loads((tmp_path / "run" / "status.json").read_text())["complete"]


def test_running_out_of_memory_while_building_is_a_clear_error_with_no_run_directory(tmp_path, capsys,
                                                                                      monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.2 TiB for an array")

    monkeypatch.setattr(cli.engine, "build", exhausted)
    code = cli.main(["run", *TINY_FLAGS, "--duration", "1", "--out", str(tmp_path / "run")])
    assert code == 1 and "divjax: error: out of memory (Unable to allocate 3.2 TiB" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_xla_error_that_is_not_out_of_memory_is_not_disguised_as_one(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(cli, "execute", broken)
    with pytest.raises(JaxRuntimeError, match="INTERNAL: something else"):
        cli.main(["run", *TINY_FLAGS, "--duration", "1", "--out", str(tmp_path / "run")])


def test_cli_help_documents_every_flag():
    text = cli._parser()._subparsers._group_actions[0].choices["run"].format_help()
    for flag in ("--algorithms", "--nodes", "--degree", "--omega", "--stragglers", "--network", "--dt",
                 "--duration", "--seed", "--out", "--transport"):
        assert flag in text


def test_a_duration_ending_mid_iteration_gets_a_note():
    assert cli.mid_iteration_note(divjax.Config()) is None  # 800 s of 1.6 s iterations
    note = cli.mid_iteration_note(divjax.Config(duration=100.0))
    assert "not a whole number of iterations (1.6 s)" in note and "99.2 or 100.8 ends on a boundary" in note
    assert "0 or" not in cli.mid_iteration_note(divjax.Config(duration=1.0))


def test_every_config_field_is_a_flag():
    """The README promises it: a field added to the config without a flag fails here."""
    fields = {f.name for f in dataclasses.fields(Config)} - {"network", "task", "algorithm"}  # --algorithms
    fields |= {f"network.{f.name}" for f in dataclasses.fields(NetworkConfig)}
    fields |= {f"task.{f.name}" for f in dataclasses.fields(TaskConfig)}
    assert fields == {name for _, name, _, _ in cli._FIELDS}
