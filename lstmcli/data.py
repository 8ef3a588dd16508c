"""Where examples come from: datasets as streams of (text, label) rows.

Every source is opened the way the `datasets` library opens it, as streams, so no split is ever loaded
whole into memory: a Hub name or a folder with a dataset card (a Hub snapshot) with
`load_dataset(..., name=config, streaming=True)`, a `save_to_disk` folder with `load_from_disk` and
`to_iterable_dataset`, a plain folder of split files or one data file with the builder of its format.
This module picks the splits and columns, turns raw labels into class ids, and turns the many ways a
file can be broken into one readable error.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import re
import statistics
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body", "comment", "review_text",
                "review_body", "tweet", "utterance", "txt", "reviews", "comments", "message")
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
    """Open a data file, a folder (save_to_disk, Hub snapshot with a dataset card, or split files), or a
    Hub dataset, as streams."""
    _quiet_library_logs()
    path = Path(dataset).expanduser()
    if path.is_file():
        _no_configs(path, dataset_config, "is one data file")
        return _open_files(dataset, {"train": [path]})
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _open_saved(dataset, path, dataset_config)
        card = _card_metadata(path)
        if "configs" in card or "dataset_info" in card:
            return _open_snapshot(dataset, path, dataset_config, card)
        return _open_files(dataset, _split_files(path, dataset_config))
    if _looks_local(path, dataset):
        raise UserError(f"dataset {dataset} not found: check the path, or give a Hugging Face Hub name.")
    return _open_hub(dataset, dataset_config)


@functools.cache
def _quiet_library_logs() -> None:
    """lstmcli explains a broken file in one line (read_errors); the datasets library's own log line about
    it ("Failed to load JSON from file ...") would be a second one."""
    datasets = _datasets()

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)


def _no_configs(path: Path, config: str | None, layout: str) -> None:
    if config is not None:
        raise UserError(f"--dataset-config {config!r} does not apply: {path} {layout}, without configurations. "
                        "Drop --dataset-config.")


def _looks_local(path: Path, given: str) -> bool:
    """A missing path the user meant as local: a data-file suffix, ./ ../ / ~, an existing first folder, or
    more parts than a Hub name's owner/name."""
    return (_suffix(path) in FORMATS or given.startswith((".", "/", "~")) or len(path.parts) > 2
            or len(path.parts) > 1 and Path(path.parts[0]).is_dir())


def _split_files(folder: Path, config: str | None = None) -> dict[str, list[Path]]:
    """Split name -> files, by the naming rules of the datasets library (train*, validation*/dev*, test*).

    Sub-folders that each hold their own train split (glue-style `sst2/train.jsonl`, `sst5/train.jsonl`)
    are configurations: one is chosen with --dataset-config, never several mixed into one split.
    """
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
    configs = sorted({_config_of(folder, f) for f in splits.get("train", [])})
    if len(configs) < 2:
        _no_configs(folder, config, "holds one set of split files")
        return splits
    if config not in configs:
        problem = "holds several datasets" if config is None else f"has no configuration {config!r}"
        raise UserError(f"{folder} {problem}, each with its own train split ({', '.join(configs)}): pick one "
                        "with --dataset-config.")
    chosen = {name: [f for f in files if _config_of(folder, f) == config] for name, files in splits.items()}
    return {name: files for name, files in chosen.items() if files}


SPLIT_FOLDERS = re.compile(r"(train|training|validation|valid|val|dev|test|testing|eval|evaluation)", re.I)


def _config_of(folder: Path, file: Path) -> str:
    """The sub-folder a split file belongs to, not counting a folder named after its split (`train/`)."""
    parts = Path(os.path.relpath(file, folder)).parent.parts
    if parts and SPLIT_FOLDERS.fullmatch(parts[-1]):
        parts = parts[:-1]
    return "/".join(parts) or "."


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


def _fingerprint_files(paths: list[Path], salt: str = "", base: Path | None = None) -> str:
    digest = hashlib.sha256(salt.encode())
    for path in sorted(paths):
        digest.update(str(path.relative_to(base) if base else path.name).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


CARD_HEADER = re.compile(r"^\s*---[\r\n]+([\S\s]*?)[\r\n]+---(\r\n|\n|$)")  # as huggingface_hub finds it


def _card_metadata(folder: Path) -> dict:
    """The YAML header of a folder's README.md (a dataset card), or {} when there is none."""
    import yaml

    readme = folder / "README.md"
    header = CARD_HEADER.match(readme.read_text(encoding="utf-8", errors="replace")) if readme.is_file() else None
    if header is None:
        return {}
    try:
        metadata = yaml.safe_load(header.group(1))
    except yaml.YAMLError as e:
        raise UserError(f"{readme} has a dataset card that cannot be read ({_first_line(e)}): fix its YAML "
                        "header, or remove the header to read the folder as plain split files.") from None
    return metadata if isinstance(metadata, dict) else {}


def _open_snapshot(name: str, folder: Path, config: str | None, card: dict) -> Source:
    """A folder with a dataset card (what the Hub's snapshot download leaves): its configs, files and features,
    exactly as datasets.load_dataset(folder, name=config, streaming=True) reads them."""
    datasets = _datasets()

    configs = [c.get("config_name", "default") for c in card.get("configs") or []]
    defaults = [c.get("config_name", "default") for c in card.get("configs") or [] if c.get("default")]
    if config is None and len(configs) > 1 and not defaults:
        raise UserError(f"{folder} holds {len(configs)} configurations ({', '.join(configs)}) and its dataset "
                        "card marks none as the default: pick one with --dataset-config.")
    try:
        with read_errors(str(folder)):
            builder = datasets.load_dataset_builder(str(folder), name=config, cache_dir=_scratch_dir())
            splits = dict(builder.as_streaming_dataset())
    except ValueError as e:
        if "BuilderConfig" in str(e):
            raise UserError(f"{folder} has no configuration {config!r}; its dataset card names: "
                            f"{', '.join(configs) or 'none'}. Pick one with --dataset-config.") from None
        raise UserError(f"cannot open {folder} with its dataset card ({_first_line(e)}): fix the card's configs, "
                        "or remove its YAML header to read the folder as plain split files.") from None
    files = {str(split): [str(f) for f in paths] for split, paths in builder.config.data_files.items()}
    paths = [Path(f) for paths in files.values() for f in paths] + [folder / "README.md"]
    fingerprint = _fingerprint_files(paths, salt=f"config:{builder.config.name}")
    return Source(name, {str(split): stream for split, stream in splits.items()}, files, fingerprint)


def _open_saved(name: str, folder: Path, config: str | None) -> Source:
    """A folder written by Dataset(Dict).save_to_disk: memory-mapped arrow files, read as streams."""
    datasets = _datasets()

    _no_configs(folder, config, "was written by save_to_disk")
    with read_errors(str(folder)):
        saved = datasets.load_from_disk(str(folder))
    parts = dict(saved) if isinstance(saved, datasets.DatasetDict) else {"train": saved}
    files = {split: [f["filename"] for f in part.cache_files] for split, part in parts.items()}
    paths = [p for p in folder.rglob("*") if p.is_file()]
    return Source(name, {split: part.to_iterable_dataset() for split, part in parts.items()}, files,
                  _fingerprint_files(paths, base=folder))


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


def normalized(name: str) -> str:
    """A column name as a person reads it: 'Review Text', 'review_text' and 'ReviewText' are one name."""
    return re.sub(r"[\s_\-\ufeff]+", "", name).lower()


def find_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], kind: str) -> str | None:
    """The column named by the user, or the one whose name is a candidate's (ignoring case, spaces,
    underscores and hyphens); None when no name matches. A missing or ambiguous name is an error."""
    flag = f"--{kind}-column"
    by_name = {}
    for column in columns:
        by_name.setdefault(normalized(column), []).append(column)
    if wanted is not None:
        if wanted in columns:
            return wanted
        if len(by_name.get(normalized(wanted), [])) == 1:
            return by_name[normalized(wanted)][0]
        raise UserError(f"{kind} column {wanted!r} not found; the columns are: {', '.join(columns)}. "
                        f"Name one with {flag}.")
    found = [c for name in dict.fromkeys(map(normalized, candidates)) for c in by_name.get(name, [])]
    if len(found) > 1:
        raise UserError(f"several columns could be the {kind} ({', '.join(found)}); the columns are: "
                        f"{', '.join(columns)}. Name one with {flag}.")
    return found[0] if found else None


def pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], kind: str) -> str:
    """The column named by the user, or the one candidate name present; anything else is an error."""
    found = find_column(columns, wanted, candidates, kind)
    if found is None:
        raise UserError(f"no {kind} column found; the columns are: {', '.join(columns)}. "
                        f"Name one with --{kind}-column.")
    return found


@dataclass
class Columns:
    """The text and label columns of a split, and why they were chosen when no name said so."""
    text: str
    label: str | None
    notes: list[str] = field(default_factory=list)


SAMPLE_ROWS = 1000  # rows read to recognise the text and label columns by their content
TEXT_MIN_CHARS = 12  # a text column's values are at least this long on average ...
TEXT_DOMINANCE = 3  # ... and when several are, the longest wins if it is this many times longer
LABEL_MAX_VALUES = 20  # a label column takes at most this many distinct values in the sample


def pick_columns(stream, what: str, text_column: str | None = None, label_column: str | None = None, *,
                 with_label: bool = True) -> Columns:
    """The text and label columns: named by the user, else by a known name (`Review Text`, `sentiment`),
    else recognised by content (the one column of long free text; a column of few distinct values)."""
    columns = column_names(stream, what)
    text = find_column(columns, text_column, TEXT_COLUMNS, "text")
    label = find_column(columns, label_column, LABEL_COLUMNS, "label") if with_label else None
    notes = []
    if text is None or (with_label and label is None):
        sample = _sample_values(stream, what, columns)
        if text is None:
            text = _text_by_content(columns, sample, exclude=label)
            notes.append(f"no column is named like a text column; using {text!r}, "
                         f"{_why_text(sample, text)}. Name another with --text-column.")
        if with_label and label is None:
            label = _label_by_content(columns, sample, exclude=text)
            notes.append(f"no column is named like a label column; using {label!r}, "
                         f"{_why_label(sample, label)}. Name another with --label-column.")
    return Columns(text, label, notes)


def _sample_values(stream, what: str, columns: list[str]) -> dict[str, list]:
    """Non-null values of each column in the first SAMPLE_ROWS rows."""
    values = {c: [] for c in columns}
    with read_errors(what):
        for row in stream.take(SAMPLE_ROWS):
            for column in columns:
                if row.get(column) is not None:
                    values[column].append(row[column])
    return values


def _free_text_lengths(values: list) -> list[int] | None:
    """Lengths of a column's values when they read as free text: strings, mostly distinct, of varying length
    (codes, ids and dates have a fixed one)."""
    if not values or not all(isinstance(v, str) for v in values):
        return None
    lengths = [len(v) for v in values]
    if len(set(values)) < len(values) / 2 or (len(values) > 1 and len(set(lengths)) == 1):
        return None
    return lengths if statistics.fmean(lengths) >= TEXT_MIN_CHARS else None


def _text_by_content(columns: list[str], sample: dict[str, list], exclude: str | None) -> str:
    lengths = {c: statistics.fmean(ls) for c in columns if c != exclude
               if (ls := _free_text_lengths(sample[c])) is not None}
    ranked = sorted(lengths, key=lengths.get, reverse=True)
    if len(ranked) > 1 and lengths[ranked[0]] >= TEXT_DOMINANCE * lengths[ranked[1]]:
        return ranked[0]
    return _only_candidate("text", ranked, columns, "free text",
                           {c: f"{lengths[c]:.0f} characters on average" for c in ranked})


def _why_text(sample: dict[str, list], column: str) -> str:
    values = sample[column]
    return (f"the column of free text ({statistics.fmean(map(len, values)):.0f} characters on average in the "
            f"first {len(values):,} rows)")


def _few_values(values: list) -> bool:
    """Whether a column reads as class labels: short names or whole numbers, each repeated (at most
    LABEL_MAX_VALUES distinct, and no more than half as many as rows)."""
    def label_like(v):
        return (isinstance(v, bool | int) or isinstance(v, float) and v.is_integer()
                or isinstance(v, str) and 0 < len(v.strip()) <= 40)

    return (bool(values) and all(map(label_like, values))
            and len(set(values)) <= min(LABEL_MAX_VALUES, len(values) / 2))


def _label_by_content(columns: list[str], sample: dict[str, list], exclude: str | None) -> str:
    candidates = [c for c in columns if c != exclude and _few_values(sample[c])]
    varied = [c for c in candidates if len(set(sample[c])) > 1]
    pool = varied or candidates  # a file sorted by label may start with rows of one class only
    return _only_candidate("label", pool, columns, "a few repeated values",
                           {c: f"{len(set(sample[c]))} values" for c in pool})


def _only_candidate(role: str, candidates: list[str], columns: list[str], what_it_holds: str,
                    described: dict[str, str]) -> str:
    """The one column that could play `role`, or a one-line error naming every column and the flag to use."""
    if len(candidates) == 1:
        return candidates[0]
    flag = f"--{role}-column"
    if not candidates:
        raise UserError(f"no {role} column found; the columns are: {', '.join(columns)}, and none holds "
                        f"{what_it_holds}. Name one with {flag}.")
    several = ", ".join(f"{c} ({described[c]})" for c in candidates)
    raise UserError(f"several columns could be the {role} ({several}); the columns are: {', '.join(columns)}. "
                    f"Name one with {flag}.")


def _why_label(sample: dict[str, list], column: str) -> str:
    values = sample[column]
    distinct = sorted(set(values), key=str)
    shown = ", ".join(map(repr, distinct[:6])) + (", ..." if len(distinct) > 6 else "")
    return f"the column of few repeated values ({len(distinct)} distinct in the first {len(values):,} rows: {shown})"


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

    @property
    def validates_on_test(self) -> bool:
        return self.validation is not None and self.validation == self.test

    @property
    def warning(self) -> str | None:
        if not self.validates_on_test:
            return None
        return (f"validating on {self.test!r} picks the best checkpoint and stops early on the split reported as "
                "test, so its test score is optimistic; leave out --eval-split to hold out part of train instead.")


def choose_splits(source: Source, train_split: str, eval_split: str | None) -> SplitChoice:
    """Validation: the one asked for, else 'validation' (or 'valid', 'dev'), else a hashed share of train.
    Test: 'test'. The split reported as test picks nothing unless --eval-split names it (with a warning)."""
    source.split(train_split)
    others = [s for s in source.splits if s != train_split]
    if eval_split == HOLDOUT:
        validation = None
    elif eval_split is not None:
        source.split(eval_split)
        validation = eval_split
    else:
        validation = next((s for s in ("validation", "valid", "dev") if s in others), None)
    return SplitChoice(train_split, validation, "test" if "test" in others else None)
