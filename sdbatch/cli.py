"""``sdbatch``: run, validate, plan, schema, inspect, reproduce, verify, prune.

Exit codes: 0 all done, 1 some jobs failed (the rest finished), 2 invalid recipe or usage, 130 interrupted,
143 terminated (SIGTERM), 129 hung up (SIGHUP).
``validate``, ``plan`` and ``schema`` never import torch or diffusers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError  # noqa: F401


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdbatch", description="Declarative batch renderer for Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", help="the recipe YAML file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. defaults.steps=10 or stages.sketch.prompt='a cat'")
        p.add_argument("--max-jobs", type=_positive, default=None, metavar="N",
                       help="refuse a recipe of more than N jobs (default 100,000)")

    run = sub.add_parser("run", help="render a recipe (resumes: renders only what is missing)")
    recipe_args(run)
    run.add_argument("--out", type=Path, help="output folder (default: outputs/<name> at the recipe's project root: "
                     "the nearest folder above it holding .git, else its own folder; outputs/<name>-rehearsal "
                     "with --rehearse)")
    run.add_argument("--rehearse", action="store_true",
                     help="tiny built-in models, CPU float32, <=64 px, few steps: prove the recipe in seconds")
    run.add_argument("--force", action="store_true", help="re-render every job")
    run.add_argument("--only", action="append", default=[], metavar="STAGE",
                     help="render only this stage (and whatever upstream outputs it still lacks); repeatable")
    run.add_argument("--executor", choices=["local", "ray"], help="override the recipe's executor")
    run.add_argument("--workers", type=int, help="ray: number of workers (default: one per GPU, else CPUs)")
    run.add_argument("--num-gpus", type=_amount, metavar="G", help="ray: GPUs per worker (default: recipe's ray.num_gpus, "
                     "else 1 on a cluster with GPUs, else 0)")
    run.add_argument("--num-cpus", type=_amount, metavar="C", help="ray: CPUs per worker (default: recipe's "
                     "ray.num_cpus, else 1)")
    run.add_argument("--worker-timeout", type=_seconds, metavar="SECONDS", help="ray: stop (exit 1) after this long "
                     "without a live worker, e.g. every node lost (default 300)")

    validate = sub.add_parser("validate", help="check a recipe and count its jobs (no rendering)")
    recipe_args(validate)

    plan = sub.add_parser("plan", help="list the jobs with done/pending status")
    recipe_args(plan)
    plan.add_argument("--out", type=Path, help="output folder (default: as for run)")
    plan.add_argument("--rehearse", action="store_true", help="plan the rehearsal instead")
    plan.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("schema", help="print the recipe JSON Schema (draft 2020-12)")

    inspect = sub.add_parser("inspect", help="show how an output was made")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the whole record as JSON")

    reproduce = sub.add_parser("reproduce", help="re-render one output from its own metadata and compare")
    reproduce.add_argument("file", type=Path)
    reproduce.add_argument("--out", type=Path, help="the only folder it writes the re-rendered files to "
                           "(default: a fresh temp folder, named in the result line)")

    verify = sub.add_parser("verify", help="hash every recorded output against the manifest (exit 1 on a difference)")
    verify.add_argument("recipe", nargs="?", help="the recipe YAML file (names the default output folder)")
    verify.add_argument("--out", type=Path, help="output folder (default: outputs/<name> of the recipe)")
    verify.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value (as for run)")

    prune = sub.add_parser("prune", help="delete the outputs of jobs the recipe no longer has (--dry-run: list them)")
    recipe_args(prune)
    prune.add_argument("--out", type=Path, help="output folder (default: as for run)")
    prune.add_argument("--rehearse", action="store_true", help="prune the rehearsal's folder against its plan")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    return parser


def _amount(text: str, positive: bool = False) -> float:
    """A finite number, at least 0 (``positive``: above 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be {'above' if positive else 'at least'} 0, got {text}")
    return value


def _seconds(text: str) -> float:
    return _amount(text, positive=True)


def _positive(text: str) -> int:
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _load(args: argparse.Namespace, check_files: bool = True) -> Any:
    from .config.recipe import load_recipe
    from .errors import RecipeError

    try:
        return load_recipe(args.recipe, args.overrides, check_files=check_files, out_dir=getattr(args, "out", None),
                           max_jobs=getattr(args, "max_jobs", None))
    except RecipeError as exc:
        raise UsageError(str(exc)) from None


def _out_dir(args: argparse.Namespace, loaded: Any) -> Path:
    """``--out`` (relative to the current directory), else :func:`default_out_dir`."""
    out = getattr(args, "out", None)
    if out:
        return out
    from .io.outdir import default_out_dir

    return default_out_dir(args.recipe, loaded.recipe.name, rehearse=bool(getattr(args, "rehearse", False)))


def _plan(loaded: Any, out_dir: Path, rehearse: bool, seeds: Any = None) -> Any:
    from .core.plan import build_plan
    from .errors import RecipeError

    try:  # seeds: the random seeds (-1) of an earlier plan of this run (default: those stored in out_dir)
        return build_plan(loaded, out_dir, rehearse=rehearse, seeds=seeds)
    except RecipeError as exc:
        raise UsageError(str(exc)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load(args)
    plan = _plan(loaded, _out_dir(args, loaded), rehearse=False)
    counts = plan.counts()
    detail = ", ".join(f"{name}: {n}" for name, n in counts.items())
    print(f"{args.recipe}: OK: {len(counts)} stage(s), {len(plan.jobs)} job(s) ({detail})")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from .io.manifest import MANIFEST_NAME, Manifest
    from .runtime.outputs import check_outputs

    loaded = _load(args)
    out_dir = _out_dir(args, loaded)
    plan = _plan(loaded, out_dir, rehearse=args.rehearse)
    check = check_outputs(plan, Manifest(out_dir / MANIFEST_NAME).outputs_by_job())  # missing/changed: pending
    done = check.done
    if args.json:
        from .core.record import plan_entries

        jobs = plan_entries(plan.jobs, done)  # = job.to_json(status) of each, faster for 100,000 jobs
        for entry in jobs:
            if entry["job_id"] not in done and check.status(entry["job_id"])[1]:
                entry["reason"] = check.status(entry["job_id"])[1]  # the recorded output is missing or changed
            if entry["job_id"] in plan.random_seeds:  # a seed: -1, stored in out_dir or drawn for this plan only
                entry["random_seed"] = plan.random_seeds[entry["job_id"]]
        # json.dumps uses the C encoder; json.dump to a stream does not
        sys.stdout.write(json.dumps({"recipe": str(args.recipe), "out": str(out_dir), "jobs": jobs},
                                    ensure_ascii=False) + "\n")
        return EXIT_OK
    for job in plan.jobs:
        status, why = check.status(job.job_id)
        note = f"  (output {why} since recorded)" if why else ""
        seed = f"{job.seed} (random, {plan.random_seeds[job.job_id]})" if job.job_id in plan.random_seeds else job.seed
        print(f"{status:8} {job.job_id[:8]}  {job.output}  seed={seed}  {json.dumps(job.params_json())}{note}")
    pending = sum(job.job_id not in done for job in plan.jobs)
    print(f"{len(plan.jobs)} job(s): {len(plan.jobs) - pending} done, {pending} pending -> {out_dir}")
    if "provisional" in plan.random_seeds.values():
        print("random seeds (-1) marked provisional are drawn for this plan only: the first run draws and stores "
              "its own (random-seeds.json in the output folder)")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .config.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args)
    stage_names = [s.name for s in loaded.recipe.stages]
    unknown = [name for name in args.only if name not in stage_names]
    if unknown:
        raise UsageError(f"--only {unknown[0]}: no such stage (stages: {', '.join(stage_names)})")
    out_dir = _out_dir(args, loaded)
    from .io.outdir import RunLock, check_out_dir

    check_out_dir(out_dir)  # a file, a read-only folder, an unwritable parent: exit 2 before any work
    plan = _plan(loaded, out_dir, rehearse=args.rehearse)
    executor = args.executor or loaded.recipe.executor
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError('the ray executor needs Ray: pip install -e ".[ray]"') from None
    plan = _fetch_models(loaded, plan, out_dir, args.rehearse)  # a model that cannot be had: nothing is created
    print(f"output: {out_dir.absolute()}", flush=True)
    with RunLock(out_dir):  # one run per output folder: a second one is refused at once
        if plan.seeds.commit():  # random seeds (-1) drawn now are stored; another run's stored first: theirs
            plan = _plan(loaded, out_dir, args.rehearse, plan.seeds)
        return _run_locked(args, loaded, plan, out_dir, executor)


def _run_locked(args: argparse.Namespace, loaded: Any, plan: Any, out_dir: Path, executor: str) -> int:
    from .runtime.progress import Reporter, resume_command
    from .runtime.runner import run_plan

    reporter = Reporter()
    options = {"workers": args.workers} if args.workers is not None else {}
    if executor == "ray":  # resources per worker: the flags win over the recipe's ray: {num_gpus, num_cpus}
        ray = loaded.recipe.ray
        options.update({"num_gpus": ray.num_gpus if args.num_gpus is None else args.num_gpus,
                        "num_cpus": ray.num_cpus if args.num_cpus is None else args.num_cpus,
                        "worker_timeout": args.worker_timeout})
    outcome = run_plan(loaded, plan, force=args.force, only=args.only, executor=executor,
                       executor_options=options, reporter=reporter)
    resume = resume_command(getattr(args, "argv", None))  # the same command, never repeating --force
    if outcome.error:  # stopped early (a full disk, the folder gone): one line says why
        reporter.say(outcome.error)
        reporter.summary(outcome, out_dir, resume)
        return outcome.exit_code
    try:
        from .reports.gallery import write_gallery

        write_gallery(out_dir, current=plan.index)  # other jobs' outputs: "older outputs"
    except Exception as exc:  # noqa: BLE001 - a gallery problem must not fail a finished run
        reporter.say(f"Warning: could not write {out_dir / 'index.html'}: {exc}")
    if outcome.interrupted:
        reporter.say("Interrupted: finished outputs are kept; the same command again (less --force) resumes")
    reporter.summary(outcome, out_dir, resume)
    return outcome.exit_code


#: aux models (``Job.aux_models`` keys) that are whole diffusers pipelines: fetched as a pipeline's files, not the repo
PIPELINE_AUX_MODELS = frozenset({"refiner", "upscaler"})


def _fetch_models(loaded: Any, plan: Any, out_dir: Path, rehearse: bool) -> Any:
    """Download hub models not yet cached (so job ids use their commit), then plan again."""
    missing = {job.model.id: (job.model, True) for job in plan.jobs
               if job.model.source == "hub" and not job.model.path}
    for job in plan.jobs:
        for key, aux in job.aux_models.items():
            if aux.source == "hub" and not aux.path:  # a second pipeline (refiner, sd-x4): its pipeline files only
                missing[aux.id] = (aux, key in PIPELINE_AUX_MODELS)
    if not missing:
        return plan
    from .errors import ModelUnavailable
    from .runtime.quiet import quiet_libraries
    from .sources.hub import fetch_hub_model

    quiet_libraries()
    for model, is_pipeline in missing.values():
        try:
            fetch_hub_model(model, pipeline=is_pipeline)
        except ModelUnavailable as exc:
            raise UsageError(f"error: {exc}") from None
    return _plan(loaded, out_dir, rehearse, plan.seeds)  # the same random seeds (-1) as the first plan


def cmd_inspect(args: argparse.Namespace) -> int:
    from .reports.inspect import inspect_output

    return inspect_output(args.file, as_json=args.json)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reports.reproduce import reproduce_output

    return reproduce_output(args.file, out=args.out)


def cmd_verify(args: argparse.Namespace) -> int:
    from .reports.verify import verify_outputs

    if args.out is None and args.recipe is None:
        raise UsageError("error: verify needs a recipe or --out DIR")
    out_dir = args.out if args.out is not None else _out_dir(args, _load(args, check_files=False))
    return verify_outputs(out_dir)


def cmd_prune(args: argparse.Namespace) -> int:
    from .reports.prune import prune_outputs

    loaded = _load(args)
    out_dir = _out_dir(args, loaded)
    plan = _plan(loaded, out_dir, rehearse=args.rehearse)  # a recipe that does not plan deletes nothing
    return prune_outputs(plan, out_dir, dry_run=args.dry_run)


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "schema": cmd_schema,
    "inspect": cmd_inspect,
    "reproduce": cmd_reproduce,
    "verify": cmd_verify,
    "prune": cmd_prune,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: run's summary says how to resume
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        if args.command == "run":
            from .runtime.progress import resume_command

            print(f"resume: {resume_command(args.argv)}", flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def entry() -> int:
    """The ``sdbatch`` command (and ``python -m sdbatch``): :func:`main`, then a quick exit."""
    from .runtime.shutdown import skip_exit_collection

    code = main()
    skip_exit_collection()
    return code


if __name__ == "__main__":
    sys.exit(entry())
