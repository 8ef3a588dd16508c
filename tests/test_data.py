"""Data sources, formats, columns, labels and splits, through training where it matters."""

import csv
import gzip
import json

import pytest

from conftest import TINY, TINY_SETTINGS, assert_one_line_error, make_rows, named, write_jsonl
from lstmcli.config import Config
from lstmcli.data import Labels, is_validation_row, label_key, open_source, pick_column, read_rows
from lstmcli.errors import UserError
from lstmcli.train import train


def write_csv(path, rows, delimiter=",", header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows([r["text"], r["label"]] for r in rows)
    return path


def write_parquet(path, rows, class_names=None):
    import datasets

    label = datasets.ClassLabel(names=class_names) if class_names else datasets.Value("int64")
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def train_tiny(tmp_path, dataset, **settings):
    config = Config(dataset=str(dataset), output_dir=str(tmp_path / "run"), **{**TINY_SETTINGS, **settings})
    return train(config, quiet=True)


# -- formats ------------------------------------------------------------------------------------------

def test_single_csv_file_trains_and_holds_out_validation_by_hash(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", named(make_rows(500)))
    result = train_tiny(tmp_path, path)
    assert result["splits"]["validation"].startswith("holdout")
    assert result["validation"]["num_examples"] == sum(is_validation_row(r["text"], 0.1) for r in make_rows(500))
    assert result["validation"]["accuracy"] > 0.85


@pytest.mark.parametrize("kind", ["tsv", "jsonl.gz", "json", "parquet"])
def test_each_file_format_trains(tmp_path, kind):
    rows = make_rows(500)
    if kind == "tsv":
        path = write_csv(tmp_path / "data.tsv", rows, delimiter="\t")
    elif kind == "jsonl.gz":
        path = tmp_path / "data.jsonl.gz"
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    elif kind == "json":
        path = tmp_path / "data.json"
        path.write_text(json.dumps(rows))
    else:
        path = write_parquet(tmp_path / "data.parquet", rows)
    assert train_tiny(tmp_path, path)["validation"]["accuracy"] > 0.85


def test_folder_with_a_different_format_per_split(tmp_path):
    folder = tmp_path / "mixed"
    write_jsonl(folder / "train.jsonl", make_rows(400, seed=1))
    write_csv(folder / "validation.csv", make_rows(100, seed=2))
    write_parquet(folder / "test.parquet", make_rows(100, seed=3))
    source = open_source(str(folder))
    assert sorted(source.splits) == ["test", "train", "validation"]
    result = train_tiny(tmp_path, folder)
    assert result["splits"] == {"train": "train", "validation": "validation", "test": "test"}
    assert result["test"]["num_examples"] == 100 and result["test"]["accuracy"] > 0.85


# -- labels -------------------------------------------------------------------------------------------

def test_class_label_feature_gives_the_names(tmp_path, cli):
    path = write_parquet(tmp_path / "data.parquet", make_rows(400), class_names=["bad", "good"])
    train_tiny(tmp_path, path)
    code, out, _ = cli("predict", "--model-dir", tmp_path / "run", "a wonderful superb lovely film")
    assert code == 0 and out.startswith("good\t")


def test_five_integer_classes_with_names(tmp_path, cli):
    folder = tmp_path / "five"
    write_jsonl(folder / "train.jsonl", make_rows(1000, classes=5, seed=1))
    write_jsonl(folder / "validation.jsonl", make_rows(200, classes=5, seed=2))
    result = train_tiny(tmp_path, folder, label_names="terrible,bad,neutral,good,great", epochs=8)
    assert result["validation"]["labels"] == ["terrible", "bad", "neutral", "good", "great"]
    assert len(result["validation"]["confusion_matrix"]) == 5
    assert result["validation"]["accuracy"] > 0.6  # chance is 0.2
    code, out, _ = cli("eval", "--model-dir", tmp_path / "run", "--json")
    assert code == 0 and json.loads(out)["num_examples"] == 200


def test_label_keys_and_mapping():
    assert label_key(1.0, None) == 1 and label_key(" pos ", None) == "pos" and label_key(True, None) == 1
    assert label_key(1, ["neg", "pos"]) == "pos"
    labels = Labels.from_keys({"positive", "negative"})
    assert labels.names == ["negative", "positive"]
    assert Labels.from_keys({1, 3, 2}).names == ["1", "2", "3"]
    assert Labels.from_keys({0, 1}, label_names="neg, pos").lookup()["pos"] == 1
    with pytest.raises(UserError, match="fraction"):
        label_key(0.7, None)
    with pytest.raises(UserError, match="mix numbers and names"):
        Labels.from_keys({1, "pos"})
    with pytest.raises(UserError, match="one name per class"):
        Labels.from_keys({0, 1, 2}, label_names="a,b")
    with pytest.raises(UserError, match="at least two"):
        Labels.from_keys({"pos"})


# -- columns ------------------------------------------------------------------------------------------

def test_columns_are_detected_or_named():
    assert pick_column(["id", "Review", "stars"], None, ("text", "review"), "text") == "Review"
    assert pick_column(["id", "body", "stars"], "body", ("text",), "text") == "body"
    with pytest.raises(UserError, match="columns are: id, x"):
        pick_column(["id", "x"], None, ("text",), "text")
    with pytest.raises(UserError, match="several columns could be the text"):
        pick_column(["text", "review"], None, ("text", "review"), "text")


def test_named_columns_through_the_cli(tmp_path, cli):
    rows = [{"id": i, "review": r["text"], "stars": r["label"] * 4 + 1} for i, r in enumerate(make_rows(400))]
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "review", "stars"])
        writer.writeheader()
        writer.writerows(rows)
    code, out, err = cli("train", "--dataset", path, "--text-column", "review", "--label-column", "stars",
                         "--output-dir", tmp_path / "run", *TINY)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["labels"]["names"] == ["1", "5"]


# -- order and hashing --------------------------------------------------------------------------------

def test_label_sorted_file_still_converges(tmp_path):
    """All negatives, then all positives (as the IMDB and Rotten Tomatoes releases are)."""
    rows = sorted(make_rows(2000), key=lambda r: r["label"])
    folder = tmp_path / "sorted"
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "validation.jsonl", sorted(make_rows(200, seed=9), key=lambda r: r["label"]))
    result = train_tiny(tmp_path, folder, epochs=2)
    assert result["validation"]["accuracy"] > 0.9


def test_hash_holdout_is_deterministic_and_about_the_fraction():
    texts = [r["text"] + str(i) for i, r in enumerate(make_rows(5000))]
    held = [t for t in texts if is_validation_row(t, 0.1)]
    assert held == [t for t in texts if is_validation_row(t, 0.1)]
    assert 400 < len(held) < 600


# -- bad data -----------------------------------------------------------------------------------------

def test_missing_labels_are_skipped_with_a_count_or_fail_with_strict(tmp_path, cli):
    rows = make_rows(400)
    for row in rows[::10]:
        row["label"] = None
    path = write_jsonl(tmp_path / "gaps.jsonl", rows)
    code, _, err = cli("train", "--dataset", path, "--output-dir", tmp_path / "a", *TINY[:-1])
    assert code == 0 and "skipped" in err and "without label" in err
    code, _, err = cli("train", "--dataset", path, "--output-dir", tmp_path / "b", "--strict", *TINY)
    assert_one_line_error(code, err, "no label", "--strict")


def test_the_hub_code_path_loads_a_dataset_repository_from_local_files(tmp_path):
    """A folder laid out like a Hub dataset repo (a dataset card naming two configs), through the very call
    lstmcli makes for Hub names: load_dataset(name, config, streaming=True)."""
    from lstmcli.data import _open_hub

    repo = tmp_path / "owner__reviews"
    write_jsonl(repo / "full" / "train.jsonl", named(make_rows(40)))
    write_jsonl(repo / "full" / "test.jsonl", named(make_rows(10, seed=1)))
    write_jsonl(repo / "small" / "train.jsonl", named(make_rows(8)))
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: full\n  data_files:\n  - split: train\n    path: full/train.jsonl\n"
        "  - split: test\n    path: full/test.jsonl\n- config_name: small\n  data_files:\n  - split: train\n"
        "    path: small/train.jsonl\n---\n")
    full = _open_hub(str(repo), "full")
    assert sorted(full.splits) == ["test", "train"]
    assert sum(len(t) for t, _ in read_rows(full.split("train"), "hub", "text", "label")) == 40
    small = _open_hub(str(repo), "small")
    assert sum(len(t) for t, _ in read_rows(small.split("train"), "hub", "text", "label")) == 8
    with pytest.raises(UserError, match="--dataset-config"):
        _open_hub(str(repo), "missing")


def test_an_unreachable_hub_gives_the_way_out():
    with pytest.raises(UserError, match="use local files .* HF_DATASETS_OFFLINE=1"):
        open_source("someone/not-cached-anywhere")
