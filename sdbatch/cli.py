"""``sdbatch``: run, validate, plan, schema, inspect, reproduce, verify.

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
    return parser


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


def _plan(loaded: Any, out_dir: Path, rehearse: bool) -> Any:
    from .core.plan import build_plan
    from .errors import RecipeError

    try:
        return build_plan(loaded, out_dir, rehearse=rehearse)
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
        jobs = [job.to_json("done" if job.job_id in done else "pending") for job in plan.jobs]
        for entry in jobs:
            if entry["job_id"] not in done and check.status(entry["job_id"])[1]:
                entry["reason"] = check.status(entry["job_id"])[1]  # the recorded output is missing or changed
        # json.dumps uses the C encoder; json.dump to a stream does not
        sys.stdout.write(json.dumps({"recipe": str(args.recipe), "out": str(out_dir), "jobs": jobs},
                                    ensure_ascii=False) + "\n")
        return EXIT_OK
    for job in plan.jobs:
        status, why = check.status(job.job_id)
        note = f"  (output {why} since recorded)" if why else ""
        print(f"{status:8} {job.job_id[:8]}  {job.output}  seed={job.seed}  {json.dumps(job.params_json())}{note}")
    pending = sum(job.job_id not in done for job in plan.jobs)
    print(f"{len(plan.jobs)} job(s): {len(plan.jobs) - pending} done, {pending} pending -> {out_dir}")
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
        return _run_locked(args, loaded, plan, out_dir, executor)


def _run_locked(args: argparse.Namespace, loaded: Any, plan: Any, out_dir: Path, executor: str) -> int:
    from .runtime.progress import Reporter
    from .runtime.runner import run_plan

    reporter = Reporter()
    options = {"workers": args.workers} if args.workers is not None else {}
    outcome = run_plan(loaded, plan, force=args.force, only=args.only, executor=executor,
                       executor_options=options, reporter=reporter)
    if outcome.error:  # stopped early (a full disk, the folder gone): one line says why
        reporter.say(outcome.error)
        return outcome.exit_code
    try:
        from .reports.gallery import write_gallery

        write_gallery(out_dir)
    except Exception as exc:  # noqa: BLE001 - a gallery problem must not fail a finished run
        reporter.say(f"Warning: could not write {out_dir / 'index.html'}: {exc}")
    reporter.summary(outcome.stats, outcome.failures, out_dir)
    if outcome.interrupted:
        reporter.say("Interrupted: finished outputs are kept; run the same command again to resume")
    return outcome.exit_code


def _fetch_models(loaded: Any, plan: Any, out_dir: Path, rehearse: bool) -> Any:
    """Download hub models not yet cached (so job ids use their commit), then plan again."""
    missing = {job.model.id: (job.model, True) for job in plan.jobs
               if job.model.source == "hub" and not job.model.path}
    for job in plan.jobs:
        for aux in job.aux_models.values():
            if aux.source == "hub" and not aux.path:
                missing[aux.id] = (aux, False)
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
    return _plan(loaded, out_dir, rehearse)


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


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "schema": cmd_schema,
    "inspect": cmd_inspect,
    "reproduce": cmd_reproduce,
    "verify": cmd_verify,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
