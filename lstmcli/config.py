"""Every training setting, in one table.

`Config` is the single source of truth: the CLI builds one `--flag` per field (with the field's help
text), recipe files (`--config recipe.toml`) use the same names, and each run stores its merged settings
in `config.json`. Add a setting here and it appears everywhere.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

TOKENIZER_KINDS = ("wordlevel", "bpe", "wordpiece")
# Settings of a classifier's labels, head and fine-tuning that a language model has no use for: `lstmcli
# pretrain` has no flags for them.
CLASSIFIER_ONLY = ("label_column", "label_names", "eval_split", "max_train_samples", "init_from", "pooling",
                   "init_state", "embeddings", "freeze_embeddings", "class_weights", "ordinal_smoothing", "truncation",
                   "self_training_rounds", "self_training_epochs")
# Settings `lstmcli tune` decides for its trials, or that would fix the model's shape (a pretrained language
# model's): tune has no flags for them.
NOT_TUNABLE = ("eval_every", "output_dir", "init_from", "unlabeled", "self_training_rounds",
               "self_training_epochs", "objective", "window", "negatives")
# Settings of what `lstmcli pretrain` learns, which a classifier has no use for: train has no flags for them.
PRETRAIN_ONLY = ("objective", "window", "negatives")


def setting(default, help: str, *, group: str, choices=None, low=None, high=None, flag=None,
            resumable=False):
    """A config field with what the CLI, the validator and `--resume` need to know about it.

    `low`/`high` bound numbers (inclusive); `flag` overrides the CLI spelling (e.g. a boolean pair);
    `resumable` settings may change when a run is resumed (more epochs, another device), all others
    must match the saved run.
    """
    return field(default=default, metadata=dict(help=help, group=group, choices=choices, low=low,
                                                high=high, flag=flag, resumable=resumable))


@dataclass
class Config:
    # -- data -------------------------------------------------------------------------------------
    dataset: str = setting("data/sample", "Training data: a Hugging Face Hub name, a folder (a Hub snapshot "
                           "with its dataset card, a save_to_disk folder, or split files: train.jsonl, "
                           "validation.csv, ...) or one data file (csv, tsv, json, jsonl, parquet; .gz allowed).",
                           group="data")
    dataset_config: str | None = setting(None, "Dataset configuration, e.g. 'sst2' for the 'glue' dataset: of a "
                                         "Hub dataset, a snapshot folder's card, or a folder with one "
                                         "sub-folder per configuration.", group="data")
    text_column: str | None = setting(None, "Column holding the text. Default: detected by name (text, "
                                      "sentence, Review Text, ...; case, spaces, _ and - ignored), else the "
                                      "one column of long free text.", group="data")
    label_column: str | None = setting(None, "Column holding the label. Default: detected by name (label, "
                                       "sentiment, class, stars, Rating, ...), else the one column of a few "
                                       "repeated values.", group="data")
    label_names: str | None = setting(None, "Comma-separated names for integer labels, in the order of "
                                      "their values (e.g. 'negative,positive' for 0 and 1), printed by "
                                      "eval and predict.", group="data")
    train_split: str = setting("train", "Split to train on.", group="data")
    eval_split: str | None = setting(None, "Split to validate on (picks the best epoch and early stopping). "
                                     "Default: 'validation' (or 'valid', 'dev'), else --val-fraction of train "
                                     "chosen by a hash of the text ('holdout' asks for that); never 'test' "
                                     "unless named, with a warning that its score is then optimistic.",
                                     group="data")
    val_fraction: float = setting(0.1, "Share of train held out for validation when the dataset has "
                                  "no validation split (or with --eval-split holdout).", group="data",
                                  low=0.01, high=0.5)
    max_train_samples: int = setting(0, "Train on a seeded, class-balanced subset of this many rows of the train "
                                     "split (0: all of it), e.g. to study how many labels a task needs.",
                                     group="data", low=0)
    unlabeled: tuple[str, ...] = setting((), "Unlabelled text to learn from: a file, folder or Hub name in any "
                                         "format --dataset takes (repeat the flag for several). pretrain adds it "
                                         "to the train split's texts; train self-trains on it (the --dataset "
                                         "itself: its train rows that --max-train-samples leaves out).",
                                         group="data")
    strict: bool = setting(False, "Fail on rows with a missing text or label instead of skipping them "
                           "with a count.", group="data", flag="--strict/--skip-bad-rows")

    # -- tokenizer --------------------------------------------------------------------------------
    tokenizer: str = setting("wordlevel", "Tokenizer to train (wordlevel, bpe, wordpiece), or the path "
                             "of a tokenizer.json (or a Hub tokenizer name) to reuse.", group="tokenizer")
    vocab_size: int = setting(20000, "Vocabulary size of a trained tokenizer.", group="tokenizer",
                              low=10, high=2_000_000)
    min_frequency: int = setting(2, "Minimum count for a token to enter a trained vocabulary.",
                                 group="tokenizer", low=1)
    lowercase: bool = setting(True, "Lower-case text in a trained tokenizer (--no-lowercase keeps case).",
                              group="tokenizer", flag="--lowercase/--no-lowercase")
    max_length: int = setting(512, "Tokens kept per text; longer texts are truncated (the count is "
                              "reported). 512 reads 87% of IMDB's reviews whole.",
                              group="tokenizer", low=1, high=1_000_000)
    truncation: str = setting("head-tail", "Which tokens of a longer text to keep: the first (head), the last "
                              "(tail), or the first quarter and the last three quarters (head-tail: where "
                              "reviewers state their verdict).",
                              group="tokenizer", choices=("head", "tail", "head-tail"))

    # -- model ------------------------------------------------------------------------------------
    embed_dim: int = setting(128, "Embedding size (nn.LSTM input_size).", group="model", low=1)
    hidden_size: int = setting(128, "LSTM hidden size per direction.", group="model", low=1)
    layers: int = setting(1, "Stacked LSTM layers (nn.LSTM num_layers).", group="model", low=1, high=16)
    bias: bool = setting(True, "Use bias weights in the LSTM (nn.LSTM bias).", group="model",
                         flag="--bias/--no-bias")
    dropout: float = setting(0.0, "Dropout between LSTM layers, as nn.LSTM applies it (no effect with "
                             "one layer).", group="model", low=0.0, high=0.99)
    embedding_dropout: float = setting(0.2, "Dropout on the embeddings.", group="model", low=0.0, high=0.99)
    init_from: str | None = setting(None, "Start from a run of lstmcli pretrain (its directory). A language "
                                    "model gives its tokenizer, embedding and LSTM weights, and the model flags "
                                    "follow it; word vectors give the embedding of every word they know, and "
                                    "add those words to the vocabulary.", group="model")
    embeddings: str | None = setting(None, "Pretrained word vectors to start from (GloVe, word2vec or fastText "
                                     ".vec text format): tokens they cover get their vector, the others a "
                                     "random one.", group="model")
    freeze_embeddings: bool = setting(False, "Keep the embeddings fixed while training (with --embeddings).",
                                      group="model", flag="--freeze-embeddings/--train-embeddings")
    bidirectional: bool = setting(False, "Run a second LSTM over each text backwards (nn.LSTM "
                                  "bidirectional).", group="model", flag="--bidirectional/--unidirectional")
    pooling: str = setting("max", "How the LSTM outputs become one vector: max or mean over the text, "
                           "both (mean-max), or the last hidden state.", group="model",
                           choices=("max", "mean", "mean-max", "last"))
    init_state: str = setting("zeros", "Initial h0/c0: zeros, or learned parameters.", group="model",
                              choices=("zeros", "learned"))
    segment_length: int = setting(0, "Read texts longer than this in segments of this many tokens, run side "
                                  "by side as one wide batch and pooled over the whole text (0: one pass "
                                  "over each text).", group="model", low=0, high=1_000_000)

    # -- pretraining ------------------------------------------------------------------------------
    objective: str = setting("language-model", "What lstmcli pretrain learns from the text: a language model (the "
                             "embedding and (Bi)LSTM predict each next and previous word), or word-vectors (the "
                             "embedding alone, by skip-gram with negative sampling: minutes instead of hours, and "
                             "what measured better here).", group="pretraining",
                             choices=("language-model", "word-vectors"))
    window: int = setting(5, "Word vectors: each word predicts up to this many words on either side (a random "
                          "width per word, as word2vec).", group="pretraining", low=1, high=50)
    negatives: int = setting(5, "Word vectors: random words (by frequency^0.75) each word learns to tell from its "
                             "real neighbours.", group="pretraining", low=1, high=100)

    # -- training ---------------------------------------------------------------------------------
    epochs: int = setting(10, "Passes over the training data.", group="training", low=1, resumable=True)
    max_steps: int = setting(0, "Stop after this many optimizer steps (0: no limit).", group="training",
                             low=0, resumable=True)
    batch_size: int = setting(64, "Texts per batch (per process under torchrun).", group="training",
                              low=1, high=1_000_000)
    lr: float = setting(1e-2, "Peak learning rate of AdamW.", group="training", low=0.0, high=10.0)
    weight_decay: float = setting(0.01, "AdamW weight decay: pulls the weights toward zero; every recipe "
                                  "gained from 0.1-0.2 (Rotten Tomatoes, SST-5, SST-2, IMDB).",
                                  group="training", low=0.0, high=1.0)
    schedule: str = setting("linear", "Learning-rate schedule after warm-up: linear or cosine decay to "
                            "zero, or constant.", group="training", choices=("linear", "cosine", "constant"))
    warmup: float = setting(0.05, "Share of the steps spent warming the learning rate up from zero.",
                            group="training", low=0.0, high=0.9)
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0: no clipping).", group="training",
                               low=0.0)
    ema: float = setting(0.0, "Validate and keep an exponential moving average of the weights, with this "
                         "decay per step (e.g. 0.999; 0: off), reached as (1+n)/(10+n) grows past it after n "
                         "steps.", group="training", low=0.0, high=0.99999)
    adversarial: str = setting("none", "Adversarial training: none, or at (also train on the embeddings "
                               "pushed along the loss gradient; about 2x a step). A classifier started "
                               "from word vectors trains with at unless this says none.", group="training",
                               choices=("none", "at"))
    adversarial_epsilon: float = setting(5.0, "Size (L2 norm per text) of the --adversarial at push.",
                                         group="training", low=0.0, high=1000.0)
    self_training_rounds: int = setting(2, "With --unlabeled: how many students train, each from scratch on the "
                                        "labels and the previous model's most confident pseudo-labels of the "
                                        "unlabelled text (each round costs about one run on that much text).",
                                        group="training", low=1, high=10)
    self_training_epochs: int = setting(4, "Passes each self-training student makes over its rows (the teacher "
                                        "makes --epochs): students learn from many more rows than the labels, "
                                        "so they need fewer passes.", group="training", low=1)
    class_weights: str = setting("none", "Weight the loss by class: none, or auto (inverse class "
                                 "frequency, for imbalanced data).", group="training",
                                 choices=("none", "auto"))
    ordinal_smoothing: float = setting(0.0, "For labels in order (star ratings; very negative to very positive): "
                                       "move this share of each training target onto the classes next to it in "
                                       "class-id order (the sorted label values, or a Hub dataset's class "
                                       "order), so a near miss costs less than a far one.", group="training",
                                       low=0.0, high=0.9)
    bucket_size: int = setting(50, "Batches drawn together and sorted by length, so batches hold texts "
                               "of similar length (less padding); 1 turns bucketing off.",
                               group="training", low=1, high=100_000)
    seed: int = setting(0, "Random seed: same seed, data and flags give the same model on CPU.",
                        group="training", low=0)
    eval_every: int = setting(0, "Also evaluate every N steps (0: only at each epoch end).",
                              group="training", low=0, resumable=True)
    save_every: int = setting(0, "Also save a resumable state every N steps (0: at every evaluation and "
                              "at least every 10 minutes).", group="training", low=0, resumable=True)
    patience: int = setting(3, "Stop after this many evaluations without a better validation accuracy "
                            "(0: never stop early).", group="training", low=0, resumable=True)

    # -- runtime ----------------------------------------------------------------------------------
    device: str = setting("auto", "Where to train: auto (CUDA when present), cpu or cuda.",
                          group="runtime", resumable=True)
    precision: str = setting("auto", "Arithmetic: auto (bf16 where the hardware has it), fp32, bf16, "
                             "fp16 (CUDA only).", group="runtime", choices=("auto", "fp32", "bf16", "fp16"),
                             resumable=True)
    threads: int = setting(0, "CPU threads (0: the idle cores this process may use, shared among local "
                           "processes).", group="runtime", low=0, resumable=True)
    output_dir: str = setting("runs/latest", "Run directory for the model, tokenizer, config, metrics "
                              "and log.", group="runtime", resumable=True)

    def validate(self) -> Config:
        """Check every field against its bounds and choices; raise one UserError naming the flag."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            flag = option_name(f.name)
            if meta["choices"] and value not in meta["choices"]:
                raise UserError(f"{flag} {value!r} is not one of: {', '.join(meta['choices'])}.")
            if meta["low"] is not None and value < meta["low"]:
                raise UserError(f"{flag} {value} is too small: use a value of at least {meta['low']}.")
            if meta["high"] is not None and value > meta["high"]:
                raise UserError(f"{flag} {value} is too large: use a value of at most {meta['high']}.")
        if self.segment_length and self.pooling == "last":
            raise UserError("--pooling last reads the final state, which --segment-length cuts into pieces: "
                            "use --pooling max, mean or mean-max, or --segment-length 0.")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"--device {self.device!r} is not one of: auto, cpu, cuda (or cuda:N).")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def fields_in_group(*groups: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if f.metadata["group"] in groups]


# Settings that earlier versions had and this one dropped, at the value that did nothing: a run directory or
# recipe that holds one at that value still loads (its model is the same without it).
RETIRED = {"weight_drop": 0.0, "init_lr_scale": 1.0}


def from_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check names and types of settings read from a recipe or config.json; return them by field name."""
    known = {f.name: f for f in dataclasses.fields(Config)}
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in RETIRED and value == RETIRED[name]:
            continue
        if name in RETIRED:
            raise UserError(f"{source}: setting {key!r} = {value!r} is no longer supported (it measured no "
                            f"better than {RETIRED[name]!r}): remove it, or train with an earlier lstmcli.")
        if name not in known:
            raise UserError(f"{source}: unknown setting {key!r}; known settings are: "
                            f"{', '.join(sorted(known))}.")
        expected = type(known[name].default) if known[name].default is not None else str
        if expected is tuple and isinstance(value, list | str):
            value = tuple([value] if isinstance(value, str) else value)
        if expected is tuple and not all(isinstance(v, str) for v in value):
            raise UserError(f"{source}: setting {key!r} should be a list of strings, not {value!r}.")
        if isinstance(value, int) and not isinstance(value, bool) and expected is float:
            value = float(value)
        if value is not None and not isinstance(value, expected):
            raise UserError(f"{source}: setting {key!r} should be {expected.__name__}, "
                            f"not {type(value).__name__} ({value!r}).")
        out[name] = value
    return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML recipe file: `key = value` lines using the flag names (dashes or underscores)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"recipe file {path} not found: check the --config path.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"recipe file {path} is not valid TOML ({e}): fix the line it names.") from None
    return from_mapping(values, str(path))


def merge(recipe: dict[str, Any], command_line: dict[str, Any]) -> Config:
    """Defaults, overridden by the recipe file, overridden by flags given on the command line."""
    return Config(**{**recipe, **command_line}).validate()


def differences(saved: Config, wanted: Config) -> list[str]:
    """Settings that must match to resume a run but do not, as 'name: saved -> wanted' strings."""
    return [f"{option_name(f.name)}: {getattr(saved, f.name)!r} -> {getattr(wanted, f.name)!r}"
            for f in dataclasses.fields(Config)
            if not f.metadata["resumable"] and getattr(saved, f.name) != getattr(wanted, f.name)]
