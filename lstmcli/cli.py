"""The command line: parse flags, call the library, print results. Nothing here that tests need to reach.

`train` gets one option per field of `config.Config` (built by `with_settings`), so the flag table,
recipe files and config.json can never drift apart. Errors the user can fix print as one line with a
non-zero exit code; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from .config import CLASSIFIER_ONLY, NOT_TUNABLE, PRETRAIN_ONLY, Config, option_name, read_recipe
from .errors import Interrupted, UserError

app = typer.Typer(help="Train, evaluate and run (Bi)LSTM text classifiers.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

ModelDir = Annotated[Path, typer.Option(help="Run directory written by lstmcli train.")]
Device = Annotated[str, typer.Option(help="Where to run: auto (CUDA when present), cpu or cuda.")]
Threads = Annotated[int, typer.Option(help="CPU threads (0: the idle cores this process may use).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Texts per batch.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables / text lines.")]
Quantize = Annotated[bool, typer.Option("--quantize", help="Dynamic int8 weights for the LSTM and classifier: "
                                                           "model.int8.onnx on the onnx backend, torch's dynamic "
                                                           "quantization on torch (CPU; see BENCHMARKS.md).")]
Backend = Annotated[Literal["auto", "torch", "onnx"], typer.Option(
    help="Where the model runs: onnx (the run's lstmcli export, in ONNX Runtime, without importing torch), "
         "torch, or auto (onnx when the run has a current export, else torch).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")]
GROUP_TITLES = dict(data="Data", tokenizer="Tokenizer", model="Model", pretraining="Pretraining", training="Training",
                    runtime="Runtime")


def with_settings(command=None, *, without: tuple[str, ...] = ()):
    """Give `command` one typer option per Config field (but those named in `without`); it receives the ones
    given on the command line as `settings` (a dict), so a recipe file's values are only overridden by flags
    the user typed."""
    if command is None:
        return functools.partial(with_settings, without=without)
    fields = [f for f in dataclasses.fields(Config) if f.name not in without]
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "settings"]
    options = []
    for field in fields:
        meta = field.metadata
        declarations = [meta["flag"]] if meta["flag"] else [option_name(field.name)]
        choices = meta["choices"]
        help_text = meta["help"] + (f" [default: {field.default}]" if meta["flag"] else "")
        option = typer.Option(*declarations, help=help_text, rich_help_panel=GROUP_TITLES[meta["group"]],
                              show_default=not meta["flag"])
        kind = (Literal[choices] if choices else Optional[str] if field.default is None
                else list[str] if isinstance(field.default, tuple) else type(field.default))
        options.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                                         annotation=Annotated[kind, option]))

    context = inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(command)
    def wrapper(context: typer.Context, **values):
        settings = {f.name: tuple(values.pop(f.name)) if isinstance(f.default, tuple) else values.pop(f.name)
                    for f in fields}
        given = {name: value for name, value in settings.items()
                 if context.get_parameter_source(name).name != "DEFAULT"}
        return command(settings=given, **values)

    wrapper.__signature__ = inspect.Signature([context] + own + options)
    wrapper.__annotations__ = {p.name: p.annotation for p in [context] + own + options}
    return wrapper


Recipe = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML recipe with settings by flag name (e.g. recipes/imdb.toml); flags typed on the command "
                     "line override it.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --output-dir from its last saved state.")]
AutoResume = Annotated[bool, typer.Option("--auto-resume", help="Resume when --output-dir holds a saved state, else "
                                                                "start a new run: one command for the first start and "
                                                                "every restart (torchrun --max-restarts, job "
                                                                "schedulers).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --output-dir.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar or status lines.")]


@app.command()
@with_settings(without=PRETRAIN_ONLY)
def train(settings: dict, config: Recipe = None, resume: Resume = False, auto_resume: AutoResume = False,
          overwrite: Overwrite = False, quiet: Quiet = False, debug: Debug = False):
    """Train a classifier and write its run directory (model, tokenizer, config, metrics)."""
    from .runtime import torchrun_env
    from .train import train as run_training

    run_config, resume, overwrite = run_settings(config, settings, resume, auto_resume, overwrite)
    final = run_training(run_config, resume=resume, overwrite=overwrite, quiet=quiet)
    if torchrun_env()["rank"] == 0:
        print(json.dumps({k: final[k]["accuracy"] if final[k] else None for k in ("validation", "test")}))


@app.command()
@with_settings(without=CLASSIFIER_ONLY)
def pretrain(settings: dict, config: Recipe = None, resume: Resume = False, auto_resume: AutoResume = False,
             overwrite: Overwrite = False, quiet: Quiet = False, debug: Debug = False):
    """Pretrain on unlabelled text: the embedding and (Bi)LSTM as a language model, or word vectors
    (--objective); start a classifier from it with lstmcli train --init-from."""
    from .pretrain import pretrain as run_pretraining
    from .runtime import torchrun_env

    run_config, resume, overwrite = run_settings(config, settings, resume, auto_resume, overwrite)
    final = run_pretraining(run_config, resume=resume, overwrite=overwrite, quiet=quiet)
    if torchrun_env()["rank"] == 0:
        print(json.dumps({f"validation_{name}": value for name, value in final["validation"].items()}
                         | ({"unigram_perplexity": final["unigram_perplexity"]} if "unigram_perplexity" in final else {})))


def run_settings(recipe_file: Path | None, settings: dict, resume: bool, auto_resume: bool, overwrite: bool
                 ) -> tuple[Config, bool, bool]:
    """The run's settings (defaults < recipe < flags, or the saved run's on --resume), and whether to resume or
    overwrite (decided from the run directory with --auto-resume)."""
    from .checkpoint import restartable
    from .train import settings_for

    recipe = read_recipe(recipe_file) if recipe_file else {}
    if auto_resume:
        resume, overwrite = restartable(Path({**recipe, **settings}.get("output_dir", Config.output_dir)))
    return settings_for(recipe, settings, resume), resume, overwrite


@app.command("eval")
def evaluate(
    model_dir: ModelDir = Path("runs/latest"),
    dataset: Annotated[Optional[str], typer.Option(
        help="Data to evaluate (Hub name, folder or file). Default: the run's own dataset.")] = None,
    dataset_config: Annotated[Optional[str], typer.Option(help="Hub dataset configuration.")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="Split to evaluate. Default: the run's test split, else its validation split. A single data "
             "file is evaluated whole.")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Text column. Default: the run's, else detected.")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column. Default: the run's, else detected.")] = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    threads: Threads = 0,
    quantize: Quantize = False,
    backend: Backend = "auto",
    as_json: Json = False,
    debug: Debug = False,
):
    """Accuracy, macro-F1, per-class scores and the confusion matrix of a trained run on a dataset."""
    from .evaluate import evaluate_run
    from .terminal import print_metrics

    result = evaluate_run(model_dir, dataset=dataset, dataset_config=dataset_config, split=split,
                          text_column=text_column, label_column=label_column, batch_size=batch_size,
                          device=device, threads=threads, quantize=quantize, backend=backend)
    if as_json:
        print(json.dumps(result))
    else:
        print_metrics(result, f"{result['dataset']} [{result['split']}]")


@app.command()
def predict(
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to label; '-' reads lines from stdin.")] = None,
    file: Annotated[Optional[str], typer.Option(
        help="Read texts from a file: one per line, or a csv/tsv/json/jsonl/parquet file's text column; "
             "'-' for stdin.")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Text column of a structured --file.")] = None,
    model_dir: ModelDir = Path("runs/latest"),
    batch_size: BatchSize = 256,
    device: Device = "auto",
    threads: Threads = 0,
    quantize: Quantize = False,
    backend: Backend = "auto",
    as_json: Json = False,
    explain: Annotated[bool, typer.Option("--explain", help=(
        "Show which tokens carried each label, by leave-one-out occlusion: a token's score is the drop in "
        "the predicted label's probability when it is left out (green/positive: toward the label, red/"
        "negative: against). One batched forward pass per text, in fp32. With --json: an 'explanation' list "
        "of {token, score, start, end} in text order."))] = False,
    debug: Debug = False,
):
    """Label texts: one line per text with the label and its probability (--json: every class's)."""
    from .predict import Predictor, input_chunks

    chunks = input_chunks(texts or [], file, text_column)
    first = next(chunks, None)  # read input before loading the model, so bad input fails fast
    predictor = Predictor.load(model_dir, backend=backend, device=device, threads=threads, batch_size=batch_size,
                               quantize=quantize, precision="fp32" if explain else None)
    if explain:
        from .explain import explain_stream, print_explanations

        explanations = explain_stream(predictor, itertools.chain([first], chunks))
        if not as_json:
            return print_explanations(explanations)
        for e in explanations:
            print(json.dumps(dict(dataclasses.asdict(e.prediction), explanation=e.as_json()), ensure_ascii=False))
        return
    for p in predictor.predict_stream(itertools.chain([first], chunks)):
        if as_json:
            print(json.dumps(dataclasses.asdict(p), ensure_ascii=False))
        else:
            print(f"{p.label}\t{p.probability:.4f}\t{' '.join(p.text.split())}")


@app.command()
def report(
    model_dir: ModelDir = Path("runs/latest"),
    output: Annotated[Optional[Path], typer.Option(
        help="HTML file to write. Default: report.html in the run directory.")] = None,
    png: Annotated[Optional[Path], typer.Option(
        help="Also write each figure as a PNG file into this directory.")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        help="Data whose confusion matrix and mistakes are shown (Hub name, folder or file). Default: the "
             "run's own.")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="Split of that data to score. Default: the one lstmcli eval scores (the test split, else the "
             "run's validation data).")] = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    threads: Threads = 0,
    debug: Debug = False,
):
    """One self-contained HTML page about a run: learning curves, confusion matrix, per-class scores, the
    most confident mistakes, settings and data. Works while the run is still training."""
    from .report import write_report

    path = write_report(model_dir, output=output, png_dir=png, dataset=dataset, split=split, batch_size=batch_size,
                        device=device, threads=threads)
    print(path)


@app.command()
def export(
    model_dir: ModelDir = Path("runs/latest"),
    quantize: Annotated[bool, typer.Option(
        "--quantize", help="Also write model.int8.onnx (dynamic int8 LSTM and classifier weights: DynamicQuantizeLSTM), "
                           "and report its accuracy change on the run's validation data.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace model.onnx files that are not this run's "
                                                                "recorded exports.")] = False,
    threads: Threads = 0,
    debug: Debug = False,
):
    """Write the run's model as ONNX (model.onnx in the run directory), checked against torch, for
    torch-free predict, eval and serve."""
    from .export import export_run

    summary = export_run(model_dir, quantize=quantize, overwrite=overwrite, threads=threads)
    for name, size in summary["files"].items():
        print(f"wrote {model_dir / name} ({size / 1e6:.1f} MB)")
    print(f"parity with torch: largest probability difference {summary['max_probability_difference']:.1e}")
    accuracy = summary.get("validation_accuracy")
    if accuracy and "error" in accuracy:
        print(f"int8 accuracy {accuracy['error']}")
    elif accuracy:
        print(f"int8 on {accuracy['split']} ({accuracy['examples']:,} texts): accuracy {accuracy['int8']:.4f}, fp32 "
              f"{accuracy['fp32']:.4f} ({accuracy['change_points']:+.2f} points)")


@app.command()
def serve(
    model_dir: ModelDir = Path("runs/latest"),
    host: Annotated[str, typer.Option(help="Address to listen on. The default answers this machine only; "
                                           "put a reverse proxy in front to publish it (README).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535,
                                      help="Port (0: any free port; the start line names it).")] = 8000,
    backend: Backend = "auto",
    quantize: Quantize = False,
    threads: Threads = 0,
    batch_texts: Annotated[int, typer.Option(min=1, help="Most texts gathered from concurrent requests into one "
                                                         "model call. Small batches let the model compute while "
                                                         "the HTTP work of the next ones goes on.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long the first request of a batch waits for "
                                                             "others (ms).")] = 5.0,
    max_texts: Annotated[int, typer.Option(min=1, help="Most texts in one request (more: 413).")] = 256,
    max_bytes: Annotated[int, typer.Option(min=1, help="Largest request body in bytes (larger: 413).")] = 1_000_000,
    max_characters: Annotated[int, typer.Option(min=1, help="Longest text in characters (longer: 413).")] = 100_000,
    root_path: Annotated[str, typer.Option(help="URL prefix a reverse proxy serves this under (e.g. /sentiment), "
                                                "for links and /docs.")] = "",
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (costs throughput).")] = False,
    debug: Debug = False,
):
    """Serve the run over HTTP: POST /predict {"texts": [...]}, GET /health, docs at /docs."""
    from .serve import Limits, serve as run_server

    run_server(model_dir, host=host, port=port, backend=backend, quantize=quantize, threads=threads,
               limits=Limits(max_texts, max_bytes, max_characters), batch_size=batch_texts, wait_ms=batch_wait_ms,
               root_path=root_path, access_log=access_log, announce=lambda line: print(line, flush=True))


@app.command()
@with_settings(without=NOT_TUNABLE)
def tune(
    settings: dict,
    budget: Annotated[str, typer.Option(
        help="Wall-clock time for the whole search, e.g. 90s, 5m, 1h; the training loop stops at it.")] = "10m",
    output_dir: Annotated[Path, typer.Option(
        help="Directory for the study (study.db), the best run (best/), recipe.toml and trials.csv.")]
    = Path("runs/tuned"),
    config: Recipe = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the search in --output-dir with new trials "
                                                          "(its settings stay as they were).")] = False,
    quiet: Quiet = False,
    debug: Debug = False,
):
    """Search the settings that suit a dataset within --budget (Optuna: TPE sampler, percentile pruner; trial 0 trains
    the defaults). The flags given here stay fixed for every trial. Keeps the best trial's run in
    OUTPUT_DIR/best and its settings in OUTPUT_DIR/recipe.toml."""
    import time

    started = time.monotonic()  # the budget counts from here, imports and data checks included
    from .tune import parse_budget
    from .tune import tune as run_search

    seconds = parse_budget(budget)
    recipe = read_recipe(config) if config else {}
    print(json.dumps(run_search({**recipe, **settings}, budget=seconds, output_dir=output_dir, resume=resume,
                                quiet=quiet, started=started)))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning errors into one line and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="lstmcli", standalone_mode=False)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except typer.Abort:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:
        if debug:
            raise
        command = next((a for a in argv if a in app_commands()), "")
        print(f"error: {e.format_message()} (see lstmcli {command} --help)".replace("  ", " "), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {e}. Rerun with --debug for the traceback, and please "
              "report it.", file=sys.stderr)
        return 1
    return 0


def app_commands() -> list[str]:
    return [c.name or c.callback.__name__ for c in app.registered_commands]


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
