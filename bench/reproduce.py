"""make reproduce: train every recipe in recipes/, evaluate it with `lstmcli eval`, and write RESULTS.md.

    python bench/reproduce.py [--only imdb sst2 ...]

Each recipe is trained from scratch through the command line a user would type, then evaluated on its
set's test split with `lstmcli eval`; fastText (bigrams, 2 threads) is trained on the same splits in the
same run, as the anchor. Needs ../shared/datasets beside the checkout.
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

# recipe -> (the set whose test split scores it, the goal from the issue, fastText's figure quoted there)
RECIPES = {
    "imdb": ("imdb", 0.900, 0.893),
    "sst2": ("sst2", 0.850, 0.807),
    "rotten_tomatoes": ("rotten_tomatoes", 0.790, 0.778),
    "sst5": ("sst5", 0.440, 0.409),
}

def lstmcli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmcli", *args], cwd=ROOT, env=ENV, text=True, capture_output=True)


def reproduce(name: str) -> dict:
    test_set, goal, quoted = RECIPES[name]
    recipe = f"recipes/{name}.toml"
    settings = tomllib.loads((ROOT / recipe).read_text())
    run = f"runs/recipes/{name}"
    train_command = ["train", "--config", recipe, "--output-dir", run, "--overwrite", "--quiet"]
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
    train_set = Path(settings["dataset"]).name
    anchor = train_and_test(SHARED / train_set / "train.jsonl", SHARED / test_set / "test.jsonl")
    print(f"  test accuracy {result['accuracy']:.4f} (goal {goal}), fastText {anchor['accuracy']:.4f}, "
          f"{wall:.0f} s", flush=True)
    return dict(name=name, recipe=recipe, train_set=train_set, test_set=test_set, goal=goal, quoted_fasttext=quoted,
                accuracy=result["accuracy"], macro_f1=result["macro_f1"], train_seconds=metrics["train"]["seconds"],
                wall_seconds=wall, validation_accuracy=metrics["validation"]["accuracy"], fasttext=anchor,
                commands=["lstmcli " + " ".join(train_command[:-1]), "lstmcli " + " ".join(eval_command[:-1])])


def write_results(results: list[dict]) -> None:
    lines = [
        "# Results: lstmcli recipes against fastText",
        "",
        f"Written by `make reproduce` (`python bench/reproduce.py`) on {time.strftime('%Y-%m-%d')}: "
        f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}. Every recipe trains from "
        "scratch (no pretrained vectors, no outside data) and is scored on its set's test split with "
        "`lstmcli eval`; fastText (supervised, bigrams, 2 threads, shuffled input) ran on the same splits "
        "in the same run.",
        "",
        "| set | recipe | trained on | test accuracy | macro-F1 | goal | train time | total time | "
        "fastText (same run) | beats fastText |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ft = r["fasttext"]
        lines.append(f"| {r['name']} | [`{r['recipe']}`]({r['recipe']}) | `{r['train_set']}/train` | "
                     f"**{r['accuracy']:.4f}** | {r['macro_f1']:.4f} | {r['goal']:.3f} "
                     f"{'(met)' if r['accuracy'] >= r['goal'] else '(not met)'} | {r['train_seconds'] / 60:.1f} min | "
                     f"{r['wall_seconds'] / 60:.1f} min | {ft['accuracy']:.4f} in {ft['train_seconds']:.1f} s | "
                     f"{'yes' if r['accuracy'] > ft['accuracy'] else 'no'} |")
    lines += ["", "Train time is the training loop with its evaluations; total time adds reading, tokenizing "
              "and the final test evaluation. fastText's settings: " + results[0]["fasttext"]["settings"] + ".",
              "", "## Reproduce one figure", ""]
    for r in results:
        lines += [f"**{r['name']}**", "", "```", *r["commands"], "```", ""]
    (ROOT / "RESULTS.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(RECIPES), help="recipes to run (default: all)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"reproduce: {SHARED} is absent. The recipes train on the shared benchmark datasets "
                         "(sst2, sst2-glue, sst5, imdb, rotten_tomatoes as {train,validation,test}.jsonl); put "
                         "them beside the checkout as ../shared/datasets and run make reproduce again.")
    results = [reproduce(name) for name in args.only or RECIPES]
    write_results(results)
    print("wrote RESULTS.md")


if __name__ == "__main__":
    main()
