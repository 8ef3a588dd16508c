"""lstmcli tune: the settings that suit a dataset, searched within a wall-clock budget.

Optuna's TPE sampler proposes settings; each trial is an ordinary `train.train` run. Trials evaluate about
four times per epoch, and the loop's evaluation hook feeds those validation accuracies to a percentile
pruner at each tenth of the trial's own schedule, which stops a trial whose best so far lies in the lowest
quarter of the finished trials at the same share of theirs (from half its schedule on). The budget is a
deadline that the training loop itself checks at every step, and a trial stops as soon as its pace (from its
second evaluation on) shows that it would still be training at the deadline: cut short, it could not compete.
Trial 0 trains the defaults (with the flags the user fixed), so the result is never worse than them. Settings
are chosen on validation data only (a hashed holdout of train when the dataset's only other split is its test
split); the test split just scores the kept run.

    <output-dir>/
      study.db      the Optuna study (SQLite); --resume continues it
      best/         the best trial's run directory as it trained: lstmcli eval, predict and report read it
      recipe.toml   the best settings by flag name: lstmcli train --config recipe.toml trains them again
      trials.csv    one row per trial: number, state, validation accuracy, seconds, settings
      cache/        tokenized splits that every trial reads (one folder per split and --max-length)
      trials/NNN/   the trial in progress: a finished trial becomes best/ or is deleted
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import checkpoint, loop
from .config import NOT_TUNABLE, Config, fields_in_group, option_name
from .data import read_rows
from .errors import Interrupted, UserError
from .runtime import torchrun_env
from .train import open_training_source, train

STUDY, BEST, RECIPE, TRIALS_CSV, CACHE, TRIALS = "study.db", "best", "recipe.toml", "trials.csv", "cache", "trials"
STUDY_NAME = "lstmcli-tune"
EVALUATIONS_PER_EPOCH = 4
STARTUP_TRIALS = 4  # random proposals before TPE models the results
PRUNE_BELOW_PERCENTILE = 25.0  # a trial stops when its best so far lies below this share of the finished trials
# ... compared at the same share of each trial's own schedule: the learning rate decays to zero over the
# schedule, so a 12-epoch trial two epochs in is still at a high rate where a 4-epoch one is settling.
PRUNE_CHECKPOINTS = 10  # a tenth of the schedule apart
# ... and not before half its schedule: from the third tenth, SST-5's 2-layer BiLSTMs were still stopped against
# the defaults' early peak (mean validation over seeds 0/1/2 0.427 from the third tenth, 0.435 from the fifth).
PRUNE_WARMUP = 5
PRUNE_MIN_TRIALS = 2  # ... nor where fewer finished trials reached that share: one trial's curve is no quartile

# What the recipes found to matter, in ranges a CPU budget affords. Every default lies inside its range:
# trial 0 trains the defaults.
SPACE = {
    "bidirectional": CategoricalDistribution([False, True]),
    "layers": IntDistribution(1, 2),
    "hidden_size": CategoricalDistribution([64, 128, 256]),
    "embedding_dropout": FloatDistribution(0.0, 0.6, step=0.05),
    "pooling": CategoricalDistribution(["max", "mean", "mean-max", "last"]),
    "lr": FloatDistribution(1e-3, 3e-2, log=True),
    "epochs": IntDistribution(2, 12),
    "ema": CategoricalDistribution([0.0, 0.99, 0.995]),
    "max_length": CategoricalDistribution([128, 256, 512]),
    "adversarial": CategoricalDistribution(["none", "at"]),
    "weight_decay": FloatDistribution(1e-3, 0.3, log=True),
}
# Settings that act only when another one is on: searched unless that one has the value that turns them off.
DEPENDENT = {
    "dropout": ("layers", 1, FloatDistribution(0.0, 0.5, step=0.1)),  # between LSTM layers
    "adversarial_epsilon": ("adversarial", "none", FloatDistribution(1.0, 8.0, log=True)),
}
# Trial 1: what most recipes share (both directions, heavy dropout on the embeddings), a strong start on small
# data that TPE's first random proposals seldom hit, with an average of the weights: on top of the other two,
# --ema 0.99 raised mean validation accuracy over seeds 0/1/2 on all four sets tried (SST-5 +1.3 points,
# SST-3 +0.3, Rotten Tomatoes +0.1, the SST-2 recipe +0.1); and adversarial training, the lever of the SST-5 and
# Rotten Tomatoes recipes (RT validation 0.779 -> 0.789 with epsilon 2), at about twice a step's cost; and a
# weight decay ten times the default, which raised mean validation accuracy on top of the rest on all three sets
# tried (over seeds 0/1/2: Rotten Tomatoes 0.789 -> 0.794, SST-5 0.427 -> 0.440, SST-2 0.855 -> 0.859).
RECIPES_SHARE = dict(bidirectional=True, embedding_dropout=0.5, ema=0.99, adversarial="at",
                     adversarial_epsilon=2.0, weight_decay=0.1)


def parse_budget(text: str) -> float:
    """Seconds in '90s', '5m', '1h', '1h30m' or a bare number of seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    seconds = 0.0
    if match and any(match.groups()):
        hours, minutes, rest = (float(g or 0) for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + rest
    if seconds <= 0:
        raise UserError(f"--budget {text!r} is not a duration: write it like 90s, 5m or 1h.")
    return seconds


def tune(fixed: dict, *, budget: float, output_dir: str | Path, resume: bool = False, quiet: bool = False,
         started: float | None = None) -> dict:
    """Search settings for `fixed` (the flags the user gave, kept for every trial) for `budget` seconds from
    `started` (a time.monotonic() value; default: now); keep the best trial's run in <output_dir>/best and its
    settings in recipe.toml. Returns a summary."""
    deadline = (started or time.monotonic()) + budget
    out = Path(output_dir)
    if torchrun_env()["world_size"] > 1:
        raise UserError("lstmcli tune runs its trials one after another in one process: run it without torchrun.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with checkpoint.lock_run_dir(out):  # one search per directory, as one run per run directory
        study, fixed = open_study(out, {k: v for k, v in fixed.items() if k not in NOT_TUNABLE}, resume)
        plan = study.user_attrs["plan"]
        study.enqueue_trial(default_params(fixed), skip_if_exists=True)
        study.enqueue_trial(recipes_params(fixed), skip_if_exists=True)
        view = TrialsView(Console(stderr=True, quiet=quiet, highlight=False, soft_wrap=True), deadline)
        with view:
            view.show(study)
            try:
                while time.monotonic() < deadline - fastest_trial(study):
                    run_trial(study, fixed, plan, out, deadline, view)
                    write_outputs(study, out)
                    view.show(study)
            except (Interrupted, KeyboardInterrupt):
                write_outputs(study, out)
                view.show(study)
                raise Interrupted(f"search stopped; {kept(study, out)}: continue with lstmcli tune --resume "
                                  f"--output-dir {out}") from None
        if "best_trial" not in study.user_attrs:
            raise UserError(f"--budget {budget:g}s ended before trial 0 (the defaults) finished training: give a "
                            f"larger --budget, or continue with lstmcli tune --resume --output-dir {out}.")
        return summary(study, out, budget)


# -- the study --------------------------------------------------------------------------------------------

def open_study(out: Path, given: dict, resume: bool) -> tuple[optuna.Study, dict]:
    """A new study in `out` (refusing to replace anything), or the one there on --resume, and the settings its
    trials keep. A new study records them and the evaluation plan, so a resumed study trains the same way;
    only runtime flags (threads, device, precision) may change on --resume."""
    storage = f"sqlite:///{out / STUDY}"
    if resume:
        if not (out / STUDY).exists():
            raise UserError(f"nothing to resume in {out} (no {STUDY}): start a new search without --resume.")
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        saved = study.user_attrs["fixed"]
        runtime = {f.name for f in fields_in_group("runtime")}
        changed = [f"{option_name(k)}: {saved.get(k, getattr(Config, k))!r} -> {v!r}" for k, v in given.items()
                   if k not in runtime and saved.get(k, getattr(Config, k)) != v]
        if changed:
            raise UserError(f"cannot resume the search in {out} with different settings ({'; '.join(changed)}): "
                            "drop those flags, or start a new search in another --output-dir.")
        forget_unfinished(study, out)
    else:
        if out.exists() and (not out.is_dir() or any(p.name != checkpoint.LOCK for p in out.iterdir())):
            raise UserError(f"{out} is not empty: continue the search there with --resume, or choose a new "
                            "--output-dir.")
        fixed, plan = settle(given)
        out.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize")
        study.set_user_attr("fixed", fixed)
        study.set_user_attr("plan", plan)
    # Seeded by the number of trials so far, so a resumed search does not propose its first trials again.
    study.sampler = optuna.samplers.TPESampler(seed=Config(**study.user_attrs["fixed"]).seed + len(study.trials),
                                               n_startup_trials=STARTUP_TRIALS)
    study.pruner = pruner()
    return study, {**study.user_attrs["fixed"], **given}


def pruner() -> optuna.pruners.BasePruner:
    """Stops a trial whose best so far lies in the lowest quarter of the finished trials at its share of the
    schedule."""
    # The lowest quarter, not the median, and not early: regularised settings (dropout, EMA, adversarial
    # training) learn slower at first and may end higher. Optuna's percentile is the share kept from the top
    # when maximising: given 25, as until 2026-12-07, it stopped every trial outside the top quarter (20 of 24
    # on SST-5 in 10 minutes, every 2-layer BiLSTM among them).
    return optuna.pruners.PercentilePruner(100 - PRUNE_BELOW_PERCENTILE, n_startup_trials=2,
                                           n_warmup_steps=PRUNE_WARMUP, n_min_trials=PRUNE_MIN_TRIALS)


def settle(given: dict) -> tuple[dict, dict]:
    """The settings every trial keeps, checked against the data, and when trials evaluate. Validation never
    falls back to the test split: without a validation split, a hashed share of train validates."""
    fixed = {k: v for k, v in given.items() if k not in NOT_TUNABLE}
    config = Config(**fixed).validate()
    if config.eval_split == "test":
        raise UserError("tune would choose settings on --eval-split test, the split that scores the result: "
                        "validate on another split, or on --eval-split holdout (a hashed share of train).")
    opened = open_training_source(config)
    holdout = (config.val_fraction, False) if opened.splits.validation is None else None
    rows = sum(len(texts) for texts, _ in read_rows(
        opened.source.split(opened.splits.train), opened.source.describe(opened.splits.train), opened.text_column,
        opened.label_column, strict=config.strict, holdout=holdout))
    if config.max_train_samples:
        rows = min(rows, config.max_train_samples)
    batches = max(1, math.ceil(rows / config.batch_size))
    eval_every = max(1, round(batches / EVALUATIONS_PER_EPOCH))
    # --patience counts evaluations; trials evaluate several times an epoch, so it is scaled to keep the
    # number of epochs without improvement that the user (or the default) allows.
    patience = config.patience * max(1, round(batches / eval_every))
    return fixed, dict(batches_per_epoch=batches, eval_every=eval_every, patience=patience)


def default_params(fixed: dict) -> dict:
    """Trial 0: each searched setting the user did not fix, at its default."""
    return with_dependents({name: getattr(Config, name) for name in SPACE if name not in fixed}, fixed,
                           lambda name: getattr(Config, name))


def recipes_params(fixed: dict) -> dict:
    """Trial 1: the defaults with what the recipes share, where the user fixed nothing else."""
    def shared(name):
        return RECIPES_SHARE.get(name, getattr(Config, name))

    return with_dependents({name: shared(name) for name in SPACE if name not in fixed}, fixed, shared)


def propose(trial: optuna.Trial, fixed: dict) -> dict:
    """The trial's settings for every searched name the user did not fix."""
    chosen = {name: suggest(trial, name, distribution) for name, distribution in SPACE.items()
              if name not in fixed}
    return with_dependents(chosen, fixed, lambda name: suggest(trial, name, DEPENDENT[name][2]))


def with_dependents(chosen: dict, fixed: dict, value) -> dict:
    """`chosen` and value(name) for each DEPENDENT setting the user did not fix whose switch is on (in
    `chosen`, else as the user set it, else at its default)."""
    settings = {**chosen, **fixed}
    return {**chosen, **{name: value(name) for name, (switch, off, _) in DEPENDENT.items()
                         if name not in fixed and settings.get(switch, getattr(Config, switch)) != off}}


def suggest(trial: optuna.Trial, name: str, distribution):
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high)
    return tidy(trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                    log=distribution.log))


def tidy(value):
    """A float as the trial trains it and the recipe states it: 0.15, not 0.15000000000000002."""
    return round(value, 8) if isinstance(value, float) else value


def forget_unfinished(study: optuna.Study, out: Path) -> None:
    """Trials left running by a killed search: failed, their folders removed, their settings queued again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)
        shutil.rmtree(trial_dir(out, trial.number), ignore_errors=True)


def fastest_trial(study: optuna.Study) -> float:
    """Seconds of the quickest finished trial: a trial started with less time left could not finish."""
    return min((t.user_attrs["seconds"] for t in study.trials if t.state == TrialState.COMPLETE), default=0.0)


def trial_dir(out: Path, number: int) -> Path:
    return out / TRIALS / f"{number:03d}"


# -- one trial --------------------------------------------------------------------------------------------

def run_trial(study: optuna.Study, fixed: dict, plan: dict, out: Path, deadline: float, view: TrialsView) -> None:
    """Train one proposal and tell the study how it went; keep its run if it is the best so far."""
    trial = study.ask()
    chosen = propose(trial, fixed)
    run = trial_dir(out, trial.number)
    config = Config(**{**fixed, **chosen, "eval_every": plan["eval_every"], "patience": plan["patience"],
                       "output_dir": str(run)})
    view.start(trial.number, chosen)
    started = time.monotonic()
    try:
        final = train(config, overwrite=True, quiet=True, cache_dir=out / CACHE,
                      hooks=loop.Hooks(after_evaluation=pruning_hook(trial, config, plan, view, deadline),
                                       deadline=deadline))
    except CannotFinish:  # not queued again: the search goes on, and would draw the same trial at once
        set_aside_as_cut(study, trial, round(time.monotonic() - started, 1), run, run_on_resume=False)
        return
    except optuna.TrialPruned:
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        study.tell(trial, state=TrialState.PRUNED)
        shutil.rmtree(run, ignore_errors=True)
        return
    except (Interrupted, KeyboardInterrupt):
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)  # --resume runs it first
        shutil.rmtree(run, ignore_errors=True)
        raise
    except (UserError, RuntimeError, MemoryError) as e:
        shutil.rmtree(run, ignore_errors=True)
        if trial.params == default_params(fixed):  # the data or the fixed flags are at fault, not the search
            study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("error", str(e).split(":")[0][:120])  # e.g. a learning rate that diverged
        study.tell(trial, state=TrialState.FAIL)
        return
    finish_trial(study, trial, final, round(time.monotonic() - started, 1), run, out)


class CannotFinish(Exception):
    """A trial whose pace shows that it would still be training at the deadline."""


def pruning_hook(trial: optuna.Trial, config: Config, plan: dict, view: TrialsView,
                 deadline: float) -> Callable[[int, loop.Validation], None]:
    """The evaluation hook that reports the trial's best score so far at each tenth of its schedule it passed,
    and stops it when the pruner says so, or when its pace says it would not finish before `deadline`."""
    schedule = loop.schedule_steps(config, plan["batches_per_epoch"])
    reported, best = 0, 0.0
    # A trial cut by the deadline does not compete, so the time it would take is better spent on others. Not
    # trial 0: it may still stop early by patience in time, and without it the search keeps nothing.
    end_of_schedule = finish_forecast(schedule) if trial.number > 0 else None

    def after_evaluation(step: int, validation: loop.Validation) -> None:
        nonlocal reported, best
        view.progress(step, validation.score)
        best = max(best, validation.score)
        passed = min(PRUNE_CHECKPOINTS, step * PRUNE_CHECKPOINTS // schedule)
        if passed > reported:
            for checkpoint_number in range(reported + 1, passed + 1):
                trial.report(best, checkpoint_number)
            reported = passed
            if trial.should_prune():
                raise optuna.TrialPruned()
        # Past the deadline the loop has cut the trial itself, and --resume runs such a trial again.
        if end_of_schedule and end_of_schedule(step) > deadline > time.monotonic():
            raise CannotFinish()

    return after_evaluation


def finish_forecast(schedule: int) -> Callable[[int], float]:
    """Called at each evaluation with its step: when (time.monotonic()) the trial will reach the end of its
    schedule at the pace it kept since its first evaluation (so start-up and tokenizing do not count), or 0
    before the pace is known."""
    first: tuple[float, int] | None = None

    def forecast(step: int) -> float:
        nonlocal first
        now = time.monotonic()
        if first is None:
            first = (now, step)
            return 0.0
        return now + (now - first[0]) / max(1, step - first[1]) * (schedule - step)

    return forecast


def finish_trial(study: optuna.Study, trial: optuna.Trial, final: dict, seconds: float, run: Path, out: Path) -> None:
    """Tell the study how a trial that trained to its end (or the deadline) did; keep its run if it is the best."""
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("steps", final["train"]["steps"])
    trial.set_user_attr("test_accuracy", final["test"]["accuracy"] if final["test"] else None)
    if final["train"]["stopped_by_deadline"]:
        set_aside_as_cut(study, trial, seconds, run, run_on_resume=True)
        return
    value = final["validation"]["accuracy"]
    study.tell(trial, value)
    best = study.user_attrs.get("best_trial")
    if best is None or value > study.trials[best].value:
        keep(run, out)
        study.set_user_attr("best_trial", trial.number)
    else:
        shutil.rmtree(run)


def set_aside_as_cut(study: optuna.Study, trial: optuna.Trial, seconds: float, run: Path, run_on_resume: bool) -> None:
    """A trial cut short by the budget: its settings did not get their epochs, so it does not compete; with
    `run_on_resume`, --resume runs it again first."""
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("cut", True)
    study.tell(trial, state=TrialState.PRUNED)
    if run_on_resume:
        study.enqueue_trial(trial.params)
    shutil.rmtree(run, ignore_errors=True)


def keep(run: Path, out: Path) -> None:
    """Make `run` the kept best/ run directory (its settings naming its new place), replacing the old one."""
    best, replaced = out / BEST, out / TRIALS / "replaced"
    shutil.rmtree(replaced, ignore_errors=True)
    if best.exists():
        best.rename(replaced)
    run.rename(best)
    record = checkpoint.read_json(best / checkpoint.CONFIG, "")
    record["settings"]["output_dir"] = str(best)
    checkpoint.write_json(best / checkpoint.CONFIG, record)
    shutil.rmtree(replaced, ignore_errors=True)


# -- what it leaves -----------------------------------------------------------------------------------------

def write_outputs(study: optuna.Study, out: Path) -> None:
    """trials.csv, and recipe.toml once a trial finished; rewritten after every trial."""
    names = list(SPACE) + list(DEPENDENT)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["trial", "state", "validation_accuracy", "seconds", "steps", *names, "note"])
    for t in study.trials:
        if not t.state.is_finished():
            continue
        writer.writerow([t.number, state_name(t), "" if t.value is None or t.state != TrialState.COMPLETE
                         else f"{t.value:.4f}", t.user_attrs.get("seconds", ""), t.user_attrs.get("steps", ""),
                         *(tidy(t.params.get(n, "")) for n in names), t.user_attrs.get("error", "")])
    checkpoint.atomic_write(out / TRIALS_CSV, table.getvalue())
    best = study.user_attrs.get("best_trial")
    if best is not None:
        checkpoint.atomic_write(out / RECIPE, recipe_text(study, best))


def recipe_text(study: optuna.Study, number: int) -> str:
    """The best trial's settings by flag name, with how it scored and how to train it again."""
    trial, fixed, plan = study.trials[number], study.user_attrs["fixed"], study.user_attrs["plan"]
    defaults = defaults_trial(study)
    settings = {**fixed, **{k: tidy(v) for k, v in trial.params.items()}, "eval_every": plan["eval_every"],
                "patience": plan["patience"]}
    baseline = f" (trial {defaults.number}, the defaults: {defaults.value:.4f})" if defaults else ""
    finished = sum(t.state.is_finished() for t in study.trials)
    lines = [f"# Found by lstmcli tune: trial {number} of {finished}, validation accuracy "
             f"{trial.value:.4f}{baseline}.",
             "# eval_every and patience are the evaluations the trial made (patience counts evaluations).",
             "# Train it again: lstmcli train --config recipe.toml --output-dir runs/NAME"]
    lines += [f"{name} = {toml_value(value)}" for name, value in settings.items() if value is not None]
    return "\n".join(lines) + "\n"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | list | tuple):
        return json.dumps(list(value) if not isinstance(value, str) else value, ensure_ascii=False)
    return repr(value)


def kept(study: optuna.Study, out: Path) -> str:
    best = study.user_attrs.get("best_trial")
    if best is None:
        return "no trial finished yet, nothing kept"
    return f"the best so far (trial {best}, validation accuracy {study.trials[best].value:.4f}) is in {out / BEST}"


def summary(study: optuna.Study, out: Path, budget: float) -> dict:
    best = study.trials[study.user_attrs["best_trial"]]
    defaults = defaults_trial(study)
    metrics = checkpoint.read_json(out / BEST / checkpoint.METRICS, "")
    return dict(best_trial=best.number, validation=best.value, test=(metrics["test"] or {}).get("accuracy"),
                defaults=dict(trial=defaults.number, validation=defaults.value,
                              test=defaults.user_attrs.get("test_accuracy")) if defaults else None,
                trials=dict(Counter(state_name(t) for t in study.trials if t.state.is_finished())),
                budget_seconds=budget,
                run=str(out / BEST), recipe=str(out / RECIPE))


def defaults_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The finished trial of the defaults: trial 0, unless the budget or Ctrl-C cut it and it ran again."""
    params = default_params(study.user_attrs["fixed"])
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params == params),
                None)


def state_name(trial: optuna.trial.FrozenTrial) -> str:
    if trial.user_attrs.get("cut"):
        return "cut by budget"
    if trial.state == TrialState.FAIL:
        return "failed" if trial.user_attrs.get("error") else "interrupted"
    return "complete" if trial.state == TrialState.COMPLETE else "pruned"


def describe(params: dict) -> str:
    """A trial's settings as the flags that differ from the defaults."""
    defaults = Config()
    parts = []
    for name, value in params.items():
        if value == getattr(defaults, name):
            continue
        field = next(f for f in dataclasses.fields(Config) if f.name == name)
        if isinstance(value, bool):
            parts.append(field.metadata["flag"].split("/")[0 if value else 1])
        else:
            parts.append(f"{option_name(name)} {value:.3g}" if isinstance(value, float) else
                         f"{option_name(name)} {value}")
    return " ".join(parts) or "defaults"


# -- the live table ----------------------------------------------------------------------------------------

class TrialsView:
    """The trials as a table that updates in place on a terminal; elsewhere one line per finished trial."""

    def __init__(self, console: Console, deadline: float):
        self.console, self.deadline = console, deadline
        self.rows: list[list[str]] = []
        self.caption = ""
        self.running: list[str] | None = None
        self.printed: set[int] = set()
        self.live = Live(self, console=console, refresh_per_second=2) if console.is_terminal else None

    def __enter__(self):
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.stop()

    def start(self, number: int, params: dict) -> None:
        self.running = [str(number), describe(params), "", "running", ""]
        self.started = time.monotonic()

    def progress(self, step: int, score: float) -> None:
        if self.running:
            self.running[2] = f"{score:.4f}"
            self.running[3] = f"running, step {step}"

    def show(self, study: optuna.Study) -> None:
        """Take the study's finished trials into the table (and print the new ones without a terminal)."""
        self.running = None
        best = study.user_attrs.get("best_trial")
        finished = [t for t in study.trials if t.state.is_finished()]
        self.rows = [[str(t.number) + (" *" if t.number == best else ""), describe(t.params),
                      f"{t.value:.4f}" if t.value is not None else "-", state_name(t),
                      f"{t.user_attrs['seconds']:.0f}s" if "seconds" in t.user_attrs else ""] for t in finished]
        pruned = sum(t.state == TrialState.PRUNED for t in finished)
        self.caption = f"{len(finished)} trials, {pruned} pruned or cut"
        if best is not None:
            defaults = defaults_trial(study)
            gain = f" ({study.trials[best].value - defaults.value:+.4f} over the defaults)" if defaults else ""
            self.caption = f"best: trial {best}, validation accuracy {study.trials[best].value:.4f}{gain}; " + \
                self.caption
        if not self.live:
            for trial, row in zip(finished, self.rows):
                if trial.number not in self.printed:
                    self.printed.add(trial.number)
                    self.console.print(f"trial {row[0]}: {row[3]}, validation {row[2]}, {row[4]} | {row[1]}",
                                       markup=False)

    def __rich__(self) -> Table:
        left = max(0, self.deadline - time.monotonic())
        table = Table("trial", "settings (changed from the defaults)", "validation", "state", "time",
                      title="lstmcli tune", caption=f"{self.caption}; {left // 60:.0f}:{left % 60:02.0f} left",
                      caption_justify="left")
        for row in self.rows:
            table.add_row(*row)
        if self.running:
            table.add_row(*self.running[:4], f"{time.monotonic() - self.started:.0f}s", style="bold")
        return table
