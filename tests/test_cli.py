"""The command line as users run it: help, train -> eval -> predict, inputs, and every error's one line."""

import dataclasses
import json
import re

import pytest

from conftest import TINY, assert_one_line_error, make_rows, run_cli, write_jsonl, write_uninformative_splits
from lstmcli.config import PRETRAIN_ONLY, Config, option_name


def test_help_of_every_command_in_a_new_process():
    for args in (["--help"], ["train", "--help"], ["eval", "--help"], ["predict", "--help"]):
        result = run_cli(*args, env={"COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout


def test_console_script_and_module_both_run():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("lstmcli") or str(Path(sys.executable).parent / "lstmcli")
    result = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout


def test_every_setting_is_a_flag_with_help(cli, monkeypatch):
    """Every setting is a flag of train, but those of what pretrain learns, which are pretrain's only."""
    monkeypatch.setenv("COLUMNS", "250")
    texts = {}
    for command in ("train", "pretrain"):
        code, out, _ = cli(command, "--help")
        assert code == 0
        texts[command] = re.sub(r"[\s│]+", " ", out)
    for field in dataclasses.fields(Config):
        flag = (field.metadata["flag"] or option_name(field.name)).split("/")[0]
        pretraining = field.name in PRETRAIN_ONLY
        assert flag in texts["pretrain" if pretraining else "train"], flag
        assert pretraining != (flag in texts["train"]), flag
        assert len(field.metadata["help"]) > 15, field.name


def test_train_eval_predict_in_new_processes(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    trained = run_cli("train", "--dataset", tiny_dataset, "--output-dir", run, "--bidirectional", *TINY)
    assert trained.returncode == 0, trained.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json", "log.jsonl"} <= \
        {p.name for p in run.iterdir()}
    assert not (run / "cache").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.85

    evaluated = run_cli("eval", "--model-dir", run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "labels", "num_examples"} <= set(result)
    assert result["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert result["labels"] == ["negative", "positive"] and result["num_examples"] == 100
    assert result["majority"] == {"label": "negative", "accuracy": 0.5}  # the generated splits alternate classes

    table = run_cli("eval", "--model-dir", run, env={"COLUMNS": "120"})
    assert table.returncode == 0 and "confusion matrix" in table.stdout and "positive" in table.stdout
    assert "(answering 'negative' for every text: 0.5000)" in " ".join(table.stdout.split())  # as wrapped

    predicted = run_cli("predict", "--model-dir", run, "a wonderful superb film", "awful boring dreadful plot")
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["positive", "negative"]
    assert all(0.5 < float(line.split("\t")[1]) <= 1 for line in lines)


def test_predict_inputs_and_json(tiny_run, tmp_path, cli):
    code, out, _ = cli("predict", "--model-dir", tiny_run, "--json", "lovely excellent", "terrible poor")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["label"] for r in rows] == ["positive", "negative"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    assert rows[0]["probability"] == max(rows[0]["probabilities"].values())

    lines = tmp_path / "texts.txt"
    lines.write_text("great wonderful\n\nawful dull\n")
    code, out, _ = cli("predict", "--model-dir", tiny_run, "--file", lines)
    assert code == 0 and len(out.splitlines()) == 3  # one output per input line, the empty one included

    table = write_jsonl(tmp_path / "texts.jsonl", [{"id": 1, "review": "superb brilliant"}])
    code, out, _ = cli("predict", "--model-dir", tiny_run, "--file", table, "--text-column", "review")
    assert code == 0 and out.startswith("positive\t")

    result = run_cli("predict", "--model-dir", tiny_run, "-", input="superb wonderful\ndreadful awful\n")
    assert result.returncode == 0 and [l.split("\t")[0] for l in result.stdout.splitlines()] == \
        ["positive", "negative"]


def test_eval_on_another_dataset_with_the_same_labels(tiny_run, tmp_path, cli):
    path = write_jsonl(tmp_path / "other.jsonl", [{"sentence": r["text"], "sentiment": ["negative", "positive"][r["label"]]}
                                                  for r in make_rows(60, seed=7)])
    code, out, err = cli("eval", "--model-dir", tiny_run, "--dataset", path, "--json")
    assert code == 0, err
    assert json.loads(out)["num_examples"] == 60  # a single file is evaluated whole


def test_a_run_that_learned_nothing_says_so(tmp_path, tiny_dataset, cli):
    # The best a model can do there is to answer "positive" every time, which a run must not pass off as a result.
    talkative = [arg for arg in TINY if arg != "--quiet"]
    code, _, err = cli("train", "--dataset", write_uninformative_splits(tmp_path / "blank"), "--output-dir",
                       tmp_path / "blank-run", "--adversarial", "at", *talkative)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "no better than answering" in line]
    assert len(warning) == 1 and "'positive' for every text (0.7500)" in warning[0], err
    assert "--lr (now 0.01)" in warning[0] and "--adversarial none" in warning[0]

    code, _, err = cli("train", "--dataset", tiny_dataset, "--output-dir", tmp_path / "learned", *talkative)
    assert code == 0 and "done in" in err and "no better than answering" not in err, err


def test_training_into_an_existing_run_needs_overwrite(tiny_run, tiny_dataset, cli):
    before = (tiny_run / "model.safetensors").read_bytes()
    code, _, err = cli("train", "--dataset", tiny_dataset, "--output-dir", tiny_run, *TINY)
    assert_one_line_error(code, err, "already holds a run", "--overwrite")
    assert (tiny_run / "model.safetensors").read_bytes() == before


def test_a_non_empty_folder_that_is_not_a_run_is_refused(tmp_path, tiny_dataset, cli):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli("train", "--dataset", tiny_dataset, "--output-dir", tmp_path, *TINY)
    assert_one_line_error(code, err, "not empty")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- errors: one line, the fix, a non-zero exit, no traceback ------------------------------------------

def corrupt_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def bad_files(tmp_path):
    files = {
        "empty": tmp_path / "empty.jsonl",
        "latin1": tmp_path / "latin1.jsonl",
        "broken": tmp_path / "broken.jsonl",
        "ragged": tmp_path / "ragged.csv",
        "columns": tmp_path / "columns.jsonl",
        "ambiguous": tmp_path / "ambiguous.jsonl",
        "one_class": tmp_path / "one_class.jsonl",
        "floats": tmp_path / "floats.jsonl",
        "new_label": tmp_path / "new_label.jsonl",
    }
    files["empty"].write_text("")
    files["latin1"].write_bytes('{"text": "caf\xe9 cr\xe8me", "label": 1}\n'.encode("latin-1"))
    files["broken"].write_text('{"text": "fine", "label": 1}\n{"text": oops\n')
    files["ragged"].write_text("text,label\ngood film,1\nbad, film, 0, extra\n")
    write_jsonl(files["columns"], [{"words": "x", "y_true": 1}])
    write_jsonl(files["ambiguous"], [{"text": "x", "review": "y", "label": 1}])
    write_jsonl(files["one_class"], [{"text": f"text {i}", "label": "pos"} for i in range(50)])
    write_jsonl(files["floats"], [{"text": f"text {i}", "label": i / 7} for i in range(50)])
    write_jsonl(files["new_label"], [{"text": "good", "label": "neutral"}])
    return files


ERRORS = [
    (["train", "--dataset", "no/such/folder"], "not found"),
    (["train", "--dataset", "./missing.csv"], "not found"),
    (["train", "--dataset", "nobody-has/this-dataset-xyz"], "HF_DATASETS_OFFLINE"),
    (["train", "--dataset", "{columns}"], "no text column"),
    (["train", "--dataset", "{columns}", "--text-column", "words"], "no label column"),
    (["train", "--dataset", "{columns}", "--text-column", "nope"], "columns are: words, y_true"),
    (["train", "--dataset", "{ambiguous}"], "several columns"),
    (["train", "--dataset", "{empty}"], "empty"),
    (["train", "--dataset", "{latin1}"], "not valid UTF-8"),
    (["train", "--dataset", "{broken}"], "cannot parse"),
    (["train", "--dataset", "{ragged}"], "malformed CSV"),
    (["train", "--dataset", "{one_class}"], "at least two"),
    (["train", "--dataset", "{floats}"], "fraction"),
    (["train", "--layers", "0"], "--layers 0 is too small"),
    (["train", "--dropout", "1.5"], "--dropout 1.5 is too large"),
    (["train", "--batch-size", "0"], "--batch-size 0 is too small"),
    (["train", "--pooling", "sum"], "--pooling"),
    (["train", "--layers", "two"], "--layers"),
    (["train", "--precision", "fp16", "--device", "cpu"], "needs a CUDA GPU"),
    (["train", "--device", "cuda"], "no CUDA GPU"),
    (["train", "--tokenizer", "./none/tokenizer.json"], "not found"),
    (["eval", "--model-dir", "{run}", "--dataset", "{new_label}"], "not among the run's labels"),
    (["eval", "--model-dir", "{missing_dir}"], "not found"),
    (["eval", "--model-dir", "{run}", "--split", "nope"], "split 'nope' not found"),
    (["predict", "--model-dir", "{run}"], "nothing to predict"),
    (["predict", "--model-dir", "{missing_dir}", "text"], "not found"),
    (["predict", "--model-dir", "{run}", "--file", "{latin1}"], "not valid UTF-8"),
]


@pytest.mark.parametrize("args,message", ERRORS, ids=[" ".join(a[:3]) + f" [{m}]" for a, m in ERRORS])
def test_errors_are_one_line(args, message, bad_files, tiny_run, tmp_path, cli):
    names = {**bad_files, "run": tiny_run, "missing_dir": tmp_path / "nowhere"}
    args = [a.format(**names) for a in args]
    if args[0] == "train":
        args = ["train", *TINY, "--output-dir", str(tmp_path / "out"), *args[1:]]
    code, _, err = cli(*args)
    assert_one_line_error(code, err, message)


@pytest.mark.parametrize("damage,message", [
    ("weights_bitflip", "corrupt"), ("weights_truncated", "corrupt"), ("no_tokenizer", "tokenizer.json"),
    ("no_weights", "model.safetensors is missing"), ("future_version", "newer lstmcli"),
    ("no_labels", "config.json lacks"), ("wrong_vocab", "tokens but the model"),
])
def test_damaged_runs_are_refused(damage, message, tiny_run, tmp_path, cli):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    if damage == "weights_bitflip":
        corrupt_byte(run / "model.safetensors")
    elif damage == "weights_truncated":
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "no_tokenizer":
        (run / "tokenizer.json").unlink()
    elif damage == "no_weights":
        (run / "model.safetensors").unlink()
    elif damage == "future_version":
        config["format_version"] = 99
    elif damage == "no_labels":
        del config["labels"]
    elif damage == "wrong_vocab":
        config["vocab_size"] += 1
    (run / "config.json").write_text(json.dumps(config))
    for command in (["predict", "--model-dir", run, "some text"], ["eval", "--model-dir", run]):
        code, _, err = cli(*command)
        assert_one_line_error(code, err, message)


def test_errors_in_a_new_process_have_no_traceback_unless_debug(tmp_path):
    result = run_cli("train", "--dataset", tmp_path / "absent.csv", "--output-dir", tmp_path / "out")
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # bad input fails before anything is written
    debug = run_cli("train", "--dataset", tmp_path / "absent.csv", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def flag_table() -> str:
    """The README's table of every train flag, as config.py defines them."""
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    group = None
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if meta["group"] != group:
            group = meta["group"]
            lines.append(f"| **{group}** | | |")
        flag = (meta["flag"] or option_name(field.name)) + (" {" + ",".join(meta["choices"]) + "}" if meta["choices"] else "")
        default = field.default
        shown = "—" if default in (None, ()) else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        lines.append(f"| `{flag}` | {shown} | {meta['help']} |")
    return "\n".join(lines)


def test_readme_documents_every_flag():
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    assert readme.index("make train") < readme.index("make test") < readme.index("## Usage")
    assert f"<!-- flags -->\n{flag_table()}\n<!-- /flags -->" in readme, "regenerate with tests/test_cli.py:flag_table()"
