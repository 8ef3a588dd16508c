"""Unlabelled text: the dataset's train split and every --unlabeled source, each opened with its text column.

`lstmcli pretrain` trains a language model on all of it; `lstmcli train --unlabeled` (selftrain.py)
pseudo-labels it. A source that is the labelled dataset's test split is refused by both: learning from the
test texts would make the test score optimistic.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint, distributed
from .config import Config
from .data import TEXT_COLUMNS, RowCounts, Source, column_names, open_source, pick_column, read_rows
from .errors import UserError


@dataclass
class TextSources:
    """The dataset's train split and every --unlabeled source, each with its text column."""
    names: list[str]
    streams: list[tuple[Source, str]]  # (source, split)
    columns: list[str]
    unused_test: str | None  # the dataset's test split, which pretraining never reads

    @property
    def fingerprint(self) -> str:
        return checkpoint.sha256("\n".join(s.fingerprint for s, _ in self.streams).encode())

    def describe(self, config: Config) -> list[str]:
        lines = [f"text: {name} [{split}], column {column!r}"
                 for name, (_, split), column in zip(self.names, self.streams, self.columns)]
        if self.unused_test:
            lines.append(f"text: the {self.unused_test!r} split of {config.dataset} is not used, so that its "
                         "texts stay unseen for testing")
        return lines

    def rows(self, config: Config, runtime, *, held_out: bool | None, shard: bool = True,
             counts: RowCounts | None = None):
        """Chunks of (texts, None) from every source: the held-out share, the rest, or (None) all of it."""
        counts = counts if counts is not None else RowCounts()
        return itertools.chain.from_iterable(
            read_rows(distributed.shard(source.split(split), runtime) if shard else source.split(split),
                      source.describe(split), column, None, strict=config.strict, counts=counts,
                      holdout=None if held_out is None else (config.val_fraction, held_out))
            for (source, split), column in zip(self.streams, self.columns))


def open_text_sources(config: Config) -> TextSources:
    """Open the dataset (its train split) and the --unlabeled sources; refuse a source that is the dataset's
    test split."""
    dataset = open_source(config.dataset, config.dataset_config)
    dataset.split(config.train_split)
    test = "test" if "test" in dataset.splits and config.train_split != "test" else None
    sources = TextSources([config.dataset], [(dataset, config.train_split)], [], test)
    sources.columns.append(text_column(dataset, config.train_split, config.dataset, config.text_column))
    return open_unlabeled(config.unlabeled, config, dataset, test, into=sources)


def open_unlabeled(specs, config: Config, dataset: Source, test: str | None, into: TextSources) -> TextSources:
    """Add each --unlabeled source (its train split, else its first) to `into`; refuse one whose files are
    the dataset's `test` split."""
    test_files = {Path(f).resolve() for f in dataset.files.get(test, []) if f} if test else set()
    for spec in specs:
        source = open_source(spec)
        files = {Path(f).resolve() for files in source.files.values() for f in files if f}
        if files & test_files:
            raise UserError(f"--unlabeled {spec} is the test split of {config.dataset}: learning from its texts "
                            "would make the test score optimistic; leave it out.")
        split = "train" if "train" in source.splits else next(iter(source.splits))
        into.names.append(spec)
        into.streams.append((source, split))
        into.columns.append(text_column(source, split, spec, None))
    return into


def text_column(source: Source, split: str, name: str, wanted: str | None) -> str:
    try:
        return pick_column(column_names(source.split(split), source.describe(split)), wanted, TEXT_COLUMNS, "text")
    except UserError as e:
        raise UserError(f"{name}: {e}") from None
