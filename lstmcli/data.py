"""Where examples come from: datasets as streams of (text, label) rows.

Every source — a Hugging Face Hub name, a folder of split files, one data file — is opened with
`datasets.load_dataset(..., streaming=True)`, so no split is ever loaded whole into memory. This module
picks the splits and columns, turns raw labels into class ids, and turns the many ways a file can be
broken into one readable error.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body", "comment", "review_text",
                "review_body", "tweet", "utterance", "txt")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "stars", "rating", "score", "polarity",
                 "target", "category", "y")
# Suffix (after any .gz) -> the datasets builder that reads it, and its options.
FORMATS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
CSV_OPTIONS = {
    # Without index_col=False pandas turns a ragged row's extra field into an index and shifts the row.
    "index_col": False,
    # Only empty fields are missing: a review reading "NA" or "None" is text, not a missing value.
    "keep_default_na": False,
    "na_values": [""],
}
READ_CHUNK = 1000


@dataclass
class Source:
    """A dataset's splits, each a re-iterable stream, and a fingerprint of its content."""
    name: str
    splits: dict  # split name -> datasets.IterableDataset
    files: dict[str, list[str]] = field(default_factory=dict)  # split -> local files ('' for the Hub)
    fingerprint: str = ""

    @property
    def is_single_file(self) -> bool:
        return Path(self.name).is_file()

    def describe(self, split: str) -> str:
        """The files behind a split (or the Hub name), for error messages."""
        files = [f for f in self.files.get(split, []) if f]
        return ", ".join(files) if files else f"{self.name} [{split}]"

    def split(self, name: str):
        if name not in self.splits:
            raise UserError(f"split {name!r} not found in {self.name}; it has: {', '.join(self.splits)}. "
                            "Pick one with --train-split / --eval-split / --split.")
        return self.splits[name]


def open_source(dataset: str, dataset_config: str | None = None) -> Source:
    """Open a local file, a local folder of split files, or a Hub dataset, as streams."""
    path = Path(dataset).expanduser()
    if path.is_file():
        return _open_files(dataset, {"train": [path]})
    if path.is_dir():
        return _open_files(dataset, _split_files(path))
    if _looks_local(path, dataset):
        raise UserError(f"dataset {dataset} not found: check the path, or give a Hugging Face Hub name.")
    return _open_hub(dataset, dataset_config)


def _looks_local(path: Path, given: str) -> bool:
    """A missing path the user meant as local: a data-file suffix, ./ ../ / ~, an existing first folder, or
    more parts than a Hub name's owner/name."""
    return (_suffix(path) in FORMATS or given.startswith((".", "/", "~")) or len(path.parts) > 2
            or len(path.parts) > 1 and Path(path.parts[0]).is_dir())


def _split_files(folder: Path) -> dict[str, list[Path]]:
    """Split name -> files, by the naming rules of the datasets library (train*, validation*/dev*, test*)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(folder))
        resolved = DataFilesDict.from_patterns(patterns, base_path=str(folder))
    except Exception as e:  # datasets raises EmptyDatasetError and others when nothing matches
        raise UserError(f"no data files found in {folder} ({e}): name them train.jsonl, validation.csv, "
                        "test.parquet, ...") from None
    splits = {str(name): [Path(f) for f in files if _suffix(Path(f)) in FORMATS]
              for name, files in resolved.items()}
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        raise UserError(f"no csv, tsv, json, jsonl or parquet files found in {folder}: name them "
                        "train.jsonl, validation.csv, test.parquet, ...")
    return splits


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _datasets():
    """The datasets library; in a process without torch (ONNX inference) told to leave torch alone: its
    streams import torch only to share an epoch counter with DataLoader workers, which lstmcli never uses,
    and importing torch would cost more than a whole ONNX prediction."""
    import datasets

    if "torch" not in sys.modules:
        datasets.config.TORCH_AVAILABLE = False
    return datasets


def _open_files(name: str, split_files: dict[str, list[Path]]) -> Source:
    datasets = _datasets()

    splits, files = {}, {}
    for split, paths in split_files.items():
        suffixes = {_suffix(p) for p in paths}
        if len(suffixes) != 1 or not suffixes <= FORMATS.keys():
            names = ", ".join(p.name for p in paths)
            raise UserError(f"cannot read split {split!r} ({names}): use one of the formats "
                            "csv, tsv, json, jsonl, parquet (optionally .gz), one per split.")
        builder, options = FORMATS[suffixes.pop()]
        if all(p.stat().st_size == 0 for p in paths):
            raise UserError(f"{', '.join(map(str, paths))} is empty: give a dataset with at least one row.")
        if builder == "csv":
            options = {**CSV_OPTIONS, **options}
        with read_errors(", ".join(map(str, paths))):
            splits[split] = datasets.load_dataset(builder, data_files={split: [str(p) for p in paths]},
                                                  split=split, streaming=True, cache_dir=_scratch_dir(),
                                                  **options)
        files[split] = [str(p) for p in paths]
    return Source(name, splits, files, _fingerprint_files([p for ps in split_files.values() for p in ps]))


@functools.cache
def _scratch_dir() -> str:
    """A cache folder for the datasets library that lives as long as this process: streaming local files
    leaves lock files there, and lstmcli writes nothing outside --output-dir that outlives the run."""
    folder = tempfile.TemporaryDirectory(prefix="lstmcli-")
    atexit.register(folder.cleanup)
    return folder.name


def _fingerprint_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _open_hub(name: str, config: str | None) -> Source:
    datasets = _datasets()

    try:
        splits = datasets.load_dataset(name, config, streaming=True)
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise UserError(f"could not load {name!r} from the Hugging Face Hub ({_first_line(e)}): check the "
                        "name (and --dataset-config), use local files (--dataset path/to/folder), or set "
                        "HF_DATASETS_OFFLINE=1 with a cached copy.") from None
    return Source(name, dict(splits), {s: [""] for s in splits},
                  hashlib.sha256(f"hub:{name}:{config}".encode()).hexdigest())


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


@contextlib.contextmanager
def read_errors(what: str):
    """Turn the errors of pandas, pyarrow and datasets on a broken file into one line with the fix."""
    import pandas

    with warnings.catch_warnings():
        # pandas only warns when a CSV row has more fields than the header; that row is broken.
        warnings.simplefilter("error", pandas.errors.ParserWarning)
        try:
            yield
        except UserError:
            raise
        except Exception as error:
            # The library's wrapper error explains least: try what caused it first.
            explained = next(filter(None, (_explain(e, what) for e in (error.__cause__, error.__context__, error)
                                           if e is not None)), None)
            if explained is None:
                raise
            raise explained from None


def _explain(error: BaseException, what: str) -> UserError | None:
    import pandas

    if isinstance(error, UnicodeDecodeError):
        return UserError(f"{what} is not valid UTF-8 (byte {error.object[error.start:error.start + 1]!r} at offset "
                         f"{error.start}): re-encode it, e.g. iconv -f cp1252 -t utf-8.")
    if isinstance(error, StopIteration):  # what the json builder raises on a file without rows
        return UserError(f"{what} has no rows: give a dataset with at least one row.")
    if isinstance(error, FileNotFoundError):
        return UserError(f"{what}: file not found ({_first_line(error)}): check the path.")
    if isinstance(error, pandas.errors.ParserError | pandas.errors.ParserWarning):
        return UserError(f"{what} has malformed CSV rows ({_first_line(error)}): quote fields that contain the "
                         "separator and give every row the header's number of fields.")
    if isinstance(error, ConnectionError):
        return UserError(f"lost the connection while reading {what} ({_first_line(error)}): retry, or use a "
                         "local copy of the data.")
    if type(error).__module__.split(".")[0] in ("pyarrow", "datasets", "pandas", "json"):
        return UserError(f"cannot parse {what} ({type(error).__name__}: {_first_line(error)}): check that the "
                         "file matches its extension (csv, tsv, json, jsonl, parquet).")
    return None


# -- columns and labels -------------------------------------------------------------------------------

def column_names(stream, what: str) -> list[str]:
    if stream.features is not None:
        return list(stream.features)
    with read_errors(what):
        first = next(iter(stream.take(1)), None)
    if first is None:
        raise UserError(f"{what} is empty: give a dataset with at least one row.")
    return list(first)


def pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], kind: str) -> str:
    """The column named by the user, or the one candidate name present; anything else is an error."""
    flag = f"--{kind}-column"
    if wanted is not None:
        if wanted not in columns:
            raise UserError(f"{kind} column {wanted!r} not found; the columns are: {', '.join(columns)}. "
                            f"Name one with {flag}.")
        return wanted
    lowered = {c.lower(): c for c in columns}
    found = [lowered[c] for c in candidates if c in lowered]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no {kind} column found; the columns are: {', '.join(columns)}. "
                        f"Name one with {flag}.")
    raise UserError(f"several columns could be the {kind} ({', '.join(found)}); the columns are: "
                    f"{', '.join(columns)}. Name one with {flag}.")


def class_label_names(stream, label_column: str) -> list[str] | None:
    """Names of a ClassLabel feature (e.g. ['neg', 'pos']), or None for plain values."""
    import datasets

    feature = (stream.features or {}).get(label_column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def label_key(value, class_names: list[str] | None):
    """A raw label as the key the run stores: a ClassLabel's name, an int, or a stripped string."""
    if class_names is not None and isinstance(value, int):
        if not 0 <= value < len(class_names):
            raise UserError(f"label {value} is outside the dataset's ClassLabel names {class_names}: "
                            "fix the label or the dataset card.")
        return class_names[value]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise UserError(f"label {value} is a fraction: lstmcli trains classifiers, so give class ids "
                            "or names (round or bin the scores first).")
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = value.strip()
        if value.lstrip("-").isdigit():
            return int(value)
        return value
    raise UserError(f"label {value!r} has type {type(value).__name__}: labels must be class ids or names.")


@dataclass
class Labels:
    """Class names in id order, and the raw label keys (ints or names) that map onto them."""
    names: list[str]
    keys: list

    @classmethod
    def from_keys(cls, keys, class_names: list[str] | None = None, label_names: str | None = None) -> Labels:
        if class_names is not None:
            return cls(list(class_names), list(class_names))
        keys = set(keys)
        kinds = {type(k) for k in keys}
        if len(kinds) > 1:
            examples = ", ".join(repr(k) for k in sorted(keys, key=repr)[:6])
            raise UserError(f"labels mix numbers and names ({examples}): make them all class ids or all "
                            "names.")
        ordered = sorted(keys)
        names = [str(k) for k in ordered]
        if label_names:
            given = [n.strip() for n in label_names.split(",")]
            if kinds != {int}:
                raise UserError("--label-names only names integer labels, and these labels are names "
                                "already: drop --label-names.")
            if len(given) != len(ordered):
                raise UserError(f"--label-names gives {len(given)} names but the data has {len(ordered)} "
                                f"classes ({', '.join(names)}): give one name per class, in that order.")
            names = given
        if len(ordered) < 2:
            raise UserError(f"the data has only {len(ordered)} class ({', '.join(names) or 'none'}): a "
                            "classifier needs at least two.")
        return cls(names, ordered)

    def lookup(self) -> dict:
        """Raw key -> class id, accepting a class's name as well as its raw key."""
        table = {str(name): i for i, name in enumerate(self.names)}
        table.update({key: i for i, key in enumerate(self.keys)})
        return table


# -- rows ---------------------------------------------------------------------------------------------

@dataclass
class RowCounts:
    """What reading a split kept and what it skipped, for the report and metrics.json."""
    kept: int = 0
    missing_text: int = 0
    missing_label: int = 0
    empty_text: int = 0

    @property
    def skipped(self) -> int:
        return self.missing_text + self.missing_label + self.empty_text


def is_validation_row(text: str, fraction: float) -> bool:
    """Deterministic hold-out by a hash of the text: the same text always lands on the same side."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % 10_000 < fraction * 10_000


def read_rows(stream, what: str, text_column: str, label_column: str | None, *, strict: bool = False,
              counts: RowCounts | None = None,
              holdout: tuple[float, bool] | None = None) -> Iterator[tuple[list[str], list]]:
    """Yield chunks of (texts, label keys) from a stream; label keys are None when label_column is None.

    Rows without a text or label are skipped and counted (or, with strict, stop the run). `holdout`
    = (fraction, keep_validation) keeps only the hashed validation part of a split, or only the rest.
    """
    counts = counts if counts is not None else RowCounts()
    columns = [text_column] + ([label_column] if label_column else [])
    class_names = class_label_names(stream, label_column) if label_column else None
    with read_errors(what):
        for batch in stream.select_columns(columns).iter(batch_size=READ_CHUNK):
            texts, keys = [], []
            labels = batch[label_column] if label_column else [None] * len(batch[text_column])
            for text, label in zip(batch[text_column], labels):
                if text is None:
                    counts.missing_text += 1
                    problem = "a row has no text"
                elif label_column and label is None:
                    counts.missing_label += 1
                    problem = "a row has no label"
                else:
                    text = text if isinstance(text, str) else str(text)
                    if holdout and is_validation_row(text, holdout[0]) != holdout[1]:
                        continue
                    if not text.strip():
                        counts.empty_text += 1
                        problem = "a row has an empty text"
                    else:
                        texts.append(text)
                        keys.append(label_key(label, class_names) if label_column else None)
                        continue
                if strict:
                    raise UserError(f"{what}: {problem} (row {counts.kept + counts.skipped}): fix the "
                                    "data, or drop --strict to skip such rows.")
            counts.kept += len(texts)
            if texts:
                yield texts, keys


def texts_only(chunks: Iterator[tuple[list[str], list]]) -> Iterator[list[str]]:
    for texts, _ in chunks:
        yield texts


# -- splits -------------------------------------------------------------------------------------------

HOLDOUT = "holdout"  # --eval-split value: validate on a hashed share of train even when other splits exist


@dataclass
class SplitChoice:
    """Which split trains, which validates (None: a hashed share of train), which tests."""
    train: str
    validation: str | None
    test: str | None

    def describe(self, fraction: float) -> str:
        validation = (f"{fraction:.0%} of {self.train!r} held out by text hash" if self.validation is None
                      else repr(self.validation))
        test = repr(self.test) if self.test else "none"
        return f"train {self.train!r}, validation {validation}, test {test}"


def choose_splits(source: Source, train_split: str, eval_split: str | None) -> SplitChoice:
    """Validation: the one asked for, else 'validation', else 'test', else a hashed share of train."""
    source.split(train_split)
    others = [s for s in source.splits if s != train_split]
    if eval_split == HOLDOUT:
        validation = None
    elif eval_split is not None:
        source.split(eval_split)
        validation = eval_split
    else:
        validation = next((s for s in ("validation", "valid", "dev", "test") if s in others), None)
    test = "test" if "test" in others and validation != "test" else None
    return SplitChoice(train_split, validation, test)
