"""Command line: ``python -m nbutils <command> ...``.

Subcommands live in :data:`COMMANDS`, a dict ``name -> (configure_parser, handler)``:
``configure_parser(subparser)`` adds the arguments, ``handler(args) -> int`` runs the command and
returns the exit code. To add a command, write those two functions and add an entry.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from nbutils import pipeline, profiles

Configure = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]


def _comma_list(values: Sequence[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or ():
        out.extend(s.strip() for s in v.split(",") if s.strip())
    return out


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where runs execute")
    g.add_argument("--executor", choices=["sequential", "dask"], default="sequential",
                   help="sequential: one run after another in this process (default); dask: independent runs side "
                        "by side on Dask distributed")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running Dask scheduler (tcp://host:8786) to use instead of a LocalCluster; "
                        "implies --executor dask")
    g.add_argument("--workers", type=int, metavar="N",
                   help="worker processes of the LocalCluster (default: one per CPU core)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="threads of each notebook's kernel (default: all cores sequentially, cores / workers on "
                        "a LocalCluster); runs are bit-identical across executors only at equal --threads")


def _executor(args: argparse.Namespace) -> str:
    for opt in ("workers", "threads"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            raise ValueError(f"--{opt} must be >= 1, got {getattr(args, opt)}")
    return "dask" if args.scheduler else args.executor


# ----------------------------------------------------------------------------- run


def configure_run(p: argparse.ArgumentParser) -> None:
    names = list(profiles.PROFILES)
    p.add_argument(
        "--profile",
        choices=names,
        default="quick",
        help=f"size of the experiments: {', '.join(names)} (default: %(default)s)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="NN[,NN...]",
        help="run only these notebooks, by 2-digit prefix or full name, comma-separated or repeated "
        "(default: all, in order)",
    )
    p.add_argument(
        "-p",
        "--param",
        action="append",
        dest="params",
        metavar="NAME=VALUE",
        default=[],
        help="override a notebook parameter (repeatable); VALUE is a Python literal or a plain string; "
        "it goes to the notebooks that declare NAME (seed goes to all); an undeclared NAME is an error",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=pipeline.OUTPUT_DIR,
        metavar="DIR",
        help="where executed copies of the notebooks go (default: build/executed)",
    )
    p.add_argument(
        "--notebooks",
        type=Path,
        default=pipeline.NOTEBOOKS_DIR,
        metavar="DIR",
        help="directory of the numbered notebooks NN_*.ipynb (default: notebooks)",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="after a failing notebook, still run the notebooks that need it (default: skip them; the "
        "others run either way)",
    )
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-notebook progress lines, only the summary")
    _add_executor_options(p)


def handle_run(args: argparse.Namespace) -> int:
    try:
        params = pipeline.parse_params(args.params)
        results = pipeline.run_pipeline(
            profile=args.profile,
            only=_comma_list(args.only) or None,
            params=params,
            notebooks_dir=args.notebooks,
            output_dir=args.output,
            kernel_name=args.kernel,
            stop_on_error=not args.keep_going,
            progress=not args.quiet,
            executor=_executor(args),
            scheduler=args.scheduler,
            workers=args.workers,
            threads=args.threads,
        )
    except ValueError as exc:
        print(f"nbutils run: error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(r["status"] == "ok" for r in results) else 1


RUN_EPILOG = """\
examples:
  python -m nbutils run --profile smoke                  # every notebook, smallest settings
  python -m nbutils run --only 01,03 -p seed=1           # two notebooks, another seed
  python -m nbutils run --profile paper --keep-going     # full runs; don't stop at a failure
  python -m nbutils run --profile smoke --executor dask  # independent notebooks side by side

Each notebook declares in its metadata the earlier notebooks it needs (nbutils.needs); a failing
notebook skips only the notebooks that need it. Executed copies (with outputs and any traceback) are written to --output; the run and each figure
are recorded in figures/manifest.json. Exit status: 0 if every notebook ran, 1 if one failed,
2 for a usage error (unknown profile, notebook or parameter), found before anything runs.
"""

# ----------------------------------------------------------------------------- assign


def configure_assign(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", action="append", metavar="A1,A2",
                   help="build only these assignments (A<k> or the full name); repeatable or comma-separated")
    p.add_argument("--output", default=None, help="output folder (default: build/assignments)")
    p.add_argument("--no-run-tests", action="store_true",
                   help="skip otter's check that the solutions pass their tests while building")


def handle_assign(args: argparse.Namespace) -> int:
    from nbutils import assign

    try:
        done = assign.build(args.output or assign.BUILD_DIR, _comma_list(args.only), run_tests=not args.no_run_tests)
    except (ValueError, RuntimeError) as exc:
        print(f"nbutils assign: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    print(f"{len(done)} assignments: student versions in <name>/student/, instructor versions (solutions, "
          f"autograder zip) in <name>/autograder/")
    return 0


# ----------------------------------------------------------------------------- sweep


def configure_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", type=Path, metavar="SWEEP.toml",
                   help="a sweep file (sweeps/*.toml: notebooks, grid, seeds, tables); --only/--grid/--seeds/-p "
                        "given here replace or extend it")
    names = list(profiles.PROFILES)
    p.add_argument("--profile", choices=names, default="smoke", help="profile of every run (default: %(default)s)")
    p.add_argument("--only", action="append", metavar="NN[,NN...]",
                   help="notebooks of the sweep (2-digit prefixes or names); default: the file's, else all")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="sweep a notebook parameter over values (Python literals; a..b is an integer range; "
                        "repeatable: the grid is the product)")
    p.add_argument("--seeds", type=int, metavar="N", help="also sweep seed = 0 .. N-1")
    p.add_argument("-p", "--param", action="append", dest="params", metavar="NAME=VALUE", default=[],
                   help="fix a notebook parameter for every run")
    p.add_argument("--average", action="append", default=[], metavar="NAME",
                   help="also average the tables over this grid parameter (seeds always are)")
    p.add_argument("--name", help="name of the sweep (its folder under --output); default: the file's name, "
                   "else cli-<hash of the settings>")
    p.add_argument("--output", type=Path, default=None, metavar="DIR",
                   help="where runs keep executed notebooks, figures and records (default: build/sweeps)")
    p.add_argument("--notebooks", type=Path, default=None, metavar="DIR", help="directory of the numbered notebooks")
    p.add_argument("--force", action="store_true", help="run again even the runs that finished before")
    p.add_argument("--keep-going", action="store_true", help="run the dependants of a failed run anyway")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-run lines, only the summary")
    _add_executor_options(p)


def handle_sweep(args: argparse.Namespace) -> int:
    from nbutils import sweep

    try:
        if args.spec is not None:
            spec = sweep.load_spec(args.spec)
        else:
            spec = sweep.Spec(name="", notebooks=_comma_list(args.only) or [p.stem for p in pipeline.discover(
                args.notebooks or pipeline.NOTEBOOKS_DIR)])
        if args.only and args.spec is not None:
            spec.notebooks = _comma_list(args.only)
        spec.grid.update(sweep.parse_grid(args.grid))
        spec.params.update(pipeline.parse_params(args.params))
        if args.seeds is not None:
            spec.seeds = args.seeds
        spec.average += [a for a in args.average if a not in spec.average]
        spec.name = args.name or spec.name or sweep.sweep_name(spec.notebooks, spec.grid, spec.params)
        if not spec.grid and spec.seeds is None:
            raise ValueError("nothing to sweep: give --grid NAME=V1,V2 and/or --seeds N (or a sweep file)")
        out = sweep.run_sweep(spec, profile=args.profile, executor=_executor(args), scheduler=args.scheduler,
                              workers=args.workers, threads=args.threads, output_dir=args.output or sweep.OUTPUT_DIR,
                              notebooks_dir=args.notebooks, force=args.force, keep_going=args.keep_going,
                              progress=not args.quiet, kernel_name=args.kernel)
    except ValueError as exc:
        print(f"nbutils sweep: error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(r["status"] in ("ok", "cached") for r in out["results"]) else 1


SWEEP_EPILOG = """\
examples:
  python -m nbutils sweep sweeps/B_weight_decay.toml                      # a paper table, sequentially
  python -m nbutils sweep sweeps/A_methods_output.toml --executor dask    # on a LocalCluster of this machine
  python -m nbutils sweep sweeps/A_inside.toml --profile paper --scheduler tcp://head:8786
  python -m nbutils sweep --only 30 --grid reg_weight_decay=0,1e-3,5e-3 --seeds 3
  python -m nbutils sweep --only 01,14,21 --grid "forget_classes=[0],[1],[2]" --seeds 2 --average forget_classes

Each run's executed notebook, figures and record go to build/sweeps/<name>/<profile>/<notebook>/; a run
that finished before with the same notebook source and parameters is cached (--force runs it again).
The tables (mean ± std over seeds and --average axes, runs per cell in parentheses) go to figures/ as
.md and .tex. Exit status: 0 if every run finished, 1 if one failed, 2 for a usage error.
"""

#: Subcommands: name -> (configure_parser, handler).
COMMANDS: dict[str, tuple[Configure, Handler]] = {
    "run": (configure_run, handle_run),
    "assign": (configure_assign, handle_assign),
    "sweep": (configure_sweep, handle_sweep),
}

#: One-line help and long description per subcommand (optional; defaults to the handler's docstring).
HELP: dict[str, tuple[str, str]] = {
    "run": (
        "execute the numbered notebooks in order with papermill",
        "Execute notebooks/NN_*.ipynb in order with papermill, injecting --profile and the -p\n"
        "parameters, and print a summary table (status, seconds, and for a failure the cell,\n"
        "the error and the executed copy).",
    ),
}
HELP["assign"] = (
    "build the course assignments (student + instructor versions) with otter-grader",
    "Run otter assign on every master notebook in notebooks/assignments/ and write the student versions\n"
    "(solutions removed, a check cell after every exercise) and the instructor versions (solutions,\n"
    "autograder zip) to build/assignments/<name>/.",
)
HELP["sweep"] = (
    "run notebooks over a grid of parameters and seeds (sequentially or on Dask) and tabulate mean ± std",
    "Run the selected notebooks for every point of a parameter grid and every seed, as one DAG (a run\n"
    "waits for the runs it needs, a failure skips only its dependants), sequentially or on Dask\n"
    "distributed, then write mean ± std tables of what the notebooks recorded into figures/.",
)
EPILOGS: dict[str, str] = {"run": RUN_EPILOG, "sweep": SWEEP_EPILOG}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nbutils",
        description="Companion to 'An Illusion of Unlearning?' (paper A) and 'Deep Neural Regression "
        "Collapse' (paper B): regenerate every figure by running the numbered notebooks.",
        epilog="Run 'python -m nbutils <command> --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name, (configure, handler) in COMMANDS.items():
        short, long = HELP.get(name, ((handler.__doc__ or "").strip().split("\n")[0], None))
        p = sub.add_parser(
            name,
            help=short,
            description=long or short,
            epilog=EPILOGS.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        configure(p)
        p.set_defaults(_handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "_handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return int(handler(args))


__all__ = ["COMMANDS", "HELP", "EPILOGS", "build_parser", "main", "configure_run", "handle_run", "configure_assign",
           "handle_assign", "configure_sweep", "handle_sweep"]
