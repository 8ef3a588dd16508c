"""lstmcli report: one self-contained page whose numbers are eval's, for finished, partial, many-class and
language-model runs."""

import base64
import json
import random
import shutil
from html.parser import HTMLParser

import pytest

from conftest import TINY_SETTINGS, assert_one_line_error, write_jsonl, write_uninformative_splits
from lstmcli.config import Config
from lstmcli.evaluate import evaluate_run
from lstmcli.report import gather, learning_curves, write_report
from lstmcli.train import train

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Every tag with its attributes, the text of table cells, and the text of the page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags, self.cells, self.text, self._cell = [], [], [], None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def images(self) -> list[bytes]:
        sources = [attrs["src"] for tag, attrs in self.tags if tag == "img"]
        assert all(s.startswith("data:image/png;base64,") for s in sources), sources
        return [base64.b64decode(s.split(",", 1)[1]) for s in sources]


def assert_self_contained(html: str) -> Page:
    page = Page(html)
    assert "http://" not in html and "https://" not in html
    assert not [t for t, a in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            assert name not in attrs or attrs[name].startswith("data:"), (tag, attrs)
    assert all(png.startswith(PNG) for png in page.images())
    return page


def train_run(folder, rows_by_split: dict, **settings):
    for split, rows in rows_by_split.items():
        write_jsonl(folder / "data" / f"{split}.jsonl", rows)
    out = folder / "run"
    train(Config(dataset=str(folder / "data"), output_dir=str(out), **{**TINY_SETTINGS, **settings}), quiet=True)
    return out


def test_report_of_a_finished_run_is_self_contained_and_counts_as_eval_does(tiny_run, tmp_path, cli):
    output, pngs = tmp_path / "page.html", tmp_path / "figures"
    code, out, err = cli("report", "--model-dir", tiny_run, "--output", output, "--png", pngs, "--threads", "1")
    assert code == 0, err
    assert out.strip() == str(output)
    page = assert_self_contained(output.read_text(encoding="utf-8"))
    assert len(page.images()) == 3  # curves, confusion matrix, per-class scores
    assert sorted(p.name for p in pngs.iterdir()) == ["confusion-matrix.png", "learning-curves.png", "per-class.png"]
    assert {p.read_bytes() for p in pngs.iterdir()} == set(page.images())

    evaluated = evaluate_run(tiny_run, threads=1)
    scored = gather(tiny_run, threads=1).scored
    assert scored.metrics["confusion_matrix"] == evaluated["confusion_matrix"]
    assert scored.split == evaluated["split"] == "test"
    for name, scores in evaluated["per_class"].items():  # the per-class table shows eval's figures
        row = page.cells.index(name)
        assert page.cells[row + 1:row + 5] == [f"{scores['precision']:.4f}", f"{scores['recall']:.4f}",
                                               f"{scores['f1']:.4f}", f"{scores['support']:,}"]
    support = [sum(row) for row in evaluated["confusion_matrix"]]
    common = max(range(len(support)), key=support.__getitem__)
    text = "".join(page.text)
    assert (f"answering {evaluated['labels'][common]!r} for every text would score "
            f"{support[common] / sum(support):.4f}") in text
    assert "has not learned" not in text
    wrong = sum(map(sum, evaluated["confusion_matrix"])) - sum(evaluated["confusion_matrix"][i][i] for i in (0, 1))
    assert len(scored.mistakes) == min(wrong, 20)
    probabilities = [m["probability"] for m in scored.mistakes]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(m["true"] != m["predicted"] and m["text"] for m in scored.mistakes)
    assert "Most confident mistakes" in "".join(page.text) and "--embed-dim" in page.cells

    code, _, err = cli("report", "--model-dir", tiny_run, "--output", output, "--threads", "1")
    assert code == 0, err  # its own earlier page is replaced
    foreign = tmp_path / "notes.html"
    foreign.write_text("<p>my notes</p>")
    code, _, err = cli("report", "--model-dir", tiny_run, "--output", foreign, "--threads", "1")
    assert_one_line_error(code, err, "not written by lstmcli report")
    assert foreign.read_text() == "<p>my notes</p>"
    assert_one_line_error(*cli("report", "--model-dir", tmp_path / "nothing")[::2], "not found")


@pytest.mark.parametrize("classes", [5, 20])
def test_many_classes_and_names_that_need_escaping(tmp_path, classes):
    rng = random.Random(classes)
    names = [f"c{i}<b>&" for i in range(classes)]

    def rows(count):
        return [{"text": " ".join(rng.choices(["the", "a", "film", "was"], k=3) + [f"w{i % classes}"] * 2),
                 "label": names[i % classes]} for i in range(count)]

    run = train_run(tmp_path, dict(train=rows(classes * 20), validation=rows(classes * 4), test=rows(classes * 4)),
                    epochs=3)
    path = write_report(run, threads=1)
    assert path == run / "report.html"
    html = path.read_text(encoding="utf-8")
    page = assert_self_contained(html)
    assert "<b>&" not in html.replace("<b>&amp;", "")  # every name arrives escaped ...
    assert set(names) <= set(page.cells)                # ... and reads back as written
    scored = gather(run, threads=1).scored
    assert len(scored.metrics["confusion_matrix"]) == classes
    assert scored.metrics["confusion_matrix"] == evaluate_run(run, threads=1)["confusion_matrix"]


def test_a_run_that_learned_nothing_is_called_so(tmp_path):
    run = tmp_path / "blank-run"
    train(Config(dataset=str(write_uninformative_splits(tmp_path / "blank")), output_dir=str(run), **TINY_SETTINGS),
          quiet=True)
    text = "".join(assert_self_contained(write_report(run, threads=1).read_text(encoding="utf-8")).text)
    assert "On validation, the model does no better than answering 'positive' for every text" in text
    assert "answering 'positive' for every text would score 0.7500" in text


def test_a_run_still_training_and_one_without_weights(tiny_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run, partial)
    (partial / "metrics.json").unlink()
    first = (partial / "log.jsonl").read_text().splitlines()[0]
    (partial / "log.jsonl").write_text(first + "\n" + first[:25])  # a line still being written
    html = write_report(partial, threads=1).read_text(encoding="utf-8")
    page = assert_self_contained(html)
    assert "still training" in "".join(page.text)
    assert len(page.images()) == 3
    assert gather(partial, threads=1).log == [json.loads(first)]

    (partial / "model.safetensors").unlink()
    (partial / "log.jsonl").unlink()
    page = assert_self_contained(write_report(partial, threads=1).read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert "No weights saved yet" in text and "No evaluation logged yet" in text and not page.images()


def test_a_language_model_run_gets_its_perplexity_curve(tmp_path, tiny_dataset):
    from lstmcli.pretrain import pretrain

    run = tmp_path / "lm"
    pretrain(Config(dataset=str(tiny_dataset), output_dir=str(run), **TINY_SETTINGS), quiet=True)
    page = assert_self_contained(write_report(run).read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert len(page.images()) == 1 and "not a classifier run" in text
    final = json.loads((run / "metrics.json").read_text())
    assert f"validation perplexity{final['validation']['perplexity']:.4f}" in text
    assert f"best validation atstep {final['best']['step']}" in text

    log = gather(run).log
    figure = learning_curves(log)
    labels = figure.axes[1].get_legend_handles_labels()[1]
    best = min(log, key=lambda e: e["val_perplexity"])
    assert labels[0] == "validation perplexity"
    assert labels[1] == f"best: {best['val_perplexity']:.4g} at step {best['step']}"
    assert figure.axes[1].get_yscale() == "log"


def test_learning_curves_mark_the_best_evaluation(tiny_run):
    log = gather(tiny_run, threads=1).log
    figure = learning_curves(log)
    best = [e for e in log if e["best"]][-1]
    star = [line for line in figure.axes[1].get_lines() if line.get_marker() == "*"][0]
    assert list(star.get_xdata()) == [best["step"]] and list(star.get_ydata()) == [best["val_accuracy"]]
    accuracy = [line for line in figure.axes[1].get_lines() if line.get_label() == "validation accuracy"][0]
    assert list(accuracy.get_ydata()) == [e["val_accuracy"] for e in log]


def test_help_names_every_option(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = cli("report", "--help")
    assert code == 0
    for option in ("--model-dir", "--output", "--png", "--dataset", "--split"):
        assert option in out
    code, out, _ = cli("predict", "--help")
    assert code == 0 and "--explain" in out and "occlusion" in out
