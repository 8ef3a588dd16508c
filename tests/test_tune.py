"""lstmcli tune: a time-boxed search that keeps its best run, writes a recipe train accepts, resumes, and
never validates on the test split."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import types

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from conftest import OFFLINE, ROOT, assert_one_line_error, make_rows, named, run_cli, write_jsonl, write_splits
from lstmcli.config import Config
from lstmcli.loop import Validation
from lstmcli.tune import (DEPENDENT, SPACE, CannotFinish, default_params, parse_budget, pruner, pruning_hook,
                          recipes_params, settle, tune)

BUDGET = 15
# Fixed for every trial, to keep trials short even on a busy machine; --epochs and --hidden-size are searched
# unless fixed, as here.
FIXED = ["--embed-dim", "16", "--batch-size", "16", "--threads", "1", "--min-frequency", "1", "--epochs", "3",
         "--hidden-size", "32"]


def room_for_a_trial(rows: list[dict]) -> float:
    """A budget for --resume that lets a trial start however busy the machine is: no trial starts with less
    time left than the quickest one took."""
    return 2 * min(float(row["seconds"]) for row in rows if row["state"] == "complete") + 3


def trials_of(out) -> list[dict]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One 15-second search on tiny data, run as a user runs it; (output dir, summary, wall seconds)."""
    data = write_splits(tmp_path_factory.mktemp("data"), train=400, validation=100, test=100, seed=3)
    out = tmp_path_factory.mktemp("tune") / "tuned"
    started = time.monotonic()
    result = run_cli("tune", "--dataset", data, "--budget", f"{BUDGET}s", "--output-dir", out, *FIXED)
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout), wall


def test_search_keeps_within_budget_and_trial_0_is_the_defaults(searched):
    out, summary, wall = searched
    # The budget counts from the command's start; a trial at the deadline stops at its next step and
    # evaluates once. Slack for the interpreter's start-up and that last evaluation, on a busy machine.
    assert wall < BUDGET * 1.1 + 5, wall
    rows = trials_of(out)
    assert rows[0]["trial"] == "0" and rows[0]["state"] == "complete"
    defaults = Config()
    for name in SPACE:
        if name not in ("epochs", "hidden_size"):  # fixed by the command line for every trial
            assert rows[0][name] == str(getattr(defaults, name)), name
    assert all(row["epochs"] == row["hidden_size"] == "" for row in rows)
    assert summary["defaults"]["validation"] == pytest.approx(float(rows[0]["validation_accuracy"]), abs=1e-4)
    assert summary["validation"] >= summary["defaults"]["validation"]  # never worse than the defaults
    if len(rows) > 1:  # trial 1 tries what the recipes share
        assert [rows[1][name] for name in ("bidirectional", "embedding_dropout", "ema", "adversarial",
                                           "adversarial_epsilon", "weight_decay")] == \
            ["True", "0.5", "0.99", "at", "2.0", "0.1"], rows[1]


def test_trial_1_is_the_defaults_with_what_the_recipes_share_unless_fixed():
    shared = {"bidirectional": True, "embedding_dropout": 0.5, "ema": 0.99, "adversarial": "at",
              "adversarial_epsilon": 2.0, "weight_decay": 0.1}
    assert recipes_params({}) == {**default_params({}), **shared}
    assert recipes_params({"bidirectional": False}) == {**default_params({"bidirectional": False}),
                                                        **{k: v for k, v in shared.items() if k != "bidirectional"}}
    # A setting that acts only when another is on is left out when the user turned that one off ...
    assert "adversarial_epsilon" not in recipes_params({"adversarial": "none"})
    assert "adversarial_epsilon" not in default_params({}) and "dropout" not in default_params({})
    # ... and starts at its default when the user turned it on.
    assert default_params({"adversarial": "at", "layers": 2}) == {
        **{k: v for k, v in default_params({}).items() if k not in ("adversarial", "layers")},
        "dropout": Config.dropout, "adversarial_epsilon": Config.adversarial_epsilon}
    assert recipes_params({"adversarial_epsilon": 3.0})["adversarial"] == "at"
    assert "adversarial_epsilon" not in recipes_params({"adversarial_epsilon": 3.0})


def test_pruner_compares_trials_at_the_same_share_of_their_schedules():
    """Trials evaluating every 2 steps, 10 batches an epoch, through the hook tune gives the training loop. A
    trial of twice the epochs that learns as fast per share of its schedule is kept, though at any given step
    it lies below the shorter trials; one that learns slower is stopped half way."""
    study = optuna.create_study(direction="maximize", pruner=pruner())
    quiet = types.SimpleNamespace(progress=lambda step, score: None)

    def run(epochs: int, gain: float) -> int | None:
        """The step at which the pruner stopped a trial whose accuracy is 0.5 + gain x (share of schedule)."""
        trial = study.ask()
        hook = pruning_hook(trial, Config(epochs=epochs), {"batches_per_epoch": 10}, quiet, deadline=math.inf)
        schedule = epochs * 10
        try:
            for step in range(2, schedule + 1, 2):
                hook(step, Validation(0.5 + gain * step / schedule, {}, {}, ""))
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            return step
        study.tell(trial, 0.5 + gain)
        return None

    assert run(epochs=4, gain=0.4) is None and run(epochs=4, gain=0.41) is None  # the finished trials
    assert run(epochs=8, gain=0.405) is None
    assert run(epochs=8, gain=0.2) == 40  # 40 of 80 steps: half its schedule
    slow_starter = study.trials[2]
    assert sorted(slow_starter.intermediate_values) == list(range(1, 11))
    # Each tenth holds the best score when the trial passed it.
    assert slow_starter.intermediate_values[3] == pytest.approx(0.5 + 0.405 * 24 / 80)


def test_a_trial_that_could_not_finish_by_the_deadline_stops_when_its_pace_shows_it(monkeypatch):
    """Evaluations every 2 steps of an 80-step schedule, 1 s apart after a 30 s start: 0.5 s a step. With the
    deadline at 60 s, the pace at the second evaluation (step 4, 31 s) puts the end at 69 s: stopped there.
    With it at 70 s the trial runs on to its end, and trial 0 (the defaults) always does."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr("lstmcli.tune.time.monotonic", lambda: clock.now)
    study = optuna.create_study(direction="maximize", pruner=pruner())
    quiet = types.SimpleNamespace(progress=lambda step, score: None)

    def run(deadline: float) -> int | None:
        """The step at which the trial was stopped for want of time, or None if it ran to its end."""
        trial = study.ask()
        hook = pruning_hook(trial, Config(epochs=8), {"batches_per_epoch": 10}, quiet, deadline)
        try:
            for step in range(2, 81, 2):
                clock.now = 30 + (step - 2) / 2
                hook(step, Validation(0.5, {}, {}, ""))
        except CannotFinish:
            study.tell(trial, state=TrialState.PRUNED)
            return step
        study.tell(trial, 0.5)
        return None

    assert run(deadline=60) is None  # trial 0
    assert run(deadline=60) == 4
    assert run(deadline=70) is None
    # The evaluation the loop makes when the deadline cut it: set aside by the loop, to run again on --resume.
    hook = pruning_hook(study.ask(), Config(epochs=8), {"batches_per_epoch": 10}, quiet, deadline=31)
    for step, clock.now in ((2, 30), (4, 32)):
        hook(step, Validation(0.5, {}, {}, ""))


def test_trials_stopped_for_want_of_time_give_way_to_new_ones(tmp_path, monkeypatch):
    """Every trial after the defaults forecast to end past the deadline: each is set aside at its first
    evaluation, and the search draws new settings rather than the same trial again."""
    monkeypatch.setattr("lstmcli.tune.finish_forecast", lambda schedule: lambda step: float("inf"))
    data = write_splits(tmp_path / "data", train=400, validation=100, test=100, seed=3)
    fixed = dict(dataset=str(data), embed_dim=16, batch_size=16, threads=1, min_frequency=1, epochs=3,
                 hidden_size=32)
    summary = tune(fixed, budget=BUDGET, output_dir=tmp_path / "tuned", quiet=True)
    rows = trials_of(tmp_path / "tuned")
    cut = [row for row in rows if row["state"] == "cut by budget"]
    assert summary["best_trial"] == 0 and rows[0]["state"] == "complete"
    assert len(cut) >= 2, rows
    assert len({tuple(row[name] for name in SPACE) for row in cut}) == len(cut)


def test_best_run_is_kept_as_trained_and_eval_scores_it(searched, cli):
    out, summary, _ = searched
    best = out / "best"
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] == pytest.approx(summary["validation"])
    code, stdout, stderr = cli("eval", "--model-dir", best, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["accuracy"] == pytest.approx(metrics["test"]["accuracy"]) == pytest.approx(summary["test"])
    assert metrics["test"]["accuracy"] > 0.8
    # Only the kept run stays: no other trial's directory is left behind.
    assert not (out / "trials").exists() or not any((out / "trials").iterdir())


def test_trials_share_one_tokenization_per_split_and_max_length(searched):
    out, _, _ = searched
    lengths = {row["max_length"] for row in trials_of(out)}
    folders = sorted(p.name.rsplit("-", 1)[0] for p in (out / "cache").iterdir())
    assert folders == sorted(["test", "train", "validation"] * len(lengths))


def test_recipe_trains_the_best_run_again(searched, tmp_path, cli):
    out, summary, _ = searched
    recipe = tomllib.loads((out / "recipe.toml").read_text())
    assert recipe["epochs"] == 3 and recipe["hidden_size"] == 32 and "output_dir" not in recipe
    code, stdout, stderr = cli("train", "--config", out / "recipe.toml", "--output-dir", tmp_path / "again", "--quiet")
    assert code == 0, stderr
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    kept = json.loads((out / "best" / "metrics.json").read_text())
    assert again["validation"]["accuracy"] == kept["validation"]["accuracy"]  # same settings, seed and data
    assert again["test"]["accuracy"] == kept["test"]["accuracy"]


def test_resume_adds_trials_to_the_same_study(searched, tmp_path):
    out, _, _ = searched
    copy = tmp_path / "tuned"
    shutil.copytree(out, copy)
    before = trials_of(copy)
    result = tune({}, budget=room_for_a_trial(before), output_dir=copy, resume=True, quiet=True)
    after = trials_of(copy)
    assert len(after) > len(before)
    assert [row["trial"] for row in after] == [str(i) for i in range(len(after))]
    assert after[:len(before)] == before
    assert result["validation"] >= max(float(r["validation_accuracy"]) for r in before if r["validation_accuracy"])


def test_resume_refuses_other_settings(searched, cli):
    out, _, _ = searched
    code, _, err = cli("tune", "--resume", "--output-dir", out, "--hidden-size", "64", "--budget", "5s")
    assert_one_line_error(code, err, "--hidden-size", "resume")


def test_ctrl_c_keeps_the_best_so_far_and_resume_runs_the_interrupted_trial_first(tmp_path):
    data = write_splits(tmp_path / "data", train=400, validation=100, test=100, seed=4)
    out = tmp_path / "tuned"
    # A suite started in the background (nohup, `&`) ignores SIGINT, and so would its children: undo that.
    process = subprocess.Popen([sys.executable, "-m", "lstmcli", "tune", "--dataset", str(data), "--budget", "2m",
                                "--output-dir", str(out), *FIXED], cwd=ROOT, env={**os.environ, **OFFLINE},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    # Interrupt trial 1 while it trains: trial 0 has finished once trial 1's run directory exists.
    while not (out / "trials" / "001").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted: search stopped; the best so far (trial 0" in stderr and "--resume" in stderr
    assert (out / "best" / "model.safetensors").exists()
    rows = trials_of(out)
    assert [row["state"] for row in rows] == ["complete", "interrupted"]
    assert not (out / "trials" / "001").exists()

    tune({}, budget=room_for_a_trial(rows), output_dir=out, resume=True, quiet=True)
    rows = trials_of(out)
    settings = list(SPACE) + list(DEPENDENT)
    assert [rows[2][name] for name in settings] == [rows[1][name] for name in settings]


def test_never_validates_on_the_test_split(tmp_path, cli):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", named(make_rows(200, seed=1)))
    write_jsonl(data / "test.jsonl", named(make_rows(50, seed=2)))
    from lstmcli.train import open_training_source

    settle({"dataset": str(data)})
    assert open_training_source(Config(dataset=str(data))).splits.validation is None  # a hashed share of train
    code, _, err = cli("tune", "--dataset", data, "--eval-split", "test", "--output-dir", tmp_path / "out")
    assert_one_line_error(code, err, "--eval-split test", "holdout")
    assert not (tmp_path / "out").exists()


def test_bad_budget_output_dir_and_torchrun_are_one_line_errors(tmp_path, cli, monkeypatch):
    assert (parse_budget("90s"), parse_budget("5m"), parse_budget("1h"), parse_budget("1h30m"), parse_budget("45")) \
        == (90, 300, 3600, 5400, 45)
    for bad in ("5x", "0s", "ten minutes", "-5m", ""):
        code, _, err = cli("tune", "--budget", bad, "--output-dir", tmp_path / "out")
        assert_one_line_error(code, err, "--budget", "90s")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    code, _, err = cli("tune", "--output-dir", tmp_path / "full")
    assert_one_line_error(code, err, "not empty", "--resume")
    code, _, err = cli("tune", "--resume", "--output-dir", tmp_path / "none")
    assert_one_line_error(code, err, "nothing to resume")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = cli("tune", "--output-dir", tmp_path / "new")
    assert_one_line_error(code, err, "without torchrun")


def test_search_space_holds_the_defaults_and_matches_the_readme():
    defaults = Config()
    for name, distribution in search_ranges().items():
        default = getattr(defaults, name)
        if isinstance(distribution, CategoricalDistribution):
            assert default in distribution.choices, name
        else:
            assert distribution.low <= default <= distribution.high, name
    readme = (ROOT / "README.md").read_text()
    assert f"<!-- tune-space -->\n{space_table()}\n<!-- /tune-space -->" in readme, \
        "regenerate with tests/test_tune.py:space_table()"


def search_ranges() -> dict:
    """Every searched setting's range, the dependent ones after the rest."""
    return {**SPACE, **{name: distribution for name, (_, _, distribution) in DEPENDENT.items()}}


def space_table() -> str:
    """The README's table of what tune searches, as tune.py defines it."""
    from lstmcli.config import option_name

    rows = ["| flag | default (trial 0) | searched over |", "|---|---|---|"]
    switches = {name: (switch, off) for name, (switch, off, _) in DEPENDENT.items()}
    for name, distribution in search_ranges().items():
        if isinstance(distribution, CategoricalDistribution):
            values = ", ".join(f"`{v}`" for v in distribution.choices)
        else:
            scale = " (log scale)" if distribution.log else \
                f" in steps of {distribution.step}" if isinstance(distribution, FloatDistribution) else ""
            values = f"`{distribution.low}` to `{distribution.high}`{scale}"
        if name in switches:
            switch, off = switches[name]
            values += f", only where `{option_name(switch)}` is not `{off}`"
        rows.append(f"| `{option_name(name)}` | `{getattr(Config(), name)}` | {values} |")
    return "\n".join(rows)


def test_help_lists_the_train_flags_tune_keeps_fixed(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = cli("tune", "--help")
    assert code == 0
    for flag in ("--budget", "--resume", "--output-dir", "--config", "--dataset", "--hidden-size", "--bidirectional"):
        assert flag in out, flag
    for flag in ("--eval-every", "--init-from", "--unlabeled"):
        assert flag not in out, flag
