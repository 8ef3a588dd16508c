"""Data as people have it: Hub snapshot folders with a dataset card, several configurations, save_to_disk
folders, spreadsheet exports, unusual column names, text without spaces, and train/test-only releases.
Every layout is built here from small generated data; nothing touches the network."""

import json
import random

import pytest

from conftest import CLASS_WORDS, TINY, TINY_SETTINGS, assert_one_line_error, make_rows, named, write_jsonl
from lstmcli import tokenized
from lstmcli.config import Config
from lstmcli.data import choose_splits, open_source, pick_column, pick_columns, read_rows
from lstmcli.errors import UserError
from lstmcli.tokenizer import train_tokenizer
from lstmcli.train import train

IMDB_CARD = """---
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-*
  - split: test
    path: plain_text/test-*
  default: true
dataset_info:
  config_name: plain_text
  features:
  - name: text
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': neg
          '1': pos
---
# A movie review set
"""


def write_parquet(path, rows):
    """Plain int64 labels in the file: label names, if any, live in the dataset card."""
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()  # on stderr, which the tests read
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def two_config_card(names: list[str]) -> str:
    entries = "".join(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/train-*\n"
                      f"  - split: test\n    path: {name}/test-*\n" for name in names)
    return f"---\nconfigs:\n{entries}---\n"


def config_json(run) -> dict:
    return json.loads((run / "config.json").read_text())


# -- Hub snapshot folders -------------------------------------------------------------------------------

def test_a_snapshot_folder_is_read_with_its_dataset_card(tmp_path, cli):
    """What `huggingface-cli download --repo-type dataset` leaves: the card's ClassLabel names are the labels,
    not the 0/1 stored in the parquet files."""
    snapshot = tmp_path / "imdb"
    write_parquet(snapshot / "plain_text" / "train-00000-of-00001.parquet", make_rows(800, seed=1))
    write_parquet(snapshot / "plain_text" / "test-00000-of-00001.parquet", make_rows(100, seed=2))
    (snapshot / "README.md").write_text(IMDB_CARD)
    code, out, err = cli("train", "--dataset", snapshot, "--output-dir", tmp_path / "run", *TINY)
    assert code == 0, err
    record = config_json(tmp_path / "run")
    assert record["labels"]["names"] == ["neg", "pos"]
    assert record["data"]["rows"]["test"] == 100
    assert json.loads(out)["test"] > 0.85
    code, out, _ = cli("predict", "--model-dir", tmp_path / "run", "a superb and lovely film")
    assert code == 0 and out.startswith("pos\t")


def test_several_configurations_need_dataset_config_and_are_never_mixed(tmp_path, cli):
    snapshot = tmp_path / "glue"
    for name, classes in (("sst2", 2), ("sst5", 5)):
        write_parquet(snapshot / name / "train-00000-of-00001.parquet", make_rows(100 * classes, classes, seed=1))
        write_parquet(snapshot / name / "test-00000-of-00001.parquet", make_rows(20 * classes, classes, seed=2))
    (snapshot / "README.md").write_text(two_config_card(["sst2", "sst5"]))

    code, _, err = cli("train", "--dataset", snapshot, "--output-dir", tmp_path / "none", *TINY)
    assert_one_line_error(code, err, "2 configurations (sst2, sst5)", "--dataset-config")
    assert not (tmp_path / "none").exists()
    code, _, err = cli("train", "--dataset", snapshot, "--dataset-config", "sst3", "--output-dir", tmp_path / "x", *TINY)
    assert_one_line_error(code, err, "no configuration 'sst3'", "sst2, sst5")

    code, _, err = cli("train", "--dataset", snapshot, "--dataset-config", "sst5", "--output-dir", tmp_path / "run", *TINY)
    assert code == 0, err
    record = config_json(tmp_path / "run")
    assert record["labels"]["names"] == ["0", "1", "2", "3", "4"] and record["data"]["rows"]["test"] == 100
    assert open_source(str(snapshot), "sst2").fingerprint != open_source(str(snapshot), "sst5").fingerprint
    code, _, err = cli("eval", "--model-dir", tmp_path / "run", "--json")  # the run's own config, reopened
    assert code == 0, err
    code, _, err = cli("train", "--resume", "--output-dir", tmp_path / "run", *TINY, "--epochs", "5")
    assert code == 0, err  # the fingerprint of the reopened configuration matches


def test_a_plain_folder_with_one_subfolder_per_configuration(tmp_path, cli):
    """glue-style sst2/train.jsonl and sst5/train.jsonl without a card: two datasets, not one."""
    for name, classes in (("sst2", 2), ("sst5", 5)):
        write_jsonl(tmp_path / "glue" / name / "train.jsonl", make_rows(60 * classes, classes))
        write_jsonl(tmp_path / "glue" / name / "validation.jsonl", make_rows(10 * classes, classes, seed=3))
    code, _, err = cli("train", "--dataset", tmp_path / "glue", "--output-dir", tmp_path / "run", *TINY)
    assert_one_line_error(code, err, "several datasets", "sst2, sst5", "--dataset-config")
    source = open_source(str(tmp_path / "glue"), "sst2")
    assert all("/sst2/" in f for files in source.files.values() for f in files)
    assert sum(len(t) for t, _ in read_rows(source.split("train"), "sst2", "text", "label")) == 120
    with pytest.raises(UserError, match="does not apply"):
        open_source(str(tmp_path / "glue" / "sst2"), "sst2")


# -- save_to_disk -----------------------------------------------------------------------------------------

def test_a_save_to_disk_folder_is_streamed_with_its_features(tmp_path, cli):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"])})
    saved = datasets.DatasetDict({split: datasets.Dataset.from_list(make_rows(count, seed=seed), features=features)
                                  for split, count, seed in (("train", 400, 1), ("validation", 80, 2), ("test", 80, 3))})
    saved.save_to_disk(str(tmp_path / "saved"))
    source = open_source(str(tmp_path / "saved"))
    assert all(isinstance(s, datasets.IterableDataset) for s in source.splits.values())
    assert source.fingerprint == open_source(str(tmp_path / "saved")).fingerprint
    code, out, err = cli("train", "--dataset", tmp_path / "saved", "--output-dir", tmp_path / "run", *TINY)
    assert code == 0, err
    assert config_json(tmp_path / "run")["labels"]["names"] == ["bad", "good"] and json.loads(out)["test"] > 0.85

    saved["train"].save_to_disk(str(tmp_path / "one"))  # a single Dataset: its rows are the train split
    assert list(open_source(str(tmp_path / "one")).splits) == ["train"]
    datasets.DatasetDict(train=saved["train"].select(range(200))).save_to_disk(str(tmp_path / "saved"))
    assert open_source(str(tmp_path / "saved")).fingerprint != source.fingerprint  # changed data: resume refused


# -- spreadsheets and column names --------------------------------------------------------------------------

def test_an_excel_export_with_bom_crlf_and_spaced_column_names(tmp_path, cli):
    rows = make_rows(400)
    lines = ["ID,Review Text,Rating"] + [f'{i},"{r["text"]}",{["1 star", "5 stars"][r["label"]]}'
                                         for i, r in enumerate(rows)]
    (tmp_path / "export.csv").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    code, _, err = cli("train", "--dataset", tmp_path / "export.csv", "--output-dir", tmp_path / "run", *TINY)
    assert code == 0, err
    record = config_json(tmp_path / "run")
    assert (record["data"]["text_column"], record["data"]["label_column"]) == ("Review Text", "Rating")
    assert record["labels"]["names"] == ["1 star", "5 stars"]


@pytest.mark.parametrize("name", ["Review Text", "review_text", "ReviewText", "REVIEW-TEXT", "\ufeffreview text"])
def test_column_names_ignore_case_spaces_underscores_hyphens_and_bom(name):
    assert pick_column(["ID", name, "Rating"], None, ("text", "review_text"), "text") == name
    assert pick_column(["ID", name], "review text", (), "text") == name


def test_columns_without_a_known_name_are_recognised_by_content(tmp_path, cli):
    rows = [{"Nr": i, "Kommentar": r["text"], "Bewertung": ["schlecht", "gut"][r["label"]],
             "Datum": f"2024-01-{i % 28 + 1:02d}"} for i, r in enumerate(make_rows(400))]
    write_jsonl(tmp_path / "reviews.jsonl", rows)
    code, _, err = cli("train", "--dataset", tmp_path / "reviews.jsonl", "--output-dir", tmp_path / "run", *TINY[:-1])
    assert code == 0, err
    assert "using 'Kommentar', the column of free text" in err and "using 'Bewertung', the column of few repeated values" in err
    assert config_json(tmp_path / "run")["labels"]["names"] == ["gut", "schlecht"]


def test_columns_that_content_cannot_decide_are_an_error_listing_them(tmp_path):
    rows = [{"Titel": r["text"], "Kommentar": r["text"][::-1], "Sterne": r["label"], "Empfohlen": 1 - r["label"]}
            for r in make_rows(100)]
    stream = open_source(str(write_jsonl(tmp_path / "a.jsonl", rows))).split("train")
    with pytest.raises(UserError, match=r"several columns could be the text \(Titel .*Kommentar"):
        pick_columns(stream, "a.jsonl")
    with pytest.raises(UserError, match=r"several columns could be the label \(Sterne \(2 values\), Empfohlen"):
        pick_columns(stream, "a.jsonl", text_column="Titel")


# -- text without spaces ------------------------------------------------------------------------------------

CHINESE = {0: ["太差了", "很失望", "质量糟糕", "不推荐", "要退货"], 1: ["非常好", "很满意", "质量不错", "强烈推荐", "超喜欢"]}
CHINESE_FILLER = ["这个", "手机", "物流", "包装", "价格", "客服", "东西", "我", "买的", "真的", "还是", "有点"]


def chinese_rows(count: int, seed: int) -> list[dict]:
    """Product reviews written without spaces, as Chinese is: each a clause that occurs once."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = rng.choices(CHINESE_FILLER, k=rng.randint(3, 8))
        words.insert(rng.randrange(len(words) + 1), rng.choice(CHINESE[i % 2]))
        rows.append({"text": "".join(words) + rng.choice(["。", "！", ""]), "label": ["差评", "好评"][i % 2]})
    return rows


def test_chinese_is_tokenized_into_characters_and_learned(tmp_path):
    tokenizer = train_tokenizer([[r["text"] for r in chinese_rows(200, 0)]], "wordlevel", 1000, 1, True)
    assert tokenizer.encode("这个手机质量不错", add_special_tokens=False).tokens == list("这个手机质量不错")
    write_jsonl(tmp_path / "zh" / "train.jsonl", chinese_rows(400, 1))
    write_jsonl(tmp_path / "zh" / "validation.jsonl", chinese_rows(100, 2))
    result = train(Config(dataset=str(tmp_path / "zh"), output_dir=str(tmp_path / "run"), **TINY_SETTINGS), quiet=True)
    assert result["validation"]["accuracy"] > 0.85


def test_a_wordlevel_tokenizer_warns_when_most_words_are_very_long():
    warnings = []
    codes = ["".join(random.Random(i).choices("ACGT", k=30)) for i in range(50)]
    train_tokenizer([codes], "wordlevel", 100, 1, True, warn=warnings.append)
    assert len(warnings) == 1 and "--tokenizer bpe" in warnings[0]
    english = [" ".join(CLASS_WORDS[2][1]) + " reviews of the film"] * 50
    train_tokenizer([english], "wordlevel", 100, 1, True, warn=warnings.append)
    assert len(warnings) == 1


# -- which split picks the checkpoint --------------------------------------------------------------------------

def test_train_and_test_only_holds_out_part_of_train_and_reports_test(tmp_path, cli, monkeypatch):
    """IMDB as the Hub has it: the test split never picks the best checkpoint unless asked, with a warning (and
    then it is read and tokenized once, as validation and test)."""
    write_jsonl(tmp_path / "two" / "train.jsonl", named(make_rows(400, seed=1)))
    write_jsonl(tmp_path / "two" / "test.jsonl", named(make_rows(100, seed=2)))
    splits = choose_splits(open_source(str(tmp_path / "two")), "train", None)
    assert (splits.validation, splits.test, splits.warning) == (None, "test", None)
    code, out, err = cli("train", "--dataset", tmp_path / "two", "--output-dir", tmp_path / "a", *TINY[:-1])
    assert code == 0, err
    assert "validation 10% of 'train' held out by text hash, test 'test'" in err and "optimistic" not in err
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["test"]["num_examples"] == 100 and metrics["validation"]["num_examples"] < 80
    tokenized_roles, build = [], tokenized.build

    def counted_build(folder, *args, **kwargs):
        tokenized_roles.append(folder.name)
        return build(folder, *args, **kwargs)

    monkeypatch.setattr(tokenized, "build", counted_build)
    code, out, err = cli("train", "--dataset", tmp_path / "two", "--eval-split", "test", "--output-dir", tmp_path / "b",
                         *TINY[:-1])
    assert code == 0, err
    assert "warning: validating on 'test'" in err and "optimistic" in err
    assert json.loads(out)["test"] == json.loads(out)["validation"]
    assert tokenized_roles == ["train", "validation"]
