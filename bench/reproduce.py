"""make reproduce: train every recipe in recipes/, evaluate it with `lstmcli eval`, and write RESULTS.md
and bench/reproduce.json (one row per row of RESULTS.md).

    python bench/reproduce.py [--only imdb sst2 ...] [--seeds 0 1 2]

Each recipe is trained from scratch through the command line a user would type, then evaluated on its
set's test split with `lstmcli eval`; fastText (bigrams, 2 threads) is trained on the same splits in the
same run, as the anchor. With several --seeds each recipe is trained once per seed and its row gives the
mean test accuracy (each seed's in reproduce.json). Needs ../shared/datasets beside the checkout.
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

def lstmcli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmcli", *args], cwd=ROOT, env=ENV, text=True, capture_output=True)


def reproduce(name: str, seeds: list[int]) -> dict:
    """Train and evaluate one recipe once per seed, and fastText on the same splits: one row of RESULTS.md."""
    test_set, goal = RECIPES[name]
    recipe = f"recipes/{name}.toml"
    train_set = Path(tomllib.loads((ROOT / recipe).read_text())["dataset"]).name
    runs = [train_and_evaluate(name, recipe, test_set, seed) for seed in seeds]
    anchor = train_and_test(SHARED / train_set / "train.jsonl", SHARED / test_set / "test.jsonl")

    def mean(key: str) -> float:
        return sum(r[key] for r in runs) / len(runs)

    print(f"  test accuracy {mean('accuracy'):.4f} (goal {goal}), fastText {anchor['accuracy']:.4f}", flush=True)
    return dict(set=test_set, setting=SETTING, accuracy=round(mean("accuracy"), 4), goal=goal,
                fasttext=round(anchor["accuracy"], 4), minutes=round(mean("wall_seconds") / 60, 1),
                command=" && ".join(runs[0]["commands"]), recipe=recipe, trained_on=f"{train_set}/train",
                macro_f1=round(mean("macro_f1"), 4), train_minutes=round(mean("train_seconds") / 60, 1),
                fasttext_seconds=round(anchor["train_seconds"], 1), fasttext_settings=anchor["settings"],
                seeds={str(r["seed"]): round(r["accuracy"], 4) for r in runs}, date=time.strftime("%Y-%m-%d"))


def train_and_evaluate(name: str, recipe: str, test_set: str, seed: int) -> dict:
    run = f"runs/recipes/{name}"
    train_command = ["train", "--config", recipe, *(["--seed", str(seed)] if seed else []), "--output-dir", run,
                     "--overwrite", "--quiet"]
    eval_command = ["eval", "--model-dir", run, "--dataset", f"../shared/datasets/{test_set}", "--split", "test",
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
    in RECIPES order: `--only` reruns some rows and keeps the others."""
    previous = json.loads(JSON.read_text()) if JSON.exists() else []
    fresh = {(r["recipe"], r["setting"]) for r in rows}
    kept = [r for r in previous if (r.get("recipe"), r.get("setting")) not in fresh]
    order = {f"recipes/{name}.toml": i for i, name in enumerate(RECIPES)}
    return sorted(kept + rows, key=lambda r: (r["setting"] != SETTING, order.get(r.get("recipe"), len(order))))


def write_results(rows: list[dict]) -> None:
    lines = [
        "# Results: lstmcli recipes against fastText",
        "",
        f"Written by `make reproduce` (`python bench/reproduce.py`): {cpu_name()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; each row's date is in bench/reproduce.json, which holds these rows as data. "
        "'labels only' recipes train from scratch (no pretrained vectors, no outside text) and are scored on "
        "their set's test split with `lstmcli eval`; fastText (supervised, bigrams, 2 threads, shuffled input) "
        "ran on the same splits in the same run. Test accuracy is the mean over the seeds listed (each seed's "
        "figure in reproduce.json); times are per run.",
        "",
        "| set | setting | recipe | trained on | seeds | test accuracy | macro-F1 | goal | train time | total time | "
        "fastText (same run) | beats fastText |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['set']} | {r['setting']} | [`{r['recipe']}`]({r['recipe']}) | `{r['trained_on']}` | "
                     f"{', '.join(r['seeds'])} | **{r['accuracy']:.4f}** | {r['macro_f1']:.4f} | {r['goal']:.3f} "
                     f"{'(met)' if r['accuracy'] >= r['goal'] else '(not met)'} | {r['train_minutes']:.1f} min | "
                     f"{r['minutes']:.1f} min | {r['fasttext']:.4f} in {r['fasttext_seconds']:.1f} s | "
                     f"{'yes' if r['accuracy'] > r['fasttext'] else 'no'} |")
    lines += ["", "Train time is the training loop with its evaluations; total time adds starting, reading, "
              "tokenizing and the final test evaluation. fastText's settings: " + rows[0]["fasttext_settings"] + ".",
              "", "## Reproduce one figure", ""]
    for r in rows:
        lines += [f"**{r['set']}, {r['setting']}**", "", "```", *r["command"].split(" && "), "```", ""]
    (ROOT / "RESULTS.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(RECIPES), help="recipes to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train each recipe once per seed")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"reproduce: {SHARED} is absent. The recipes train on the shared benchmark datasets "
                         "(sst2, sst2-glue, sst5, imdb, rotten_tomatoes as {train,validation,test}.jsonl); put "
                         "them beside the checkout as ../shared/datasets and run make reproduce again.")
    rows = merged([reproduce(name, args.seeds) for name in args.only or RECIPES])
    write_results(rows)
    JSON.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote RESULTS.md and {JSON.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
