"""make reproduce: train every recipe in recipes/, evaluate it with `lstmcli eval`, and write RESULTS.md
and bench/reproduce.json (one row per row of RESULTS.md).

    python bench/reproduce.py [--only imdb sst2 ...] [--pretrained imdb-1k imdb ...] [--self-trained imdb-1k]
                              [--seeds 0 1 2]

Each recipe is trained from scratch through the command line a user would type, then evaluated on its
set's test split with `lstmcli eval`; fastText (bigrams, 2 threads) is trained on the same splits in the
same run, as the anchor. With several --seeds each recipe is trained once per seed and its row gives the
mean test accuracy (each seed's in reproduce.json). The rows that also learn from unlabelled text run `lstmcli
pretrain` on IMDB's reviews (word vectors; each pretraining recipe once, a finished run reused) and start each
set from it with `train --init-from`, fastText learning from the same labelled rows; the self-trained rows run
`train --unlabeled` (selftrain.py). Needs ../shared/datasets beside the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fasttext_anchor import train_and_test  # noqa: E402
from run import ENV, ROOT, SHARED, cpu_name  # noqa: E402

# recipe -> (the set whose test split scores it, the goal from the issue)
RECIPES = {
    "imdb": ("imdb", 0.915),
    "sst2": ("sst2", 0.860),
    "rotten_tomatoes": ("rotten_tomatoes", 0.805),
    "sst5": ("sst5", 0.440),
}
SETTING = "labels only"  # trained from scratch on the labelled train split: no pretrained vectors or outside text
JSON = ROOT / "bench" / "reproduce.json"
# Rows that also learn from unlabelled text: word vectors pretrained on IMDB reviews (never its test reviews), then
# a classifier started from them with `train --init-from` (which adds adversarial training by default). name -> (set,
# setting, pretraining recipe, recipe (None: the defaults, on the set's folder), train flags beside --config and
# --init-from, goal, labelled rows (None: all))
FEW_LABELS = ["--max-train-samples", "1000", "--epochs", "20"]  # the self-trained rows with 1,000 IMDB labels
# Rows measured before their recipe took a weight decay ten or twenty times the default keep the default.
EARLIER_WEIGHT_DECAY = ["--weight-decay", "0.01"]
NO_ADVERSARIAL = ["--adversarial", "none"]  # rows measured before the IMDB recipe took adversarial training
IMDB_REVIEWS = ["--unlabeled", "../shared/datasets/imdb/unsupervised.jsonl"]
OTHER_IMDB_TRAIN_TEXTS = ["--unlabeled", "../shared/datasets/imdb"]  # the train rows --max-train-samples leaves out
ADVERSARIAL = ["--adversarial", "at", "--adversarial-epsilon", "5"]
IMDB_VECTORS = "recipes/imdb-word-vectors.toml"  # IMDB's train and unlabelled reviews
IMDB_TRAIN_VECTORS = "recipes/imdb-train-word-vectors.toml"  # IMDB's train reviews only
PRETRAINED = {
    "imdb-1k": ("imdb", "1k labels + word vectors of the IMDB train texts, default flags", IMDB_TRAIN_VECTORS, None,
                ["--max-train-samples", "1000"], 0.85, 1000),
    # measured before the recipe took a smaller push (--init-from's default is epsilon 5)
    "imdb": ("imdb", "all labels + word vectors of IMDB's unlabelled reviews, with adversarial training", IMDB_VECTORS,
             "recipes/imdb.toml", [*EARLIER_WEIGHT_DECAY, *ADVERSARIAL], 0.935, None),
    # measured before the recipe averaged its weights and took a smaller push
    "sst2": ("sst2", "+ word vectors of IMDB reviews, with adversarial training", IMDB_VECTORS, "recipes/sst2.toml",
             [*ADVERSARIAL, "--epochs", "5", "--ema", "0", *EARLIER_WEIGHT_DECAY], 0.87, None),
    # measured before the recipe took a smaller push
    "rotten_tomatoes": ("rotten_tomatoes", "+ word vectors of IMDB reviews, with adversarial training", IMDB_VECTORS,
                        "recipes/rotten_tomatoes.toml", [*ADVERSARIAL, *EARLIER_WEIGHT_DECAY], 0.82, None),
    # measured before the recipe spread its targets onto neighbouring classes
    "sst5": ("sst5", "+ word vectors of IMDB reviews", IMDB_VECTORS, "recipes/sst5.toml",
             ["--ordinal-smoothing", "0", *EARLIER_WEIGHT_DECAY], 0.46, None),
}
# Rows that self-train on unlabelled text (`train --unlabeled`, selftrain.py), in the same shape.
SELF_TRAINED = {
    "imdb-1k": ("imdb", "1k labels + the other IMDB train texts, self-trained", "recipes/imdb.toml",
                [*FEW_LABELS, *EARLIER_WEIGHT_DECAY, *NO_ADVERSARIAL, *OTHER_IMDB_TRAIN_TEXTS], 0.85, 1000),
    "imdb-1k-at": ("imdb", "1k labels + the other IMDB train texts, self-trained with adversarial training",
                   "recipes/imdb.toml", [*FEW_LABELS, *EARLIER_WEIGHT_DECAY, *OTHER_IMDB_TRAIN_TEXTS, *ADVERSARIAL],
                   0.85, 1000),
    "imdb": ("imdb", "all labels + unlabelled IMDB reviews, self-trained", "recipes/imdb.toml",
             [*IMDB_REVIEWS, *EARLIER_WEIGHT_DECAY, *NO_ADVERSARIAL], 0.935, None),
    "rotten_tomatoes": ("rotten_tomatoes", "+ unlabelled IMDB reviews, self-trained", "recipes/rotten_tomatoes.toml",
                        IMDB_REVIEWS, 0.82, None),
}


def lstmcli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmcli", *args], cwd=ROOT, env=ENV, text=True, capture_output=True)


def reproduce(name: str, seeds: list[int]) -> dict:
    """Train and evaluate one recipe once per seed, and fastText on the same splits: one row of RESULTS.md."""
    test_set, goal = RECIPES[name]
    recipe = f"recipes/{name}.toml"
    train_set = Path(tomllib.loads((ROOT / recipe).read_text())["dataset"]).name
    runs = [train_and_evaluate(name, ["--config", recipe], test_set, seed) for seed in seeds]
    anchor = train_and_test(SHARED / train_set / "train.jsonl", SHARED / test_set / "test.jsonl")
    return row(test_set, SETTING, recipe, f"{train_set}/train", goal, runs, anchor)


def reproduce_pretrained(name: str, seeds: list[int]) -> dict:
    """The pretraining recipe (run once; a finished run is reused), then one recipe started from it per seed, and
    fastText on the same labelled rows."""
    test_set, setting, pretraining, recipe, flags, goal, labelled = PRETRAINED[name]
    pretrained_run = f"runs/recipes/{Path(pretraining).stem}"
    pretrain_command = ["pretrain", "--config", pretraining, "--output-dir", pretrained_run, "--auto-resume", "--quiet"]
    print(f"{name}: lstmcli {' '.join(pretrain_command)}", flush=True)
    pretrained = lstmcli(*pretrain_command)
    if pretrained.returncode != 0:
        raise SystemExit(f"{name}: pretraining failed:\n{pretrained.stderr}")
    pretrain_minutes = json.loads((ROOT / pretrained_run / "metrics.json").read_text())["train"]["seconds"] / 60
    args = [*settings_from(recipe, test_set), "--init-from", pretrained_run, *flags]
    runs = [train_and_evaluate(f"{name}-pretrained", args, test_set, seed) for seed in seeds]
    for run in runs:
        run["commands"].insert(0, "lstmcli " + " ".join(pretrain_command[:-1]))
    anchor, trained_on = anchor_on_labels(recipe, labelled, test_set, seeds[0])
    return dict(row(test_set, setting, recipe, trained_on, goal, runs, anchor), pretrain_minutes=round(pretrain_minutes, 1))


def reproduce_self_trained(name: str, seeds: list[int]) -> dict:
    """One self-trained recipe per seed (teacher and students: the train command's whole wall time), and
    fastText on the same labelled rows."""
    test_set, setting, recipe, flags, goal, labelled = SELF_TRAINED[name]
    runs = [train_and_evaluate(f"{name}-self-trained", ["--config", recipe, *flags], test_set, seed) for seed in seeds]
    anchor, trained_on = anchor_on_labels(recipe, labelled, test_set, seeds[0])
    return row(test_set, setting, recipe, trained_on, goal, runs, anchor)


def settings_from(recipe: str | None, test_set: str) -> list[str]:
    return ["--config", recipe] if recipe else ["--dataset", set_folder(test_set)]


def set_folder(name: str) -> str:
    return f"../shared/datasets/{name}"


def anchor_on_labels(recipe: str | None, labelled: int | None, test_set: str, seed: int) -> tuple[dict, str]:
    """fastText trained on the labelled rows a run used (with --max-train-samples, those the `seed` run chose),
    and a description of them."""
    settings = tomllib.loads((ROOT / recipe).read_text()) if recipe else {"dataset": set_folder(test_set)}
    train_file = SHARED / Path(settings["dataset"]).name / "train.jsonl"
    if labelled:
        train_file = labelled_subset(train_file, labelled, settings.get("val_fraction", 0.1), seed)
    trained_on = f"{Path(settings['dataset']).name}/train" + (f" ({labelled:,} labels)" if labelled else "")
    return train_and_test(train_file, SHARED / test_set / "test.jsonl"), trained_on


def labelled_subset(train_file: Path, size: int, val_fraction: float, seed: int) -> Path:
    """The rows `--max-train-samples size --seed seed` trains on (the hashed validation share set aside first,
    as the run does), as a file for fastText."""
    from lstmcli.batching import balanced_subset
    from lstmcli.data import is_validation_row

    rows = [r for r in map(json.loads, train_file.open()) if not is_validation_row(r["text"], val_fraction)]
    labels = sorted({r["label"] for r in rows})
    picked = balanced_subset(np.array([labels.index(r["label"]) for r in rows]), size, seed)
    path = ROOT / "runs" / "recipes" / f"{train_file.parent.name}-{size}-labels.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(rows[i]) + "\n" for i in picked))
    return path


def row(test_set: str, setting: str, recipe: str | None, trained_on: str, goal: float, runs: list[dict], anchor: dict) -> dict:
    def mean(key: str) -> float:
        return sum(r[key] for r in runs) / len(runs)

    print(f"  test accuracy {mean('accuracy'):.4f} (goal {goal}), fastText {anchor['accuracy']:.4f}", flush=True)
    return dict(set=test_set, setting=setting, accuracy=round(mean("accuracy"), 4), goal=goal,
                fasttext=round(anchor["accuracy"], 4), minutes=round(mean("wall_seconds") / 60, 1),
                command=" && ".join(runs[0]["commands"]), recipe=recipe, trained_on=trained_on,
                macro_f1=round(mean("macro_f1"), 4), train_minutes=round(mean("train_seconds") / 60, 1),
                fasttext_seconds=round(anchor["train_seconds"], 1), fasttext_settings=anchor["settings"],
                seeds={str(r["seed"]): round(r["accuracy"], 4) for r in runs},
                validation={str(r["seed"]): round(r["validation_accuracy"], 4) for r in runs},
                date=time.strftime("%Y-%m-%d"), machine=f"{cpu_name()}, {os.cpu_count()} cores")


def train_and_evaluate(name: str, train_args: list[str], test_set: str, seed: int) -> dict:
    run = f"runs/recipes/{name}"
    train_command = ["train", *train_args, *(["--seed", str(seed)] if seed else []), "--output-dir", run,
                     "--overwrite", "--quiet"]
    eval_command = ["eval", "--model-dir", run, "--dataset", set_folder(test_set), "--split", "test",
                    "--json"]
    print(f"{name}: lstmcli {' '.join(train_command)}", flush=True)
    started = time.perf_counter()
    trained = lstmcli(*train_command)
    wall = time.perf_counter() - started
    if trained.returncode != 0:
        raise SystemExit(f"{name}: training failed:\n{trained.stderr}")
    evaluated = lstmcli(*eval_command)
    if evaluated.returncode != 0:
        raise SystemExit(f"{name}: evaluation failed:\n{evaluated.stderr}")
    result = json.loads(evaluated.stdout)
    metrics = json.loads((ROOT / run / "metrics.json").read_text())
    print(f"  seed {seed}: test accuracy {result['accuracy']:.4f}, {wall:.0f} s", flush=True)
    return dict(seed=seed, accuracy=result["accuracy"], macro_f1=result["macro_f1"],
                train_seconds=metrics["train"]["seconds"], wall_seconds=wall,
                validation_accuracy=metrics["validation"]["accuracy"],
                commands=["lstmcli " + " ".join(train_command[:-1]), "lstmcli " + " ".join(eval_command[:-1])])


def merged(rows: list[dict]) -> list[dict]:
    """The new rows, and the rows of reproduce.json that they do not replace (other recipes, other settings),
    in RECIPES order: `--only` reruns some rows and keeps the others. A kept row must still be one this script
    defines: a row whose setting was renamed or removed goes."""
    previous = json.loads(JSON.read_text()) if JSON.exists() else []
    fresh = {(r["recipe"], r["setting"]) for r in rows}
    defined = ({(f"recipes/{name}.toml", SETTING) for name in RECIPES}
               | {(recipe, setting) for _, setting, _, recipe, *_ in PRETRAINED.values()}
               | {(recipe, setting) for _, setting, recipe, *_ in SELF_TRAINED.values()})
    kept = [r for r in previous if (r.get("recipe"), r.get("setting")) in defined - fresh]
    order = {f"recipes/{name}.toml": i for i, name in enumerate(RECIPES)}
    return sorted(kept + rows, key=lambda r: (r["setting"] != SETTING,  # a row of the defaults sorts with its set
                                              order.get(r.get("recipe") or f"recipes/{r['set']}.toml", len(order))))


def write_results(rows: list[dict]) -> None:
    lines = [
        "# Results: lstmcli recipes against fastText",
        "",
        f"Written by `make reproduce` (`python bench/reproduce.py`), Python {platform.python_version()}; `--only` "
        "reruns some rows and keeps the others, so rows may come from different machines and days (each row's "
        "machine is in the table, its date in bench/reproduce.json, which holds these rows as data). "
        "'labels only' recipes train from scratch (no pretrained vectors, no outside text) and are scored on "
        "their set's test split with `lstmcli eval`; fastText (supervised, bigrams, 2 threads, shuffled input) "
        "ran on the same splits in the same run. Test accuracy is the mean over the seeds listed (each seed's "
        "figure, and the validation accuracy it was chosen by, in reproduce.json); times are per run.",
        "",
        "| set | setting | recipe | trained on | seeds | test accuracy | macro-F1 | goal | train time | total time | "
        "fastText (same run) | beats fastText | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recipe = f"[`{r['recipe']}`]({r['recipe']})" if r["recipe"] else "none: defaults"
        lines.append(f"| {r['set']} | {r['setting']} | {recipe} | `{r['trained_on']}` | "
                     f"{', '.join(r['seeds'])} | **{r['accuracy']:.4f}** | {r['macro_f1']:.4f} | {r['goal']:.3f} "
                     f"{'(met)' if r['accuracy'] >= r['goal'] else '(not met)'} | {r['train_minutes']:.1f} min | "
                     f"{r['minutes']:.1f} min{pretraining(r)} | {r['fasttext']:.4f} in {r['fasttext_seconds']:.1f} s | "
                     f"{'yes' if r['accuracy'] > r['fasttext'] else 'no'} | {r.get('machine', 'not recorded')} |")
    lines += ["", "Train time is the training loop with its evaluations; total time adds starting, reading, "
              "tokenizing and the final test evaluation (and, in brackets, pretraining on the unlabelled text: "
              "done once, shared by the rows that start from it). fastText's settings: "
              + rows[0]["fasttext_settings"] + ".",
              "", "## Reproduce one figure", ""]
    for r in rows:
        lines += [f"**{r['set']}, {r['setting']}**", "", "```", *r["command"].split(" && "), "```", ""]
    (ROOT / "RESULTS.md").write_text("\n".join(lines))


def pretraining(row: dict) -> str:
    return f" (+ {row['pretrain_minutes']:.0f} min pretraining)" if row.get("pretrain_minutes") else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(RECIPES), help="labels-only recipes to run (with neither option: every row)")
    parser.add_argument("--pretrained", nargs="*", choices=list(PRETRAINED),
                        help="rows started from word vectors pretrained on IMDB reviews")
    parser.add_argument("--self-trained", nargs="*", choices=list(SELF_TRAINED),
                        help="rows self-trained on unlabelled text (train --unlabeled)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train each recipe once per seed")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"reproduce: {SHARED} is absent. The recipes train on the shared benchmark datasets "
                         "(sst2, sst2-glue, sst5, imdb, rotten_tomatoes as {train,validation,test}.jsonl); put "
                         "them beside the checkout as ../shared/datasets and run make reproduce again.")
    everything = args.only is None and args.pretrained is None and args.self_trained is None
    rows = merged([reproduce(name, args.seeds) for name in (RECIPES if everything else args.only or [])] +
                  [reproduce_pretrained(name, args.seeds) for name in (PRETRAINED if everything else args.pretrained or [])] +
                  [reproduce_self_trained(name, args.seeds)
                   for name in (SELF_TRAINED if everything else args.self_trained or [])])
    write_results(rows)
    JSON.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote RESULTS.md and {JSON.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
