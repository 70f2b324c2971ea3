"""Damaged run directories and unusable --out paths are clear errors (RunDirectoryError, `divjax: error:`),
raised when the directory is opened or before it is created: never a raw traceback, never after compiling."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from divjax import cli, engine, execution, runner
from divjax.rundir import RunDirectory, RunDirectoryError
from tests.helpers import TINY_FLAGS, tiny
from tests.test_reliability import _divjax


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A real run directory of divshare and swift, stopped during divshare with a checkpoint (never finished)."""
    configs = [tiny(algorithm=a, duration=2.0, eval_every=1.0) for a in ("divshare", "swift")]
    run = RunDirectory.create(tmp_path_factory.mktemp("interrupted") / "run", configs)
    runner.simulate(engine.build(configs[0]), progress=False,
                    after_evaluation=lambda p: run.save_progress("divshare", p.entries, p.write))
    return run.path


@pytest.fixture
def run_dir(interrupted, tmp_path) -> Path:
    """A copy of :func:`interrupted` to damage; it opens as it is."""
    path = Path(shutil.copytree(interrupted, tmp_path / "run"))
    RunDirectory.open(path)
    return path


@pytest.fixture
def no_compiling(monkeypatch) -> None:
    """Building a simulation (the step before compiling) is a test failure."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a simulation was built: the error came too late")
    monkeypatch.setattr(execution.engine, "build", refuse)


def _edit_status(path: Path, edit) -> None:
    status = json.loads((path / "status.json").read_text())
    (path / "status.json").write_text(json.dumps(edit(status)))


def _without(status: dict, key: str) -> dict:
    return {k: v for k, v in status.items() if k != key}


DAMAGED_STATUS = {  # (the config hash always left valid)
    "a list": (lambda s: [], r"it should hold a JSON object \(found \[\]\)"),
    "the hash alone": (lambda s: {"config_hash": s["config_hash"]}, r"'complete' should be true or false \(missing\)"),
    "complete not a bool": (lambda s: {**s, "complete": "no"}, r"'complete' should be true or false \(found \"no\"\)"),
    "finished a number": (lambda s: {**s, "finished": 5},
                          r"'finished' should be a list of algorithm names.* \(found 5\)"),
    "finished unknown": (lambda s: {**s, "finished": ["gossip"]},
                         r"'finished' should be .* out of divshare, swift \(found \[\"gossip\"\]\)"),
    "checkpoint a string": (lambda s: {**s, "checkpoint": "x"}, r"'checkpoint' should be null or .*\(found \"x\"\)"),
    "checkpoint elsewhere": (lambda s: {**s, "checkpoint": {**s["checkpoint"], "file": "../config.json"}},
                             r"'checkpoint' should be"),
    "complete, nothing finished": (lambda s: {**s, "complete": True}, r"'finished' should be every algorithm"),
    "complete without summaries": (lambda s: {**s, "complete": True, "finished": ["divshare", "swift"]},
                                   r"'summaries' should be .* \(missing\)"),
    "no environment": (lambda s: _without(s, "environment"), r"'environment' should be .* \(missing\)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_STATUS))
def test_a_damaged_status_json_is_named_when_opened(run_dir, damage):
    edit, message = DAMAGED_STATUS[damage]
    _edit_status(run_dir, edit)
    with pytest.raises(RunDirectoryError, match=rf"{re.escape(str(run_dir))}/status.json is damaged: {message}"):
        RunDirectory.open(run_dir)


def test_summaries_are_required_only_of_finished_algorithms(run_dir):
    _edit_status(run_dir, lambda s: {**s, "finished": ["swift"], "summaries": {"divshare": {}}})
    with pytest.raises(RunDirectoryError, match=r"'summaries' should be .*\(swift\) \(found \{\"divshare\": \{\}\}\)"):
        RunDirectory.open(run_dir)
    _edit_status(run_dir, lambda s: {**s, "summaries": {"swift": {}}})
    assert RunDirectory.open(run_dir).finished == ["swift"]


def test_a_config_json_that_is_not_utf8_is_named(run_dir):
    (run_dir / "config.json").write_bytes(b"\xff\xfe" + (run_dir / "config.json").read_bytes())
    with pytest.raises(RunDirectoryError, match=rf"{re.escape(str(run_dir))}/config.json is damaged: it is not UTF-8"):
        RunDirectory.open(run_dir)


def test_resume_without_metrics_csv_fails_before_compiling(run_dir, no_compiling, capsys):
    (run_dir / "metrics.csv").unlink()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["resume", str(run_dir), "--no-progress"])
    assert exit_.value.code == 2
    assert f"divjax: error: {run_dir}/metrics.csv is missing" in capsys.readouterr().err


def test_resume_of_a_damaged_status_json_is_a_clear_cli_error(run_dir):
    """End to end, as a user meets it: exit status 2, one `divjax: error:` line naming the field."""
    _edit_status(run_dir, lambda s: {**s, "finished": 5})
    proc = _divjax("resume", str(run_dir), "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"divjax: error: {run_dir}/status.json is damaged: 'finished' should be")


@pytest.mark.parametrize("out, overwrite", [("afile", True), ("afile", False), ("afile/sub", False)])
def test_an_out_path_that_cannot_be_a_directory_is_refused(tmp_path, out, overwrite):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(RunDirectoryError, match=rf"{re.escape(str(tmp_path / out))} (is not|cannot be) a directory"):
        RunDirectory.create(tmp_path / out, [tiny()], overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and (tmp_path / "afile").read_text() == "mine"


def test_run_into_a_file_with_overwrite_is_a_clear_cli_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", *TINY_FLAGS, "--duration", "2", "--out", str(tmp_path / "afile"), "--overwrite"])
    assert exit_.value.code == 2
    assert f"divjax: error: {tmp_path}/afile is not a directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_taken_out_is_refused_before_the_data_is_loaded(tmp_path, capsys, monkeypatch):
    """A non-empty --out fails at once: the user does not wait for the data and a compile to be told."""
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setattr(cli.engine, "build", lambda *a, **k: pytest.fail("built before checking --out"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", *TINY_FLAGS, "--duration", "2", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"divjax: error: {tmp_path} already exists and is not empty" in capsys.readouterr().err


def test_an_installed_divjax_inside_someone_elses_repository_records_no_commit(tmp_path, monkeypatch):
    """site-packages may lie inside an unrelated git checkout: its HEAD is not the code that made a result."""
    from divjax import rundir

    git = ["git", "-C", str(tmp_path), "-c", "user.name=someone", "-c", "user.email=someone@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "their project"], check=True)  # a HEAD to misreport
    installed = tmp_path / "venv" / "site-packages" / "divjax"
    installed.mkdir(parents=True)
    monkeypatch.setattr(rundir, "__file__", str(installed / "rundir.py"))
    assert rundir.source_commit() == "unknown"
