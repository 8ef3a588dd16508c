"""What the user sees: status lines and a progress bar on stderr, metric tables on stdout."""

from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


class Reporter:
    """Status lines and progress of a training run on stderr; silent with --quiet or on ranks > 0."""

    def __init__(self, quiet: bool = False):
        self.console = Console(stderr=True, quiet=quiet, highlight=False, soft_wrap=True)

    def say(self, message: str) -> None:
        self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", markup=False)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None):
        """A progress bar for a stretch of work; yields `advance(n, **fields)`."""
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                            console=self.console, transient=True,
                            disable=self.console.quiet or not self.console.is_terminal)
        with progress:
            task = progress.add_task(description, total=total, status="")
            yield lambda n=1, status="": progress.update(task, advance=n, status=status)


class Throughput:
    """Real (unpadded) tokens per second over the steps since the last reading."""

    def __init__(self):
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        return self.tokens / max(1e-9, time.perf_counter() - self.start)


def human(number: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(number) >= size:
            return f"{number / size:.1f}{unit}"
    return f"{number:.0f}"


def print_metrics(result: dict, title: str, console: Console | None = None) -> None:
    """Accuracy and macro-F1, then per-class scores and the confusion matrix, as tables."""
    console = console or Console(highlight=False)
    majority = result["majority"]
    baseline = f" (answering {majority['label']!r} for every text: {majority['accuracy']:.4f})" if majority else ""
    console.print(f"{title}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
                  f"{result['num_examples']:,} examples{baseline}", markup=False, style="bold")
    per_class = Table("class", "precision", "recall", "F1", "support")
    for name, scores in result["per_class"].items():
        per_class.add_row(name, f"{scores['precision']:.4f}", f"{scores['recall']:.4f}", f"{scores['f1']:.4f}",
                          f"{scores['support']:,}")
    console.print(per_class)
    matrix = Table("true \\ predicted", *result["labels"], title="confusion matrix")
    for name, row in zip(result["labels"], result["confusion_matrix"]):
        matrix.add_row(name, *(f"{count:,}" for count in row))
    console.print(matrix)
