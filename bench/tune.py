"""make bench-tune: `lstmcli tune` against fastText's autotune, the same budget on the same splits.

    python bench/tune.py [--only sst3 sst5 rotten_tomatoes] [--part lstmcli|fasttext] [--seeds 0 1 2]

For each set and seed: `lstmcli tune --budget B --seed S` (its trial 0 trains the defaults), then `lstmcli eval`
of the kept run on the test split (the recipes it is compared with are means over seeds 0/1/2, and one seed
moves these small test splits by a point or two); then fastText's autotune (autotuneValidationFile = the same
validation split, autotuneDuration = B, 2 threads; it retrains its best settings after the budget) scored on the
same test split. Both choose on the validation split only. fastText runs in a child process stopped after twice
the budget: on this shared machine its autotune once ran 25 minutes into a 5-minute budget. Writes
bench/tune-results.json (each part as soon as it is measured).

sst3 stands in for a 3-class tweet set (the project has none): SST-5 with its classes merged into negative
(0, 1), neutral (2) and positive (3, 4), written under runs/bench-tune/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fasttext_anchor import prepare, read  # noqa: E402
from reproduce import JSON as REPRODUCED, SETTING  # noqa: E402
from run import ENV, ROOT, SHARED, cpu_name  # noqa: E402

WORK = ROOT / "runs" / "bench-tune"
SETS = {"sst3": "5m", "sst5": "10m", "rotten_tomatoes": "10m"}  # set -> budget
SST3 = {0: "negative", 1: "negative", 2: "neutral", 3: "positive", 4: "positive"}


def dataset(name: str) -> Path:
    if name != "sst3":
        return SHARED / name
    folder = WORK / "data" / "sst3"
    for split in ("train", "validation", "test"):
        rows = read(SHARED / "sst5" / f"{split}.jsonl")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(dict(text=r["text"], label=SST3[r["label"]])) + "\n"
                                                       for r in rows))
    return folder


def against(name: str) -> str:
    """What the tuned test accuracy is compared with: the set's labels-only recipe as bench/reproduce.json last
    measured it (the mean over its seeds), or the defaults where the set has no recipe."""
    recipes = [r for r in json.loads(REPRODUCED.read_text()) if r["set"] == name and r["setting"] == SETTING]
    return f"recipe {recipes[0]['accuracy']}" if recipes else "its defaults (trial 0)"


def seconds(budget: str) -> int:
    return int(budget[:-1]) * {"s": 1, "m": 60, "h": 3600}[budget[-1]]


def lstmcli_tune(name: str, data: Path, budget: str, seed: int) -> dict:
    out = WORK / (name if seed == 0 else f"{name}-seed{seed}")
    shutil.rmtree(out, ignore_errors=True)
    command = ["tune", "--dataset", os.path.relpath(data, ROOT), "--budget", budget, "--seed", str(seed),
               "--output-dir", os.path.relpath(out, ROOT)]
    print(f"{name}: lstmcli {' '.join(command)}", flush=True)
    started = time.perf_counter()
    tuned = subprocess.run([sys.executable, "-m", "lstmcli", *command], cwd=ROOT, env=ENV, text=True,
                           capture_output=True)
    wall = time.perf_counter() - started
    (WORK / f"{out.name}.log").write_text(tuned.stderr)
    if tuned.returncode != 0:
        raise SystemExit(f"{name}: tune failed:\n{tuned.stderr[-2000:]}")
    summary = json.loads(tuned.stdout)
    evaluated = subprocess.run([sys.executable, "-m", "lstmcli", "eval", "--model-dir", str(out / "best"), "--json"],
                               cwd=ROOT, env=ENV, text=True, capture_output=True)
    if evaluated.returncode != 0:
        raise SystemExit(f"{name}: eval failed:\n{evaluated.stderr}")
    return dict(command="lstmcli " + " ".join(command), wall_seconds=wall, summary=summary,
                test_accuracy=json.loads(evaluated.stdout)["accuracy"],
                recipe=(out / "recipe.toml").read_text(), trials=(out / "trials.csv").read_text())


def fasttext_autotune(data: Path, budget: str) -> dict:
    """fastText's autotune in a child process, stopped after twice the budget."""
    receiving, sending = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.Process(target=fasttext_child, args=(data, budget, sending))
    started = time.perf_counter()
    child.start()
    sending.close()  # the child holds the only writing end now: if it dies, poll() sees the pipe closed at once
    finished = receiving.poll(2 * seconds(budget))
    try:
        result = receiving.recv() if finished else dict(test_accuracy=None, timed_out=True,
                                                         wall_seconds=time.perf_counter() - started)
    except EOFError:
        raise SystemExit("fastText's autotune failed (its traceback is above): is fastText installed? "
                         "make bench-tune installs it.") from None
    finally:
        child.kill()
        child.join()
    return result


def fasttext_child(data: Path, budget: str, answer) -> None:
    import fasttext

    files = []
    for split in ("train", "validation"):
        f = tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8")
        f.writelines(f"__label__{r['label']} {prepare(r['text'])}\n" for r in read(data / f"{split}.jsonl"))
        f.flush()
        files.append(f)
    started = time.perf_counter()
    model = fasttext.train_supervised(files[0].name, autotuneValidationFile=files[1].name,
                                      autotuneDuration=seconds(budget), thread=2, verbose=2)
    wall = time.perf_counter() - started
    for f in files:
        f.close()
    test = read(data / "test.jsonl")
    predicted, _ = model.predict([prepare(r["text"]).replace("\n", " ") for r in test])
    correct = sum(p[0] == f"__label__{r['label']}" for p, r in zip(predicted, test))
    answer.send(dict(test_accuracy=correct / len(test), wall_seconds=wall,
                     settings=dict(epoch=model.epoch, lr=model.lr, dim=model.dim, wordNgrams=model.wordNgrams,
                                   minn=model.minn, maxn=model.maxn)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(SETS), help="sets to run (default: all)")
    parser.add_argument("--part", choices=["lstmcli", "fasttext"], help="measure only this side (default: both)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="lstmcli tune's seeds (default: 0 1 2)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"bench/tune.py: {SHARED} is absent; put the shared benchmark datasets beside the checkout.")
    path = ROOT / "bench" / "tune-results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = f"{cpu_name()}, measured {time.strftime('%Y-%m-%d')}"
    for name in args.only or SETS:
        budget = SETS[name]
        data = dataset(name)
        entry = results.setdefault(name, {})
        entry.update(budget=budget, against=against(name))
        seeds = args.seeds if args.part in (None, "lstmcli") else []
        for seed in seeds:
            by_seed = entry.setdefault("lstmcli", {})
            tuned = by_seed[str(seed)] = lstmcli_tune(name, data, budget, seed)
            entry["lstmcli_mean_test"] = sum(t["test_accuracy"] for t in by_seed.values()) / len(by_seed)
            path.write_text(json.dumps(results, indent=2) + "\n")
            s = tuned["summary"]
            print(f"  lstmcli tune, seed {seed}: test {tuned['test_accuracy']:.4f} (defaults "
                  f"{s['defaults']['test']:.4f}; validation {s['validation']:.4f} vs "
                  f"{s['defaults']['validation']:.4f}), trials {s['trials']}, wall {tuned['wall_seconds']:.0f} s "
                  f"of {seconds(budget)}; mean test over seeds {sorted(by_seed)}: {entry['lstmcli_mean_test']:.4f}",
                  flush=True)
        if args.part in (None, "fasttext"):
            anchor = entry["fasttext_autotune"] = fasttext_autotune(data, budget)
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"  fastText autotune: test {anchor['test_accuracy']}, wall {anchor['wall_seconds']:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
