"""`python edit.py` / `lightning-edit`: apply edits to a model and report metrics; `study`, `data` and `ask`
are subcommands. Everything a run needs is checked before the model is loaded."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence


from .atomic import check_new_directory
from .errors import ConfigError, DataError, LightningEditError
from .options import (_non_negative_int, _positive_int, add_device_options, add_threads_option, apply_threads, check_device,  # noqa: F401
                      check_output_path, parse_override, placement_args)

if TYPE_CHECKING:  # Ray is imported only with --ray
    from .study_ray import RayOptions

DEFAULT_METHOD = "rome"
SUBCOMMANDS_HELP = """subcommands (python edit.py SUBCOMMAND --help, or lightning-edit SUBCOMMAND --help):
  edit     (the default) apply edits and report: the options above
  study    run a study configuration (configs/study/) and write its tables and figures
  train    train a learnt editor (MEND, MALMEN, KE, SERAC), as python train.py: train mend smollm2-135m --print_config
  data     fetch and verify the benchmark data sets: data get zsre|counterfact|knowedit|mquake|known_1000|wikitext
  ask      greedy answers of a model, a saved edited model, or a model plus an edit, before and after
  stats    second-moment statistics of layers (ROME/MEMIT/AlphaEdit cache), over K processes: stats --layers 5 --devices 2
  capability  general capability (held-out perplexity, known facts, any lm-eval task) of a model or a --save
           directory, beside the unedited model: capability MODEL_OR_DIR --tasks local-perplexity,known-facts
  trace    causal tracing (heatmaps, CSV) and the layers it suggests for ROME/MEMIT: trace --model M --data counterfact --n 10

request files (--data FILE.json): a JSON list of records, each
  {"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English", "target_true": "French",
   "subject": "Danielle Darrieux", "rephrase_prompts": ["Danielle Darrieux grew up speaking"],
   "locality": [{"prompt": "The capital of Italy is", "answer": "Rome", "kind": "neighborhood"}],
   "portability": [{"prompt": "...", "answer": "...", "kind": "one_hop"}]}
  (prompt and target_new required; subject for ROME/MEMIT/AlphaEdit/KN; ZsRE, CounterFact, KnowEdit and MQuAKE
  files are read as they are).
"""


def build_parser() -> argparse.ArgumentParser:
    from .editors import EDITORS

    p = argparse.ArgumentParser(prog="edit.py", description="Edit facts in a language model and measure the edit.",
                                epilog=SUBCOMMANDS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"editing method: {', '.join(sorted(EDITORS))} (default %(default)s)")
    p.add_argument("--model", default="smollm2-135m", help="registered model name, hub id, local HF directory or a --save directory (default %(default)s)")
    p.add_argument("--data", default="demo", help="dataset name (demo, zsre, counterfact, knowedit-*, mquake, ...) or request JSON file (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder of benchmark data (default $LIGHTNING_EDIT_DATA, else ../shared/data beside a checkout, else ~/.cache/lightning-edit/data); fill it with 'data get'")
    p.add_argument("--n", type=_positive_int, default=None, help="number of requests (default: all)")
    p.add_argument("--offset", type=_non_negative_int, default=0, help="skip this many records first")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="requests per edit call (batch protocol when > 1; "
                                                                        "with --sequential: sequential batches)")
    p.add_argument("--sequential", action="store_true", help="keep every edit (or batch) and score all after the last (sequential protocol)")
    p.add_argument("--eval-every", type=_non_negative_int, default=0, metavar="K",
                   help="with --sequential: score the requests edited so far every K requests (both readings: retained "
                        "and immediate), a curve in the report and, with --output, a figure beside it")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="with --sequential: write the edited state (touched weights, patches, the loop's position) "
                        "into DIR every --checkpoint-every edit calls and on Ctrl-C")
    p.add_argument("--checkpoint-every", type=_positive_int, default=100, metavar="N",
                   help="edit calls between checkpoints (default %(default)s)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="with --sequential: go on from the newest checkpoint in DIR (same model, method, "
                        "hyperparameters, records and batch size), checkpointing into DIR")
    p.add_argument("--multihop", action="store_true", help="MQuAKE multi-hop protocol: apply all edits of each case together, "
                                                           "score its multi-hop questions (any answered counts), undo (--data mquake)")
    p.add_argument("--zero-shot", action="store_true", help="with --multihop: ask the questions without in-context demonstrations")
    p.add_argument("--output", default=None, help="write the JSON report here (its folder is created if missing)")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.add_argument("--save", default=None, help="save the edited model that was scored (safetensors HF directory, patches, edits.json, manifest.json); "
                                                "needs --sequential or a single edit call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="where dequantized models, statistics and IKE embeddings are cached (default $LIGHTNING_EDIT_CACHE or checkpoints/)")
    add_device_options(p)
    p.add_argument("--dtype", default="float32", help="dtype the model is loaded in: float32, bfloat16 or float16 "
                                                      "(default %(default)s; float16 is slow on a CPU)")
    add_threads_option(p)
    p.add_argument("--editor", default=None, help="trained editor: checkpoint directory or hub id user/repo (learnt methods)")
    p.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="override a hyperparameter of configs/<method>/ (repeatable; values are YAML: 2.0, true, [4, 5])")
    p.add_argument("--no-fluency", action="store_true", help="skip greedy generations for the fluency score (and the answers shown)")
    p.add_argument("--fluency-tokens", type=_positive_int, default=40, help="tokens generated per prompt for the fluency score (default %(default)s)")
    p.add_argument("--generate", type=_non_negative_int, default=0, metavar="N",
                   help="show the greedy continuation (N tokens) of each edit prompt and rephrase, before and after")
    p.add_argument("--no-pre-cache", action="store_true", help="compute the pre-edit scores and generations afresh "
                                                               "instead of reusing (and storing) them in <cache>/pre_edit")
    add_capability_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="print the Python traceback of an error")
    return p


def add_capability_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capability-every", type=_positive_int, default=None, metavar="K",
                   help="with --sequential: general capability before the first edit, every K edits and after the "
                        "last, "
                        "and the number of edits at which it first fell by 5%% (evaluation/capability.py)")
    p.add_argument("--capability-tasks", default="local-perplexity,known-facts",
                   help="tasks of --capability-every: local-perplexity, known-facts, or lm-eval task names "
                        "(default %(default)s)")
    p.add_argument("--capability-limit", type=_positive_int, default=50,
                   help="per task: perplexity windows, known facts, or lm-eval documents (default %(default)s)")
    p.add_argument("--include-path", default=None,
                   help="a folder of your own lm-eval task YAMLs (lm-eval's --include_path)")


def capability_curve(args: argparse.Namespace):
    """The --capability-every hook of a sequential run, its tasks checked before any model loads; None without it."""
    if args.capability_every is None:
        return None
    from .evaluation.capability import CapabilityCurve, check_tasks, parse_tasks

    if not args.sequential:
        raise ConfigError("--capability-every is an option of --sequential (capability as the edits accumulate); "
                          "add --sequential, or run 'lightning-edit capability' on a --save directory")
    tasks = parse_tasks(args.capability_tasks, "--capability-tasks")
    check_tasks(tasks, args.include_path, args.data_dir, "--capability-tasks")
    return CapabilityCurve(tasks, args.capability_every, limit=args.capability_limit, data_dir=args.data_dir,
                           include_path=args.include_path)


def build_study_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edit.py study", description="Run a study configuration (configs/study/) and write its tables and figures.")
    p.add_argument("--config", default="quick", help="study name in configs/study/ or a YAML path (default %(default)s)")
    p.add_argument("--quick", action="store_const", const="quick", dest="config", help="same as --config quick")
    p.add_argument("--model", default=None, help="override the configuration's model (e.g. gemma3-270m)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the configuration's methods")
    p.add_argument("--results-dir", default=None, help="output folder (default results/<config>-<model>)")
    p.add_argument("--data-dir", default=None)
    add_device_options(p, "cpu, cuda or cuda:N: where the model is loaded and every cell computed")
    p.add_argument("--tables-only", action="store_true",
                   help="write tables and figures from the cells already computed; compute none (a study still running)")
    add_threads_option(p)
    ray = p.add_argument_group("Ray (pip install 'lightning-edit[ray]'; docs/guides/cluster.md)")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="make the cells on Ray workers: alone, a local Ray; 'auto' or HOST:PORT, a running cluster")
    ray.add_argument("--ray-workers", type=int, default=None, metavar="N",
                     help="workers (each loads the model once and makes one cell at a time; default 2); "
                          "--threads is each worker's CPUs and torch threads (default 1)")
    ray.add_argument("--gpus-per-cell", type=float, default=None, metavar="G",
                     help="GPUs each worker declares (with --device cuda; a fraction shares a GPU; default 0)")
    ray.add_argument("--memory-per-worker", type=float, default=None, metavar="GIB",
                     help="memory (GiB) each worker declares to Ray's scheduler")
    ray.add_argument("--ray-retries", type=int, default=None, metavar="K",
                     help="times a cell whose worker died is handed to another worker (default 2)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="print the Python traceback of an error")
    return p


def run_study(argv: Sequence[str]) -> int:
    from .evaluation.study import StudyConfig, safe_folder_name
    from .study_runner import Study
    from .models.device_map import Placement
    from .preflight import check_study

    args = build_study_parser().parse_args(argv)
    ray_options = _ray_options(args)  # --ray refused (Ray missing, bad numbers) before anything is read or loaded
    apply_threads(args.threads)
    whole = config = StudyConfig.load(args.config, model=args.model)
    if args.methods is not None:  # "--methods ," or "--methods ''" names no method: refused, not an empty study
        config = dataclasses.replace(whole, methods=[m.strip() for m in args.methods.split(",") if m.strip()])
        config.check("--methods")
    # the shared preflight, for every method of the study; on Ray the device is the workers', not this node's
    check_study(config, "cpu" if ray_options else args.device)
    if config.sequential_capability_every:  # lm-eval installed, the known facts on disk: before any cell
        from .evaluation.capability import check_tasks

        check_tasks(config.capability_tasks, data_dir=args.data_dir, flag="capability_tasks (of the study)")
    Placement.from_flags(**placement_args(args), device=args.device)  # --device-map and its flags, before any cell
    # the default folder is one folder under results/ whatever the model is called (a hub id, a path)
    results = Path(args.results_dir or f"results/{config.name}-{safe_folder_name(config.model)}")
    if ray_options:
        if any(placement_args(args).values()):
            raise ConfigError("--device-map, --max-memory and --offload-folder apply to a study in this process; with "
                              "--ray each worker loads the model whole (leave them out, or leave out --ray)")
        from .study_ray import RayStudy

        tables = RayStudy(config, results, ray_options, data_dir=args.data_dir, progress=not args.quiet,
                          device=args.device, whole=whole).run()
    else:
        tables = Study(config, results, data_dir=args.data_dir, progress=not args.quiet, compute=not args.tables_only,
                       device=args.device, placement=placement_args(args), whole=whole).run()
    # Processes per method share a folder: its tables are every finished cell of the study. Not after --ray, whose
    # driver never loads the model (a cell's key needs it): there `--tables-only` does it where the model fits.
    if config is not whole and not ray_options:
        tables = Study(whole, results, data_dir=args.data_dir, progress=False, compute=False, device=args.device,
                       placement=placement_args(args)).run()
    for name, md in tables.items():
        print(f"\n## {name}\n{md}")
    print(f"\nresults in {results}/ (README.md, *.csv, *.md, *.png, results.json)")
    return 0


def _ray_options(args: argparse.Namespace) -> Optional["RayOptions"]:
    """The ``RayOptions`` of ``--ray`` and its flags, checked (Ray importable, numbers in range); None without it."""
    flags = {"--ray-workers": args.ray_workers, "--gpus-per-cell": args.gpus_per_cell,
             "--memory-per-worker": args.memory_per_worker, "--ray-retries": args.ray_retries}
    if args.ray is None:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --ray; add --ray (a local Ray) or --ray auto")
        return None
    if args.tables_only:
        raise ConfigError("--tables-only computes no cell, so --ray has nothing to run; drop one of them")
    from .study_ray import RayOptions, require_ray

    options = RayOptions(address=None if args.ray == "local" else args.ray, workers=_or(args.ray_workers, 2),
                         threads=_or(args.threads, 1), gpus_per_cell=_or(args.gpus_per_cell, 0.0),
                         memory_gb=args.memory_per_worker, max_retries=_or(args.ray_retries, 2))
    options.check(args.device)
    require_ray()
    return options


def _or(value: object, default: object) -> object:
    return default if value is None else value


def _run_data(argv: Sequence[str]) -> int:
    from .data.fetch import main as data_main

    return data_main(list(argv))


def _run_stats(argv: Sequence[str]) -> int:
    from .stats.cli import main as stats_main

    return stats_main(list(argv))


def _run_train(argv: Sequence[str]) -> int:
    from .training.cli import main as train_main

    return train_main(list(argv))


def _run_ask(argv: Sequence[str]) -> int:
    from .ask import main as ask_main

    return ask_main(list(argv))


def _run_capability(argv: Sequence[str]) -> int:
    from .capability_cli import main as capability_main

    return capability_main(list(argv))


def _run_trace(argv: Sequence[str]) -> int:
    from .causal_trace import main as trace_main

    return trace_main(list(argv))


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"study": run_study, "train": _run_train, "data": _run_data, "ask": _run_ask,
                                                           "stats": _run_stats, "trace": _run_trace,
                                                           "capability": _run_capability}


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[0]](argv[1:])
        if argv and argv[0] == "edit":
            argv = argv[1:]
        return run(build_parser().parse_args(argv))
    except LightningEditError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if argv and argv[0] in SUBCOMMANDS:  # study cells, trace records, data files: each written whole or not at all
            print(f"interrupted; what {argv[0]} finished before is on disk, nothing half-written is left", file=sys.stderr)
            return 130
        note = getattr(err, "note", None) or "nothing was saved"
        print(f"interrupted; every edit made so far was undone in memory, {note}", file=sys.stderr)
        return 130


def preflight(args: argparse.Namespace, n_requests: int):
    """Everything checked before the model loads: the outputs, then the shared preflight of the run (device, dtype,
    model, the method and its hyperparameters merged once: ``runner.Run``), then what --save can honestly save.
    Returns the run."""
    from .editors import get_editor_class
    from .runner import Run, RunSpec

    check_output_path("--output", args.output, directory=False)
    check_output_path("--save", args.save, directory=True)
    if args.save:
        check_new_directory(Path(args.save), "--save")  # a symlink too: the saved folder is never written through one
    edit_run = Run(RunSpec.from_args(args))
    if args.save:
        cls = get_editor_class(args.method)
        if cls.cannot_save:
            raise ConfigError(f"--save: {args.method}'s edited model cannot be saved: {cls.cannot_save}")
        calls = n_requests if not args.sequential and args.batch_size == 1 else -(-n_requests // args.batch_size)
        if not args.sequential and calls > 1:
            raise ConfigError(f"--save: this run edits {n_requests} requests as {calls} separate edits, each scored alone and "
                              "undone, so there is no one edited model to save. Add --sequential (keep every edit, score "
                              f"all after the last) or --batch-size {n_requests} (one batch), or --n 1")
    return edit_run


def checkpointing_of(args: argparse.Namespace):
    """The checkpoints a sequential run writes or resumes (None: none), after checking the flags that ask for them."""
    from .evaluation.lifelong import Checkpointing, check_checkpoint_folder

    asked = [flag for flag, value in (("--eval-every", args.eval_every), ("--checkpoint-dir", args.checkpoint_dir),
                                      ("--resume", args.resume)) if value]
    if asked and (not args.sequential or args.multihop):
        raise ConfigError(f"{asked[0]} is an option of --sequential (a sequence of kept edits); add --sequential")
    if args.resume and args.checkpoint_dir and Path(args.resume) != Path(args.checkpoint_dir):
        raise ConfigError(f"--resume {args.resume} and --checkpoint-dir {args.checkpoint_dir}: a resumed run goes on "
                          "checkpointing into the folder it resumes; give only --resume")
    folder = args.resume or args.checkpoint_dir
    if folder is None:
        return None
    checkpointing = Checkpointing(Path(folder), every=args.checkpoint_every, resume=bool(args.resume))
    check_checkpoint_folder(checkpointing)  # before the model loads
    return checkpointing


def run(args: argparse.Namespace) -> int:
    if args.zero_shot and not args.multihop:
        raise ConfigError("--zero-shot is an option of --multihop (ask the multi-hop questions without demonstrations)")
    checkpointing = checkpointing_of(args)
    if args.multihop:
        from .multihop_cli import run_multihop

        return run_multihop(args)
    from transformers import set_seed

    from .data import load_requests
    from .data.rome_references import load_rome_references, needs_references
    from .editors.delta import undo_all
    from .evaluation import default_pre_cache, format_table, verdict

    apply_threads(args.threads)
    set_seed(args.seed)  # Python, NumPy and torch (every device), as Lightning's seed_everything
    protocol = "sequential" if args.sequential else ("batch" if args.batch_size > 1 else "single")
    requests = load_requests(args.data, n=args.n, data_dir=args.data_dir, offset=args.offset)
    if not requests:
        raise DataError(f"--data {args.data}: no request to edit (--offset {args.offset} is past the end, or every record "
                        "was skipped: the warnings above say why, e.g. an empty 'prompt' or 'target_new')")
    # ROME's CounterFact: its generations are scored for consistency too; the references are read before the model
    references = load_rome_references(args.data_dir) if not args.no_fluency and needs_references(requests) else None
    run_ = preflight(args, len(requests))
    curve = capability_curve(args)
    loaded = run_.load()
    if len(loaded.patches):  # a --save directory: its edits are on the model before this run's
        print(f"{args.model}: re-attached the saved patches {loaded.patches.keys()} (verified against its manifest)")
    run_.check(requests)  # what needs the tokenizer: control-token text, prompts longer than the context
    editor = run_.editor()
    report = run_.evaluate(requests, editor, protocol=protocol, batch_size=args.batch_size, fluency=not args.no_fluency,
                           fluency_tokens=args.fluency_tokens, progress=not args.quiet, keep_edits=bool(args.save),
                           generate_tokens=args.generate, eval_every=args.eval_every, checkpointing=checkpointing,
                           references=references, capability=curve,
                           pre_cache=None if args.no_pre_cache else default_pre_cache(args.cache_dir))
    try:
        result = report.to_json()
        result["config"].update({"data": args.data, "seed": args.seed, "offset": args.offset})
        print(format_table(report, answers=not args.no_fluency or args.generate > 0))
        print(f"\n{report.method} on {report.model}, {report.n} requests, {report.protocol} protocol: {verdict(report)}")
        if report.protocol == "sequential":
            print(readings_line(report))
        if curve is not None:
            result["capability"] = curve.to_json()
            print(f"\ngeneral capability as the edits accumulated:\n{curve.summary()}")
        if args.json:
            print(json.dumps(result["summary"], indent=2))
        write_outputs(args, result, lambda: save_edited(loaded, editor, report, Path(args.save)))
        if report.curve and args.output:
            from .evaluation.lifelong import write_curve_figure

            figure = write_curve_figure(report.curve, Path(args.output).with_suffix(".curve.png"),
                                        f"{report.method} on {report.model}: {report.n} sequential edits")
            print(f"curve of both readings every {args.eval_every} edits: {figure}")
    finally:
        undo_all(report.kept_deltas, loaded)
    return 0


def readings_line(report) -> str:
    """The two readings of a sequential run side by side, named."""
    keys = [k for k in ("reliability", "generalization", "locality") if k in report.post]
    def fmt(values: dict) -> str:
        return ", ".join(f"{k} {values[k]:.2f}" for k in keys if k in values)
    return (f"retained (all scored after the last edit): {fmt(report.post)}; immediate (each scored right after its "
            f"own edit): {fmt(report.immediate)}; locality against the unedited model")


class WritingInterrupted(KeyboardInterrupt):
    """Ctrl-C while the outputs were written; ``note`` says which were written and which were not."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


def write_outputs(args: argparse.Namespace, result: dict, save: Callable[[], None]) -> None:
    """``--output`` then ``--save``, each atomic (nothing half-written under its name). A failure of one does not
    skip the other; the error (or the interrupt) says exactly what was written and what was not."""
    from .atomic import atomic_write_text

    written: list[str] = []
    failed: list[str] = []
    todo = [f"--output {args.output} (the report)"] * bool(args.output) + [f"--save {args.save} (the edited model)"] * bool(args.save)
    try:
        if args.output:
            try:
                atomic_write_text(args.output, json.dumps(result, indent=2, default=str))
                written.append(todo.pop(0))
                print(f"report written to {args.output}")
            except OSError as err:
                failed.append(f"--output {args.output}: the report was not written ({err.strerror or err}); "
                              "give a file in a folder you can write to")
                todo.pop(0)
        if args.save:
            try:
                save()
                written.append(todo.pop(0))
                print(f"edited model saved to {args.save} (the model scored above: {result['config']['scored']})")
            except (LightningEditError, OSError) as err:
                reason = err if isinstance(err, LightningEditError) else f"--save {args.save}: {err.strerror or err}"
                failed.append(f"{reason}; the edited model was not saved (nothing was left under {args.save})")
                todo.pop(0)
    except KeyboardInterrupt:
        raise WritingInterrupted(f"written: {', '.join(written) or 'nothing'}; not written: {', '.join(todo)} "
                                 "(nothing half-written is left under its name)") from None
    if failed:
        raise ConfigError("; ".join(failed) + f" (written: {', '.join(written) or 'nothing'})")


def save_edited(loaded, editor, report, directory: Path) -> None:
    """Save the model exactly as scored (its edits are still applied, patches included) with a record of edits and
    scores and a manifest over every file (models/saving.py)."""
    from .models.saving import save_edited_model

    base_weights: dict = {}
    for delta in reversed(report.kept_deltas):  # the earliest edit's "before" is the base model's tensor
        base_weights.update(delta.weights_before)
    requests = [r for d in report.kept_deltas for r in d.requests]
    save_edited_model(loaded, directory, method=editor.name, requests=requests,
                      base_fingerprint=loaded.weights_fingerprint(replace=base_weights), record={
        "method": editor.name, "base_model": loaded.name, "hparams": editor.hparams.to_dict(),
        "protocol": report.protocol, "scored": report.config.get("scored"), "summary": report.post,
        "edits": [{"seconds": seconds, "requests": [r.to_dict() for r in requests]}
                  for d in report.kept_deltas for seconds, requests in d.edit_calls()],
    })
