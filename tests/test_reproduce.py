"""`divjax reproduce`: the experiment grids, a tiny version of every experiment end to end, resumption, and
the verdict rules of REPRODUCTION.md."""

import csv
import json
import math
import re

import pytest

from divjax import claims, cli, reproduce
from divjax.config import ConfigError
from tests.helpers import CIFAR, MOVIELENS, needs_cifar, needs_movielens

EXPECTED_ROWS = {"main": 10, "degree": 12, "stragglers": 21, "diablo": 5, "transport": 6, "compute": 9}


@pytest.mark.parametrize("experiment", reproduce.EXPERIMENTS)
def test_grids_have_the_papers_settings(experiment):
    rows = reproduce.experiment_rows(experiment, "synthetic", "full")
    assert len(rows) == EXPECTED_ROWS[experiment]
    assert len({(r.method.slug, r.setting) for r in rows}) == len(rows)
    for row in rows:
        assert row.config.nodes == 60 and row.config.algorithm == row.method.algorithm
        if row.method.algorithm == "divshare":
            assert row.config.omega == row.method.omega


def test_settings_reach_the_configs():
    by = {(r.method.slug, r.setting): r.config for r in reproduce.experiment_rows("stragglers", "synthetic")}
    cfg = by[("swift", "stragglers30x10")]
    assert (cfg.network.stragglers, cfg.network.slowdown) == (30, 10.0)
    assert by[("adpsgd", "no-stragglers")].network.stragglers == 0
    degree = reproduce.experiment_rows("degree", "synthetic", settings=["degree12-stragglers7x5"])
    assert {r.config.degree for r in degree} == {12}
    compute = reproduce.experiment_rows("compute", "synthetic", methods=["swift"])
    assert [round(r.config.step_time * r.config.local_steps, 9) for r in compute] == [0.8, 1.6, 3.2]
    assert reproduce.experiment_rows("transport", "synthetic", methods=["swift"])[1].config.network.transport == "shared"
    assert {r.config.network.preset for r in reproduce.experiment_rows("diablo", "synthetic")} == {"diablo"}


def test_tiny_scale_scales_straggler_counts_and_keeps_the_iteration_time():
    full = reproduce.experiment_rows("main", "synthetic", "full", settings=["stragglers7x5"])[0].config
    tiny = reproduce.experiment_rows("main", "synthetic", "tiny", settings=["stragglers7x5"])[0].config
    assert tiny.network.stragglers == round(7 * tiny.nodes / 60)
    assert tiny.step_time * tiny.local_steps == pytest.approx(full.step_time * full.local_steps)


@pytest.mark.parametrize("bad", [dict(experiment="fig9"), dict(methods=["dpsgd"]), dict(settings=["stragglers8x5"]),
                                 dict(scale="huge")])
def test_bad_grid_arguments_are_named(bad):
    args = dict(experiment="main", task="synthetic", scale="tiny", methods=None, settings=None) | bad
    with pytest.raises(ConfigError, match=str(next(iter(bad.values()))).strip("[]'")):
        reproduce.experiment_rows(args["experiment"], args["task"], args["scale"], None, args["methods"],
                                  args["settings"])


def _summary(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("experiment", reproduce.EXPERIMENTS)
def test_every_experiment_runs_tiny(tmp_path, experiment):
    # Every setting of every experiment; a baseline too in main only (a compilation per row: the suite's time).
    methods = {"divshare-0.1", "adpsgd"} if experiment == "main" else {"divshare-0.1"}
    code = cli.main(["reproduce", experiment, "--task", "synthetic", "--scale", "tiny", "--methods",
                     ",".join(sorted(methods)), "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    where = tmp_path / f"synthetic-{experiment}"
    rows = _summary(where / "summary.csv")
    settings = list(dict.fromkeys(r.setting for r in reproduce.experiment_rows(experiment, "synthetic", "tiny")))
    # Every setting ran, and tables and plots list them in the grid's order (degree 3, 6, 9, 12; not 12, 3, ...).
    assert list(dict.fromkeys(r["setting"] for r in rows)) == settings and {r["method"] for r in rows} == methods
    assert all(float(r["messages_lost_to_capacity"]) == 0 for r in rows)
    # Which code made each row: this checkout's commit (+dirty with local changes), "unknown" outside git.
    assert all(re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?|unknown", r["commit"]) for r in rows)
    assert (where / "curves.png").stat().st_size > 0 and (where / "bars.png").stat().st_size > 0
    assert (tmp_path / "REPRODUCTION.md").is_file()


def test_a_reproduction_continues_where_it_stopped(tmp_path):
    args = ["reproduce", "main", "--task", "synthetic", "--scale", "tiny", "--methods", "divshare-0.1",
            "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args + ["--settings", "no-stragglers"]) == 0
    first = _summary(tmp_path / "synthetic-main" / "summary.csv")
    assert cli.main(args) == 0  # the finished row is kept, the other one runs
    both = _summary(tmp_path / "synthetic-main" / "summary.csv")
    assert len(first) == 1 and len(both) == 2
    assert [r for r in both if r["setting"] == "no-stragglers"] == first
    assert cli.main(args + ["--scale", "full"]) == 1  # another scale in the same directory is refused
    (tmp_path / "synthetic-main" / "summary.csv").unlink()
    (tmp_path / "REPRODUCTION.md").unlink()
    assert cli.main(["reproduce", "--report", "--out", str(tmp_path)]) == 0  # rebuilt from the run directories
    assert _summary(tmp_path / "synthetic-main" / "summary.csv") == both
    assert "synthetic — main" in (tmp_path / "REPRODUCTION.md").read_text()


def test_a_row_another_experiment_already_ran_is_copied_not_run_again(tmp_path):
    common = ["--task", "synthetic", "--scale", "tiny", "--methods", "divshare-0.1", "--no-progress"]
    assert cli.main(["reproduce", "main", *common, "--settings", "stragglers7x5", "--out", str(tmp_path)]) == 0
    assert cli.main(["reproduce", "degree", *common, "--settings", "degree6-stragglers7x5,degree3-stragglers7x5",
                     "--out", str(tmp_path)]) == 0
    rows = {r["setting"]: r for r in _summary(tmp_path / "synthetic-degree" / "summary.csv")}
    assert rows["degree6-stragglers7x5"]["copied_from"] == "synthetic-main/divshare-0.1/stragglers7x5/seed0"
    assert rows["degree3-stragglers7x5"]["copied_from"] == ""  # J = 3 is no other experiment's row: it ran
    # The copy is what running the row would write: the same row run alone, into another directory.
    assert cli.main(["reproduce", "degree", *common, "--settings", "degree6-stragglers7x5",
                     "--out", str(tmp_path / "alone")]) == 0
    run = "divshare-0.1/degree6-stragglers7x5/seed0/metrics.csv"
    copied, alone = (tmp_path / "synthetic-degree" / run), (tmp_path / "alone" / "synthetic-degree" / run)
    assert copied.read_text() == alone.read_text() and len(copied.read_text().splitlines()) > 2
    assert "1 run(s) copied from the identical row" in (tmp_path / "REPRODUCTION.md").read_text()
    # A copy of a copy names the run that was made: compute's row at the preset's iteration is main's too.
    assert cli.main(["reproduce", "compute", *common, "--settings", "iteration1.6s-stragglers7x5",
                     "--out", str(tmp_path)]) == 0
    (row,) = _summary(tmp_path / "synthetic-compute" / "summary.csv")
    assert row["copied_from"] == "synthetic-main/divshare-0.1/stragglers7x5/seed0"


def test_vmapped_seeds_match_seeds_run_one_after_another(tmp_path, monkeypatch, capsys):
    from divjax import execution, sweep

    args = ["reproduce", "main", "--task", "synthetic", "--scale", "tiny", "--methods", "divshare-0.1",
            "--settings", "stragglers7x5", "--seeds", "2", "--no-progress", "--vmap-seeds"]
    compiled = sum(sweep.TRACES.values())
    assert cli.main(args + ["--out", str(tmp_path / "vmapped")]) == 0
    assert sum(sweep.TRACES.values()) == compiled + 1  # both seeds in one compiled program
    status = json.loads((tmp_path / "vmapped/synthetic-main/divshare-0.1/stragglers7x5/seed1/status.json").read_text())
    assert status["vmapped_with"] == 2

    # Where the seeds cannot run together, they run one after another instead, and say why.
    def shapes_differ(*args, **kwargs):
        raise execution.CannotRunTogether("shapes")

    monkeypatch.setattr(execution, "execute_together", shapes_differ)
    assert cli.main(args + ["--out", str(tmp_path / "alone")]) == 0
    assert "one after another (shapes)" in capsys.readouterr().out
    vmapped, alone = (_summary(tmp_path / d / "synthetic-main" / "summary.csv") for d in ("vmapped", "alone"))
    assert [r["seed"] for r in vmapped] == [r["seed"] for r in alone] == ["0", "1"]
    for key in ("final_mean_accuracy", "final_mean_test_loss", "mean_iterations", "delivery_ratio_stragglers"):
        assert [float(r[key]) for r in vmapped] == pytest.approx([float(r[key]) for r in alone], rel=1e-5)
    assert vmapped[0]["wall_seconds"] == vmapped[1]["wall_seconds"]  # each seed's share of the one program


def test_bad_reproduce_arguments_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["reproduce", "main", "--task", "synthetic", "--seeds", "0", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--seeds=0" in capsys.readouterr().err


@needs_movielens
def test_movielens_main_runs_tiny(tmp_path):
    assert cli.main(["reproduce", "main", "--task", "movielens", "--data-dir", str(MOVIELENS), "--scale", "tiny",
                     "--methods", "divshare-0.1,swift", "--settings", "stragglers7x5", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    report = (tmp_path / "REPRODUCTION.md").read_text()
    assert "MovieLens test RMSE" in report


@needs_cifar
def test_cifar_grid_validates_at_every_scale():
    for scale in reproduce.SCALES:
        for experiment in reproduce.EXPERIMENTS:
            assert reproduce.experiment_rows(experiment, "cifar10", scale, str(CIFAR))


# ---------------------------------------------------------------------------------------------- verdicts
def _row(method, setting, accuracy=0.5, loss=1.0, tta=100.0, task="cifar10", stragglers=7, seed=0, lost=0):
    return dict(task=task, experiment="main", scale="full", setting=setting, method=method, seed=seed,
                stragglers=stragglers, final_mean_accuracy=accuracy, final_mean_test_loss=loss,
                time_to_target_s=tta, target_accuracy=0.6, messages_lost_to_capacity=lost, wall_seconds=1.0)


def test_time_to_accuracy_verdicts():
    rows = [_row("divshare-0.1", "a", tta=100.0), _row("divshare-1", "a", tta=50.0), _row("adpsgd", "a", tta=400.0),
            _row("divshare-0.1", "b", tta=100.0), _row("adpsgd", "b", tta=150.0)]
    finding = claims.time_to_accuracy_claim(claims.groups(rows))
    assert finding.measured == "8.00x" and finding.where == "main/a" and finding.verdict == "reproduced"
    slower = [_row("divshare-0.1", "a", tta=100.0), _row("adpsgd", "a", tta=200.0)]
    assert claims.time_to_accuracy_claim(claims.groups(slower)).verdict == "partly"
    never = [_row("divshare-0.1", "a", tta=100.0), _row("adpsgd", "a", tta=math.inf)]
    assert claims.time_to_accuracy_claim(claims.groups(never)).verdict == "reproduced"
    worse = [_row("divshare-0.1", "a", tta=300.0), _row("adpsgd", "a", tta=200.0)]
    assert claims.time_to_accuracy_claim(claims.groups(worse)).verdict == "not reproduced"
    no_stragglers = [_row("divshare-0.1", "a", tta=1.0, stragglers=0), _row("adpsgd", "a", tta=9.0, stragglers=0)]
    assert claims.time_to_accuracy_claim(claims.groups(no_stragglers)) is None


def test_accuracy_and_loss_verdicts_average_seeds():
    rows = [_row("divshare-0.1", "a", accuracy=0.6, seed=0), _row("divshare-0.1", "a", accuracy=0.5, seed=1),
            _row("adpsgd", "a", accuracy=0.45), _row("swift", "a", accuracy=0.5)]
    finding = claims.accuracy_claim(claims.groups(rows))
    assert finding.verdict == "reproduced"  # 0.55 vs 0.45: +10 points, +22.2 %
    assert "+22.2 %" in finding.measured and "AD-PSGD" in finding.where
    movielens = [_row("divshare-0.1", "a", loss=0.95, task="movielens"), _row("swift", "a", loss=1.0, task="movielens")]
    finding = claims.loss_claim(claims.groups(movielens))
    assert finding.measured == "up to 5.0 % lower" and finding.verdict == "partly"
    assert "capacity" not in finding.where


def test_experiment_tables_show_the_seeds_spread(tmp_path):
    (tmp_path / "cifar10-main").mkdir()
    (tmp_path / "cifar10-main" / reproduce.EXPERIMENT_FILE).write_text(
        json.dumps({"scale": "full", "config": "c", "command": "divjax reproduce main"}))
    rows = [_row("divshare-0.1", "a", accuracy=0.6, seed=0), _row("divshare-0.1", "a", accuracy=0.5, seed=1),
            _row("adpsgd", "a", accuracy=0.45)]
    rows += [dict(_row("divshare-0.1", "b", accuracy=0.6, seed=0), wall_seconds=5.0, commit="abc1234"),
             dict(_row("divshare-0.1", "b", loss=math.nan, seed=1), copied_from="main/x", commit="abc1234")]
    gs = claims.groups(rows)
    table = "\n".join(claims._experiment_tables(gs, tmp_path))
    assert "Source commits: abc1234 (2 runs); 3 run(s) made before divjax recorded its commit." in table
    assert "| a | DivShare Ω=0.1 | 2 | 0.550 (0.500–0.600) | 1.000 |" in table  # equal losses: no range
    assert "| a | AD-PSGD | 1 | 0.450 | 1.000 |" in table
    assert "| b | DivShare Ω=0.1 | 2 | 0.550 (0.500–0.600) | nan |" in table  # a diverged seed: no range
    figures = next(g for g in gs if g.setting == "b").methods["divshare-0.1"]
    assert figures["wall"] == 5.0 and figures["copied"] == 1  # a copied run's wall time is counted once


def test_rows_that_lost_messages_to_capacity_are_marked():
    """A baseline whose queue or snapshot ring overflowed is a bounded run, not the reference's: its row is
    marked, and the headline "up to" comes from the rows that lost nothing, the lossy better figure beside it;
    only when every row lost something does the headline rest on one, and say so."""
    rows = [_row("divshare-0.1", "a", loss=0.5, task="movielens"),
            _row("swift", "a", loss=1.0, task="movielens", lost=6272, seed=0),
            _row("swift", "a", loss=1.0, task="movielens", lost=10, seed=1),
            _row("divshare-0.1", "b", loss=0.9, task="movielens"), _row("swift", "b", loss=1.0, task="movielens")]
    finding = claims.loss_claim(claims.groups(rows))
    assert finding.where == "main/b vs Swift" and finding.verdict == "reproduced"  # 10 % lower ≥ 9.5 %
    assert finding.measured == ("up to 10.0 % lower (50.0 % lower in main/a vs Swift "
                                "[Swift lost 6,282 messages to capacity])")
    assert [("capacity" in line) for line in finding.detail] == [True, False]
    never = [_row("divshare-0.1", "a"), _row("adpsgd", "a", tta=math.inf, lost=5)]
    finding = claims.time_to_accuracy_claim(claims.groups(never))
    assert finding.where == "main/a [AD-PSGD lost 5 messages to capacity]"
    assert finding.measured == "∞ (AD-PSGD never reaches it)"


def test_a_time_to_accuracy_split_between_seeds_is_not_the_headline():
    """AD-PSGD "never" reaching the target because one seed of two missed it is flagged, and the headline
    comes from a setting where the seeds agree; with no such setting the split one is the headline, marked."""
    split = [_row("divshare-0.1", "a", seed=0), _row("divshare-0.1", "a", seed=1),
             _row("adpsgd", "a", tta=120.0, seed=0), _row("adpsgd", "a", tta=math.inf, seed=1)]
    agreed = [_row("divshare-0.1", "b", tta=100.0), _row("adpsgd", "b", tta=150.0)]
    finding = claims.time_to_accuracy_claim(claims.groups(split + agreed))
    assert finding.where == "main/b" and finding.verdict == "partly"
    assert finding.measured == "1.50x (∞ (AD-PSGD never reaches it) in main/a [AD-PSGD reached 60% with 1 of 2 seeds])"
    assert finding.detail[0].endswith("→ ∞ (AD-PSGD never reaches it) [AD-PSGD reached 60% with 1 of 2 seeds]")
    assert claims.time_to_accuracy_claim(claims.groups(split)).where == "main/a [AD-PSGD reached 60% with 1 of 2 seeds]"


def test_compiled_programs_are_dropped_before_the_kernels_limit_on_memory_mappings(tmp_path, monkeypatch):
    """XLA CPU crashes once a process holds vm.max_map_count memory mappings; a long reproduction would."""
    import jax

    from divjax import engine, execution

    jax.clear_caches()  # start well below the limit, whatever the tests before compiled
    assert execution.memory_mappings() is None or execution.memory_mappings()[0] > 0
    cli.main(["reproduce", "main", "--task", "synthetic", "--scale", "tiny", "--methods", "divshare-0.1",
              "--settings", "no-stragglers", "--out", str(tmp_path / "kept"), "--no-progress"])
    assert engine._advance._cache_size() > 0  # below half the limit, compiled programs are kept
    monkeypatch.setattr(execution, "memory_mappings", lambda: (40_000, 65_530))
    cli.main(["reproduce", "main", "--task", "synthetic", "--scale", "tiny", "--methods", "divshare-0.1",
              "--settings", "no-stragglers", "--out", str(tmp_path / "dropped"), "--no-progress"])
    assert engine._advance._cache_size() == 0


def test_the_report_lists_each_tasks_experiments_main_first(tmp_path):
    for name in ("synthetic-degree", "cifar10-stragglers", "synthetic-main", "cifar10-main"):
        (tmp_path / name).mkdir()
        task, experiment = name.split("-")
        (tmp_path / name / "summary.csv").write_text(f"task,experiment\n{task},{experiment}\n")
    order = [(r["task"], r["experiment"]) for r in reproduce.read_summaries(tmp_path)]
    assert order == [("cifar10", "main"), ("cifar10", "stragglers"), ("synthetic", "main"), ("synthetic", "degree")]


def test_a_bad_data_directory_fails_before_any_directory_is_written(tmp_path, capsys):
    (tmp_path / "empty").mkdir()  # exists (the config's check passes) but holds no MovieLens files
    code = cli.main(["reproduce", "main", "--task", "movielens", "--data-dir", str(tmp_path / "empty"),
                     "--scale", "tiny", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1 and "divjax: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_damaged_run_elsewhere_is_no_twin_and_no_crash(tmp_path):
    """A hand-damaged run in another experiment does not stop this one from running its own row."""
    from tests.helpers import tiny

    damaged = tmp_path / "synthetic-degree" / "divshare-0.1" / "degree6" / "seed0"
    damaged.mkdir(parents=True)
    for name in ("status.json", "config.json", "metrics.csv"):
        (damaged / name).write_text("{ not json")
    assert reproduce._finished_twin(tmp_path, tiny()) is None
