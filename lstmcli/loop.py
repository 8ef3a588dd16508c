"""The training loop that `train` and `pretrain` share (and `tune` drives through `train`).

    fit(objective, ...)   steps, learning-rate schedule, EMA, evaluations, best weights, early stopping,
                          resumable states, Ctrl-C / SIGTERM, progress bar, log.jsonl, torchrun

An `Objective` says what is trained: the model, the batches of an epoch, the loss of a batch and how to
validate. Everything else a run does while it trains is here, once.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from . import checkpoint, distributed
from .batching import prefetch, to_device
from .config import Config
from .errors import Interrupted, UserError
from .runtime import Runtime, keep_freed_memory
from .terminal import Reporter, Throughput, human

SAVE_INTERVAL_SECONDS = 600  # a resumable state at least this often, besides every evaluation


@dataclass
class Batch:
    """One step's tensors (moved to the device by the loop), its loss weight (0 for a stand-in batch that
    keeps torchrun's ranks in step) and the real tokens it holds (for the tokens/s figure)."""
    tensors: tuple
    weight: float
    tokens: int


@dataclass
class Validation:
    """The result of one evaluation: `score` picks the best weights (higher is better); `best` is what the
    run remembers of its best evaluation; `log` goes into log.jsonl; `summary` is printed."""
    score: float
    best: dict
    log: dict
    summary: str


@dataclass
class Objective:
    """What a run trains, and how."""
    model: torch.nn.Module                              # the module whose weights train (before DDP wrapping)
    batches_per_epoch: int                              # the same on every rank
    plan: Callable[[int], list]                         # epoch -> batch specs, a pure function of (seed, epoch)
    make_batch: Callable[[object], Batch]               # batch spec -> Batch, on the prefetch thread
    loss: Callable[[torch.nn.Module, tuple], tuple[torch.Tensor, dict]]  # (model, tensors) -> loss, running sums
    progress: Callable[[dict], tuple[float, str]]       # running sums -> (train loss, progress-bar text)
    validate: Callable[[torch.nn.Module], Validation]   # the kept weights -> Validation (on every rank)
    skips_parameters: bool = False  # a step may leave some weights unused (torchrun must then look for them)
    # A loss on the same batch that needs the first loss's gradients (adversarial training): called after its
    # backward pass; both gradients go into one optimizer step.
    second_loss: Callable[[torch.nn.Module, tuple], torch.Tensor] | None = None


@dataclass
class Hooks:
    """Optional ways in for a caller that drives many runs (tune): called after each evaluation (it may
    raise to stop the run), and a wall-clock deadline checked at every step."""
    after_evaluation: Callable[[int, Validation], None] | None = None
    deadline: float | None = None  # time.monotonic() value


@dataclass
class Weights:
    """The weights that train and what steps them: with the position, what a resumable state holds."""
    model: torch.nn.Module                 # as the objective built it
    trained: torch.nn.Module               # what the steps call: the model, wrapped for torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler           # enabled for fp16 autocast only
    averaged: AveragedModel | None         # with --ema, the average of the weights, validated and kept

    @property
    def kept(self) -> torch.nn.Module:
        return self.averaged.module if self.averaged else self.model


@dataclass
class Outcome:
    """Where the loop ended: the position (step, best evaluation, ...) and the module holding the kept
    weights (the EMA average with --ema), with the best weights loaded back into it."""
    position: dict
    kept: torch.nn.Module
    seconds: float
    stopped_by_deadline: bool = False


def fit(objective: Objective, config: Config, runtime: Runtime, out: Path, record: dict, report: Reporter, *,
        resume: bool, command: str = "train", hooks: Hooks | None = None) -> Outcome:
    """Train `objective` as `config` says, saving into `out`; returns with the best weights loaded.
    `command` is the lstmcli command that continues the run after an interruption."""
    if runtime.device.type == "cpu":  # from here, not before: memory that reading and tokenizing free goes back
        keep_freed_memory()
    weights = prepare_weights(objective, config, runtime)
    position = starting_position(out, weights, runtime, report, resume=resume)
    training = Training(objective, config, runtime, out, record, report, hooks or Hooks(), command, weights,
                        position, evaluated_at=position["step"] if resume else None)
    finished = position["step"] >= training.total_steps or patience_exhausted(position, config)
    with StopSignal() as stop, distributed.peers_guard(runtime, out):
        while not finished and position["epoch"] < config.epochs:
            plan = objective.plan(position["epoch"])
            finished = training.run_epoch(plan, stop)
            if position["batch"] < len(plan):
                break  # stopped inside the epoch (--max-steps, patience or the deadline)
            position.update(epoch=position["epoch"] + 1, batch=0, running={})
            finished = training.evaluate_and_save(position["epoch"]) or finished
        if training.evaluated_at != position["step"] or position["best"] is None:  # the same on every rank
            training.evaluate_and_save(position["epoch"] + 1)

    distributed.barrier(runtime)
    best = checkpoint.read_tensors(out / checkpoint.WEIGHTS, checkpoint.read_json(
        out / checkpoint.CONFIG, "")["weights"].get(checkpoint.WEIGHTS))
    weights.kept.load_state_dict(best)
    return Outcome(position, weights.kept, training.elapsed(), training.out_of_time)


class Training:
    """One call of `fit`: what its pieces share (the weights, the position, the clocks) and the pieces: an
    epoch's steps, an evaluation, a save."""

    def __init__(self, objective: Objective, config: Config, runtime: Runtime, out: Path, record: dict,
                 report: Reporter, hooks: Hooks, command: str, weights: Weights, position: dict,
                 evaluated_at: int | None):
        self.objective, self.config, self.runtime, self.out, self.record = objective, config, runtime, out, record
        self.report, self.hooks, self.command, self.weights, self.position = report, hooks, command, weights, position
        self.evaluated_at = evaluated_at  # the step of the last evaluation
        self.total_steps = schedule_steps(config, objective.batches_per_epoch)
        self.warmup_steps = int(config.warmup * self.total_steps)
        self.train_loss, self.speed, self.out_of_time = float("nan"), Throughput(), False
        self.resumed_elapsed, self.started = position["elapsed"], time.monotonic()
        self.last_save = self.started

    def elapsed(self) -> float:
        return round(self.resumed_elapsed + time.monotonic() - self.started, 2)

    def run_epoch(self, plan: list, stop: StopSignal) -> bool:
        """Step through the rest of the epoch's `plan`; True when the run is finished (its steps, patience or
        the deadline)."""
        position, config = self.position, self.config
        epoch_number, running = position["epoch"] + 1, position["running"]
        self.weights.trained.train()
        self.speed, finished = Throughput(), False
        with self.report.task(f"epoch {epoch_number}/{config.epochs}", total=len(plan)) as advance:
            advance(position["batch"])
            for batch in prefetch(self.objective.make_batch, plan[position["batch"]:]):
                self.speed.add(batch.tokens if batch.weight else 0)
                lr = learning_rate(position["step"], self.total_steps, self.warmup_steps, config)
                sums = take_step(self.weights, self.objective, batch, position["step"], lr, config, self.runtime)
                position["step"] += 1
                position["batch"] += 1
                if batch.weight:
                    for key, value in sums.items():
                        running[key] = running.get(key, 0) + value
                self.train_loss, text = self.objective.progress(running)
                advance(1, f"{text} {human(self.speed.rate())} tok/s")
                self.out_of_time = self.hooks.deadline is not None and time.monotonic() >= self.hooks.deadline
                finished = position["step"] >= self.total_steps or self.out_of_time
                if config.eval_every and position["step"] % config.eval_every == 0 and position["batch"] < len(plan):
                    finished = self.evaluate_and_save(epoch_number) or finished
                elif stop.requested or save_due(config, position["step"], self.last_save):
                    self.save()
                if stop.requested:
                    raise Interrupted(f"stopped by {stop.requested} at step {position['step']}; the state is "
                                      f"saved: continue with lstmcli {self.command} --resume --output-dir {self.out}")
                if finished:
                    break
        return finished

    def evaluate_and_save(self, epoch_number: int) -> bool:
        """Validate, keep the weights if best, log, save a resumable state; True when patience runs out."""
        position, weights = self.position, self.weights
        self.evaluated_at = position["step"]
        tokens_per_second = round(self.speed.rate())  # of the training steps alone, before validation starts
        validation_started = time.monotonic()
        result = self.objective.validate(weights.kept)
        validation_seconds = round(time.monotonic() - validation_started, 2)
        best = position["best"]
        improved = best is None or result.score > best["score"]
        if improved:
            position["best"] = dict(result.best, score=result.score, step=position["step"], epoch=epoch_number)
            position["evals_since_best"] = 0
            if self.runtime.is_main:
                checkpoint.save_weights(self.out, self.record, weights.kept.state_dict())
        else:
            position["evals_since_best"] += 1
        self.report.say(f"epoch {epoch_number} step {position['step']}: train loss {self.train_loss:.4f} | "
                        f"{result.summary}" + (" (best)" if improved else ""))
        self.save(dict(epoch=epoch_number, step=position["step"], train_loss=self.train_loss,
                       lr=weights.optimizer.param_groups[0]["lr"], **result.log, best=improved, elapsed=self.elapsed(),
                       eval_seconds=validation_seconds, train_tokens_per_second=tokens_per_second))
        if self.hooks.after_evaluation:
            self.hooks.after_evaluation(position["step"], result)
        return patience_exhausted(position, self.config)

    def save(self, log_entry: dict | None = None) -> None:
        """A resumable state (after appending `log_entry` to log.jsonl), written by the main process."""
        if self.runtime.is_main:
            log_path = self.out / checkpoint.LOG
            if log_entry is not None:
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(log_entry) + "\n")
            self.position.update(elapsed=self.elapsed(), log_bytes=log_path.stat().st_size)
            save_state(self.out, self.position, self.weights)
        distributed.barrier(self.runtime)
        self.last_save = time.monotonic()


# -- small pieces of the loop --------------------------------------------------------------------------

def prepare_weights(objective: Objective, config: Config, runtime: Runtime) -> Weights:
    model = objective.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    averaged = AveragedModel(model, multi_avg_fn=ema_warming_up(config.ema)) if config.ema else None
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16)
    trained = distributed.wrap(model, runtime, find_unused_parameters=objective.skips_parameters)
    return Weights(model, trained, optimizer, scaler, averaged)


def starting_position(out: Path, weights: Weights, runtime: Runtime, report: Reporter, *, resume: bool) -> dict:
    """Where training stands: the start, or the saved state's position. `running` sums the current epoch's loss
    and figures, so that a resumed epoch reports the same as an uninterrupted one."""
    position = dict(epoch=0, batch=0, step=0, best=None, evals_since_best=0, elapsed=0.0, log_bytes=0,
                    running={}, world_size=runtime.world_size)
    if resume:
        position = restore(out, weights, runtime)
        if position.get("world_size", 1) != runtime.world_size:
            raise UserError(f"{out} was saved by {position.get('world_size', 1)} process(es) and each one's place "
                            f"in the data depends on that: resume it with {position.get('world_size', 1)}, not "
                            f"{runtime.world_size}.")
        report.say(f"resumed at epoch {position['epoch'] + 1}, batch {position['batch']}, step "
                   f"{position['step']}")
    if runtime.is_main:
        with open(out / checkpoint.LOG, "a+b") as log:  # drop evaluations logged after the state we resume from
            log.truncate(position["log_bytes"])
    return position


def take_step(weights: Weights, objective: Objective, batch: Batch, step: int, lr: float, config: Config,
              runtime: Runtime) -> dict:
    """One optimizer step (and EMA update) on a batch; returns the batch's sums for the running figures."""
    tensors = to_device(batch.tensors, runtime.device)
    for group in weights.optimizer.param_groups:
        group["lr"] = lr
    with runtime.autocast():
        loss, sums = objective.loss(weights.trained, tensors)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise UserError(f"the loss became {loss_value} at step {step + 1}: training stopped and the last good "
                        f"state is kept; lower --lr (now {config.lr:g}) or use --precision fp32.")
    weights.optimizer.zero_grad(set_to_none=True)
    weights.scaler.scale(loss * batch.weight).backward()
    if objective.second_loss:
        weights.scaler.scale(objective.second_loss(weights.trained, tensors) * batch.weight).backward()
    if config.grad_clip:
        weights.scaler.unscale_(weights.optimizer)
        torch.nn.utils.clip_grad_norm_(weights.model.parameters(), config.grad_clip)
    weights.scaler.step(weights.optimizer)
    weights.scaler.update()
    if weights.averaged:
        weights.averaged.update_parameters(weights.model)
    return sums


def schedule_steps(config: Config, batches_per_epoch: int) -> int:
    """The steps a run trains for: its epochs, cut at --max-steps."""
    total = config.epochs * batches_per_epoch
    return min(total, config.max_steps) if config.max_steps else total


def learning_rate(step: int, total: int, warmup: int, config: Config) -> float:
    """Linear warm-up to --lr, then the --schedule decay: a pure function of the step, so resuming is exact."""
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress)


def ema_warming_up(decay: float):
    """AveragedModel's update for --ema: the decay grows as (1 + n) / (10 + n) up to `decay` (n: updates so
    far), as TensorFlow's ExponentialMovingAverage with num_updates. A fixed decay keeps the random initial
    weights in the average for long (with 0.995, a quarter of it after RT's first two epochs), so early
    evaluations, and tune's pruner that reads them, judged EMA runs by a stale average."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        # Computed on the count's device: reading it (.item()) would make each CUDA step wait for the GPU.
        n = updates.double()
        weight = 1 - ((n + 1) / (n + 10)).clamp(max=decay)
        for mine, theirs in zip(averaged, current):
            mine.lerp_(theirs, weight.to(mine.dtype))
    return update


def patience_exhausted(position: dict, config: Config) -> bool:
    return bool(config.patience) and position["evals_since_best"] >= config.patience


def save_due(config: Config, step: int, last_save: float) -> bool:
    if config.save_every and step % config.save_every == 0:
        return True
    return time.monotonic() - last_save >= SAVE_INTERVAL_SECONDS


class StopSignal:
    """Turns the first Ctrl-C or SIGTERM into a request to save and stop after the current step."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -- resumable state ----------------------------------------------------------------------------------

def save_state(out: Path, position: dict, weights: Weights) -> None:
    optimizer_state = weights.optimizer.state_dict()
    moments = {f"{index}.{name}": value for index, state in optimizer_state["state"].items()
               for name, value in state.items()}
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    tensors = dict(model=weights.model.state_dict(), optimizer=moments, rng=rng)
    if weights.averaged:
        tensors["averaged"] = weights.averaged.state_dict()
    scaler = weights.scaler
    checkpoint.save_state(out, dict(position, optimizer_groups=optimizer_state["param_groups"],
                                    scaler=scaler.state_dict() if scaler.is_enabled() else None), tensors)


def restore(out: Path, weights: Weights, runtime: Runtime) -> dict:
    position, tensors = checkpoint.load_state(out)
    checkpoint.check_state_dict(tensors["model"], weights.model.state_dict(), out / position["state"])
    weights.model.load_state_dict(tensors["model"])
    averaged = weights.averaged
    if averaged:
        checkpoint.check_state_dict(tensors.get("averaged", {}), averaged.state_dict(), out / position["state"])
        averaged.load_state_dict(tensors["averaged"])
    state: dict = {}
    for key, value in tensors["optimizer"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value.to(runtime.device) if name != "step" else value
    groups = position.pop("optimizer_groups")
    for group in groups:
        group["betas"] = tuple(group["betas"])
    try:
        weights.optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise UserError(f"the saved optimizer state in {out} does not fit this model ({e}): start a new run "
                        "with --overwrite.") from None
    scaler_state = position.pop("scaler", None)
    if scaler_state and weights.scaler.is_enabled():
        weights.scaler.load_state_dict(scaler_state)
    torch.set_rng_state(tensors["rng"]["torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors["rng"][k] for k in sorted(tensors["rng"]) if k.startswith("cuda.")]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    for key in ("state", "checksums"):
        position.pop(key, None)
    return position
