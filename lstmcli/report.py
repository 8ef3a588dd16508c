"""One self-contained HTML page about a run: learning curves, confusion matrix, per-class scores, the most
confident mistakes, settings and data.

Figures are drawn with matplotlib (Agg, no display) and embedded as base64 PNG, so the page opens
anywhere, offline, and refers to nothing outside itself. A run still training (no metrics.json yet)
gets its curves so far, and a language-model run (log lines with val_perplexity, no labels) its
perplexity curve; the classification sections are left out with a note saying why.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import io
import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from .checkpoint import CONFIG, LOG, METRICS, REPORT, WEIGHTS, atomic_write, read_json
from .config import Config, option_name
from .errors import UserError
from .evaluate import evaluation_rows, metrics, no_better_than_majority

GENERATOR = "lstmcli report"  # marks files this module wrote, which it may replace
MISTAKES = 20
TEXT_SHOWN = 400  # characters of a mistaken text shown on the page


@dataclass
class Scored:
    """A run's predictions on one split: the confusion matrix and the most confident mistakes."""
    metrics: dict
    dataset: str
    split: str
    mistakes: list[dict]  # text, true, predicted, probability; most confident first


@dataclass
class Report:
    directory: Path
    record: dict
    log: list[dict]
    final: dict | None  # metrics.json, absent while the run trains
    scored: Scored | None
    notes: list[str] = field(default_factory=list)


def write_report(model_dir: str | Path, *, output: str | Path | None = None, png_dir: str | Path | None = None,
                 dataset: str | None = None, split: str | None = None, batch_size: int = 256, device: str = "auto",
                 threads: int = 0) -> Path:
    """Write the run's report page (default: report.html in the run) and, with `png_dir`, each figure as
    a PNG; returns the page's path."""
    report = gather(Path(model_dir), dataset=dataset, split=split, batch_size=batch_size, device=device,
                    threads=threads)
    output = Path(output) if output else report.directory / REPORT
    figures = draw_figures(report)
    _check_replaceable(output)
    if png_dir:
        png_dir = Path(png_dir)
        for name in figures:
            _check_replaceable(png_dir / f"{name}.png")
        png_dir.mkdir(parents=True, exist_ok=True)
        for name, png in figures.items():
            atomic_write(png_dir / f"{name}.png", png)
    atomic_write(output, render(report, figures))
    return output


def gather(directory: Path, *, dataset: str | None = None, split: str | None = None, batch_size: int = 256,
           device: str = "auto", threads: int = 0) -> Report:
    """Everything the page shows: the run's files, and its predictions on the evaluation split."""
    if not directory.is_dir():
        raise UserError(f"run directory {directory} not found: pass --model-dir of a run lstmcli train wrote.")
    record = read_json(directory / CONFIG, "this is not an lstmcli run directory; pass --model-dir of a run.")
    final = read_json(directory / METRICS, "") if (directory / METRICS).exists() else None
    report = Report(directory, record, read_log(directory / LOG), final, None)
    classifier = record.get("task", "classifier") == "classifier" and record.get("labels")
    if final is None:
        report.notes.append("This run has no metrics.json yet: it is still training, or it stopped before the "
                            "end. The curves show the evaluations logged so far"
                            + (", the scores below come from the best weights saved so far." if classifier else "."))
    if not classifier:
        report.notes.append(f"This is not a classifier run ({record.get('task') or 'no labels'}): only its curves "
                            "and settings are shown.")
    elif not (directory / WEIGHTS).exists():
        report.notes.append("No weights saved yet (the run has not finished its first evaluation): there are "
                            "no predictions to show.")
    else:
        report.scored = score(directory, dataset=dataset, split=split, batch_size=batch_size, device=device,
                              threads=threads)
        if no_better_than_majority(report.scored.metrics):
            report.notes.append(f"On {report.scored.split}, the model does no better than answering "
                                f"{report.scored.metrics['majority']['label']!r} for every text: it has not learned to "
                                "tell the classes apart.")
    return report


def read_log(path: Path) -> list[dict]:
    """The evaluations in log.jsonl; a last line still being written is left out."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "step" in entry:
            entries.append(entry)
    return entries


def score(directory: Path, *, dataset: str | None, split: str | None, batch_size: int, device: str,
          threads: int) -> Scored:
    """Predict the split `lstmcli eval` would score (by default the run's test split, else its validation
    data) and keep the confusion matrix and the most confident mistakes."""
    from .backends import load_scorer
    from .checkpoint import load_run
    from .predict import Predictor

    run = load_run(directory)
    rows = evaluation_rows(run, dataset=dataset, split=split)
    predictor = Predictor(run, load_scorer(run, device=device, threads=threads), batch_size)
    names = run.labels.names
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    mistakes: list[tuple[float, int, dict]] = []  # a min-heap of the most confident so far
    seen = 0
    for texts, truths in rows.chunks:
        for prediction, truth in zip(predictor.predict(texts), truths):
            guess = index[prediction.label]
            matrix[truth, guess] += 1
            seen += 1
            if guess != truth:
                item = (prediction.probability, seen, dict(text=prediction.text, true=names[truth],
                                                           predicted=prediction.label,
                                                           probability=prediction.probability))
                (heapq.heappush if len(mistakes) < MISTAKES else heapq.heappushpop)(mistakes, item)
    if seen == 0:
        raise UserError(f"{rows.what} has no usable rows: pass --split with a split that has labelled rows.")
    worst = [item[2] for item in sorted(mistakes, key=lambda item: (-item[0], item[1]))]
    return Scored(metrics(matrix, names), rows.dataset, rows.split, worst)


# -- figures -------------------------------------------------------------------------------------------

def draw_figures(report: Report) -> dict[str, bytes]:
    """PNG bytes of each figure the page shows, by name."""
    import matplotlib

    matplotlib.use("Agg")
    figures = {}
    if report.log:
        figures["learning-curves"] = _png(learning_curves(report.log))
    if report.scored:
        figures["confusion-matrix"] = _png(confusion_figure(report.scored.metrics))
        figures["per-class"] = _png(per_class_figure(report.scored.metrics))
    return figures


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": GENERATOR})
    plt.close(figure)
    return buffer.getvalue()


def learning_curves(log: list[dict]):
    """Train (and validation) loss, and the validation metric per evaluation, the best one starred:
    accuracy and macro-F1 for a classifier, perplexity for a language model."""
    import matplotlib.pyplot as plt

    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [e["step"] for e in log]
    for key, label in (("train_loss", "train loss (mean over the epoch so far)"), ("val_loss", "validation loss")):
        _plot(losses, log, key, label)
    losses.set(title="loss", xlabel="step")
    perplexity = any("val_perplexity" in e for e in log)
    keys = [("val_perplexity", "validation perplexity")] if perplexity else \
        [("val_accuracy", "validation accuracy"), ("val_macro_f1", "validation macro-F1")]
    for key, label in keys:
        _plot(scores, log, key, label)
    best = _best(log, keys[0][0], lower_is_better=perplexity)
    if best is not None:
        value = best[keys[0][0]]
        scores.plot([best["step"]], [value], marker="*", markersize=16, color="#d62728", linestyle="none",
                    label=f"best: {value:.4g} at step {best['step']}", zorder=5)
    if perplexity:
        scores.set_yscale("log")
    scores.set(title="validation", xlabel="step")
    for axes in (losses, scores):
        _mark_epochs(axes, log)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
        axes.set_xlim(left=0, right=max(steps) * 1.03 or 1)
    figure.tight_layout()
    return figure


def _plot(axes, log: list[dict], key: str, label: str) -> None:
    points = [(e["step"], e[key]) for e in log if isinstance(e.get(key), (int, float))]
    if points:
        axes.plot(*zip(*points), marker="o", markersize=3, label=label)


def _best(log: list[dict], key: str, lower_is_better: bool) -> dict | None:
    """The evaluation training kept as best (the last one it marked), else the best value of `key`."""
    marked = [e for e in log if e.get("best") and isinstance(e.get(key), (int, float))]
    if marked:
        return marked[-1]
    valued = [e for e in log if isinstance(e.get(key), (int, float))]
    if not valued:
        return None
    return (min if lower_is_better else max)(valued, key=lambda e: e[key])


def _mark_epochs(axes, log: list[dict]) -> None:
    """A faint line at the last evaluation of each epoch but the last, where the next epoch starts."""
    for before, after in zip(log, log[1:]):
        if after.get("epoch") != before.get("epoch"):
            axes.axvline(before["step"], color="#999999", linewidth=0.6, linestyle=":")


def confusion_figure(result: dict):
    """Counts in each cell, shaded by the share of the true class's examples (so rare classes show)."""
    import matplotlib.pyplot as plt

    matrix, names = np.asarray(result["confusion_matrix"]), result["labels"]
    n = len(names)
    side = min(12, 2.5 + 0.5 * n)
    figure, axes = plt.subplots(figsize=(side + 1, side))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    font = 12 if n <= 5 else 10 if n <= 12 else 8
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if share[row, column] > 0.6 else "black" if count else "#aaaaaa"
        axes.text(column, row, f"{count:,}", ha="center", va="center", fontsize=font, color=colour)
    axes.set_xticks(range(n), names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center",
                    fontsize=font + 1)
    axes.set_yticks(range(n), names, fontsize=font + 1)
    axes.set(xlabel="predicted", ylabel="true")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    return figure


def per_class_figure(result: dict):
    import matplotlib.pyplot as plt

    names, per_class = result["labels"], result["per_class"]
    n = len(names)
    figure, axes = plt.subplots(figsize=(11, 1.2 + 0.3 * n))
    height = 0.27
    for offset, key in enumerate(("precision", "recall", "f1")):
        axes.barh(np.arange(n) + (offset - 1) * height, [per_class[c][key] for c in names], height,
                  label="F1" if key == "f1" else key)
    axes.set_yticks(range(n), names)
    axes.invert_yaxis()
    axes.set(xlim=(0, 1), xlabel="score")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncols=3, frameon=False)
    figure.tight_layout()
    return figure


# -- the page ------------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 24px; color: #1d1d1f; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; } .note { background: #fff6d6; border-left: 4px solid #e0b000; padding: 8px 12px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figure { max-width: 100%; } .tiles { display: flex; gap: 14px; flex-wrap: wrap; }
.tile { background: #f5f5f7; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.tile b { display: block; font-size: 22px; } .changed { font-weight: 600; } .text { max-width: 640px; }
"""


def render(report: Report, figures: dict[str, bytes]) -> str:
    """The page: every text escaped, every figure inline."""
    settings = report.record.get("settings", {})
    parts = [f"<h1>Run report: {escape(str(report.directory))}</h1>",
             f"<p class='sub'>{escape(_architecture(settings))}; data {escape(str(settings.get('dataset')))}"
             "</p>"]
    parts += [f"<p class='note'>{escape(note)}</p>" for note in report.notes]
    parts.append(_headline(report))
    parts.append("<h2>Learning curves</h2>")
    parts.append(_image(figures, "learning-curves", "learning curves") if report.log
                 else "<p>No evaluation logged yet.</p>")
    if report.scored:
        parts.append(_scored_sections(report.scored, figures))
    parts.append(_data_section(report))
    parts.append(_settings_section(settings))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='generator' content='{GENERATOR}'>"
            f"<title>lstmcli report: {escape(report.directory.name)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def _architecture(settings: dict) -> str:
    if not settings:
        return "settings unknown"
    kind = "BiLSTM" if settings.get("bidirectional") else "LSTM"
    return (f"{settings.get('layers')}-layer {kind}-{settings.get('hidden_size')}, embeddings "
            f"{settings.get('embed_dim')}, {settings.get('pooling')} pooling")


def _headline(report: Report) -> str:
    tiles = []
    final = report.final or {}
    for split in ("validation", "test"):
        for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("perplexity", "perplexity")):
            if isinstance((final.get(split) or {}).get(key), (int, float)):
                tiles.append((f"{split} {name}", f"{final[split][key]:.4f}"))
    best = final.get("best") or _best(report.log, "val_accuracy", False) or _best(report.log, "val_perplexity", True)
    if best:
        tiles.append(("best validation at", f"step {best['step']}"))
    if final.get("train"):
        tiles.append(("training", f"{final['train']['steps']:,} steps, {final['train']['seconds']:.0f} s"))
    elif report.log:
        tiles.append(("logged so far", f"step {report.log[-1]['step']:,}, {report.log[-1].get('elapsed', 0):.0f} s"))
    cells = "".join(f"<div class='tile'>{escape(name)}<b>{escape(value)}</b></div>" for name, value in tiles)
    return f"<div class='tiles'>{cells}</div>"


def _image(figures: dict[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(figures[name]).decode("ascii")
    return f"<img class='figure' alt='{escape(alt)}' src='data:image/png;base64,{data}'>"


def _scored_sections(scored: Scored, figures: dict[str, bytes]) -> str:
    result = scored.metrics
    where = f"{scored.dataset} [{scored.split}]"
    rows = "".join(f"<tr><td>{escape(name)}</td>" + "".join(f"<td class='num'>{s[k]:.4f}</td>" for k in
                                                          ("precision", "recall", "f1"))
                   + f"<td class='num'>{s['support']:,}</td></tr>" for name, s in result["per_class"].items())
    mistakes = "".join(
        f"<tr><td class='text'>{escape(_shorten(m['text']))}</td><td>{escape(m['true'])}</td>"
        f"<td>{escape(m['predicted'])}</td><td class='num'>{m['probability']:.4f}</td></tr>"
        for m in scored.mistakes)
    return "".join([
        f"<h2>Confusion matrix: {escape(where)}</h2>",
        f"<p>{result['num_examples']:,} examples, accuracy {result['accuracy']:.4f}, macro-F1 "
        f"{result['macro_f1']:.4f}{_baseline(result)}. Rows are the true classes; each cell shows its count, shaded "
        "by its share of the row.</p>",
        _image(figures, "confusion-matrix", "confusion matrix"),
        "<h2>Per-class scores</h2>",
        _image(figures, "per-class", "per-class precision, recall and F1"),
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
        f"{rows}</table>",
        f"<h2>Most confident mistakes: {escape(where)}</h2>",
        f"<table><tr><th>text</th><th>true</th><th>predicted</th><th>probability</th></tr>{mistakes}</table>"
        if scored.mistakes else "<p>No mistakes on this split.</p>",
    ])


def _baseline(result: dict) -> str:
    majority = result["majority"]
    return (f"; answering {escape(repr(majority['label']))} for every text would score {majority['accuracy']:.4f}"
            if majority else "")


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_SHOWN else text[:TEXT_SHOWN] + " …"


def _data_section(report: Report) -> str:
    record, final = report.record, report.final or {}
    data = record.get("data", {})
    settings = record.get("settings", {})
    splits, rows = data.get("splits", {}), data.get("rows", {})
    facts = [("dataset", settings.get("dataset")), ("dataset configuration", settings.get("dataset_config")),
             ("text column", data.get("text_column")), ("label column", data.get("label_column"))]
    facts += [(f"{role} split", f"{name} ({rows[role]:,} rows)" if isinstance(rows.get(role), int) else name)
              for role, name in splits.items() if name]
    facts += [("training texts cut by --max-length", data.get("truncated_train_texts")),
              ("labels", ", ".join((record.get("labels") or {}).get("names", [])) or None),
              ("task", record.get("task")), ("unigram perplexity (the floor to beat)", final.get("unigram_perplexity")),
              ("vocabulary", f"{record['vocab_size']:,} tokens" if "vocab_size" in record else None),
              ("versions", ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items()) or None)]
    if final.get("best"):
        facts.append(("best evaluation", ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in final["best"].items())))
    body = "".join(f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>"
                   for name, value in facts if value not in (None, ""))
    return f"<h2>Data</h2><table>{body}</table>"


def _settings_section(settings: dict) -> str:
    """Every setting of the run by group; those that differ from the defaults in bold."""
    known = {f.name: f for f in dataclasses.fields(Config)}
    groups: dict[str, list[str]] = {}
    for name, value in settings.items():
        spec = known.get(name)
        changed = spec is None or spec.default != value
        row = (f"<tr class='{'changed' if changed else ''}'><td>{escape(option_name(name))}</td>"
               f"<td>{escape(json.dumps(value))}</td></tr>")
        groups.setdefault(spec.metadata["group"] if spec else "other", []).append(row)
    tables = "".join(f"<div><h3>{escape(group)}</h3><table>{''.join(rows)}</table></div>"
                     for group, rows in groups.items())
    return f"<h2>Settings</h2><p>Bold: changed from the default.</p><div class='tiles'>{tables}</div>"


def _check_replaceable(path: Path) -> None:
    """Refuse to replace a file that lstmcli report did not write."""
    if not path.exists():
        return
    if path.is_dir():
        raise UserError(f"{path} is a directory: give --output a file name.")
    head = path.read_bytes()[:4096]
    if GENERATOR.encode() not in head:
        raise UserError(f"{path} exists and was not written by lstmcli report: choose another name, or "
                        "remove it first.")
