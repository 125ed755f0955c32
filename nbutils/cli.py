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
        help="after a failing notebook, still run the following ones (default: stop and skip them)",
    )
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-notebook progress lines, only the summary")


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

Executed copies (with outputs and any traceback) are written to --output; the run and each figure
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


#: Subcommands: name -> (configure_parser, handler). Others add "sweep", ... here.
COMMANDS: dict[str, tuple[Configure, Handler]] = {
    "run": (configure_run, handle_run),
    "assign": (configure_assign, handle_assign),
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
EPILOGS: dict[str, str] = {"run": RUN_EPILOG}


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
           "handle_assign"]
