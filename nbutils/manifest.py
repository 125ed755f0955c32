"""The figures manifest: which notebook made which figure, with which settings, at which commit.

``figures/manifest.json`` (the figures directory is ``$NBUTILS_FIGURES_DIR`` or ``<repo>/figures``)
has two parts::

    {"run": {...last pipeline run...}, "figures": {name: {...entry...}}}

Every figure saved through :func:`nbutils.plotting.savefig` adds or replaces its entry through
:func:`record_figure`; ``python -m nbutils run`` records the run through :func:`record_run`.

Notebooks may run concurrently, so every update is a read-modify-write under an exclusive
``fcntl.flock`` on ``manifest.json.lock`` beside the manifest, and the new manifest is written
atomically (temporary file + rename): a reader never sees a half-written file and no writer's
entry is lost. A missing manifest starts empty; a corrupt one is set aside as
``manifest.json.corrupt`` with a warning and a fresh one is started.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import os
import platform
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from nbutils.artifacts import REPO_ROOT, load_json, save_json

MANIFEST_NAME = "manifest.json"

# Distribution names reported by package_versions(), in this order (missing ones are skipped).
_DISTRIBUTIONS = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "matplotlib", "papermill")


def figures_dir() -> Path:
    """Directory of figures: ``$NBUTILS_FIGURES_DIR`` or ``<repo>/figures`` (created if missing)."""
    d = Path(os.environ.get("NBUTILS_FIGURES_DIR") or REPO_ROOT / "figures")
    d.mkdir(parents=True, exist_ok=True)
    return d


def manifest_path() -> Path:
    """Path of ``manifest.json`` in :func:`figures_dir`."""
    return figures_dir() / MANIFEST_NAME


def utc_now() -> str:
    """Current time, UTC, ISO 8601 to the second (``2025-01-31T12:00:00Z``)."""
    return _iso(_dt.datetime.now(_dt.timezone.utc))


def _iso(t: _dt.datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def git_commit(repo: str | Path | None = None) -> str:
    """Commit hash of ``HEAD`` in ``repo`` (default: the repository root).

    ``"unknown"`` outside a git repository, without git, or before the first commit;
    ``"<hash>-dirty"`` when tracked files have uncommitted changes (untracked files don't count).
    """
    cwd = Path(repo) if repo is not None else REPO_ROOT
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30
        )
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip()
    if status.returncode == 0 and status.stdout.strip():
        commit += "-dirty"
    return commit


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages the results depend on (missing packages skipped)."""
    versions = {"python": platform.python_version()}
    for dist in _DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    import nbutils

    version = getattr(nbutils, "__version__", None)
    if version is None:  # e.g. imported as a namespace package through a stale editable install
        try:
            version = metadata.version("nbutils")
        except metadata.PackageNotFoundError:
            version = None
    if version:
        versions["nbutils"] = version
    return versions


# ----------------------------------------------------------------------------- reading / writing


def _fresh() -> dict[str, Any]:
    return {"run": {}, "figures": {}}


def _read(path: Path) -> dict[str, Any]:
    """Load the manifest; start fresh (with a warning, keeping the bad file aside) if it is corrupt."""
    if not path.exists():
        return _fresh()
    try:
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("figures", {}), dict):
            raise ValueError("top level is not {'run': ..., 'figures': {...}}")
    except (ValueError, UnicodeDecodeError, OSError) as exc:  # JSONDecodeError is a ValueError
        backup = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, backup)
        warnings.warn(
            f"figures manifest {path} is unreadable ({exc}); starting a fresh one "
            f"(old file kept as {backup.name})",
            RuntimeWarning,
            stacklevel=3,
        )
        return _fresh()
    data.setdefault("figures", {})
    if not isinstance(data.get("run"), dict):
        data["run"] = {}
    return data


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``<path>.lock`` for the duration of the block (the manifest, the claims file)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def update(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``mutate(manifest)`` under the lock and write the result atomically; return it."""
    path = manifest_path()
    with locked(path):
        data = _read(path)
        mutate(data)
        save_json(path, data)
    return data


def load() -> dict[str, Any]:
    """The current manifest (``{"run": {}, "figures": {}}`` if there is none yet)."""
    path = manifest_path()
    with locked(path):
        return _read(path)


# ----------------------------------------------------------------------------- recording


def _relative(path: str | Path, base: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        p = base / p
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return p.as_posix()  # outside the figures directory: keep it as it is


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _config_fields(config: Any) -> tuple[str | None, int | None, dict[str, Any]]:
    if config is None:
        return None, None, {}
    if isinstance(config, dict):
        params = dict(config)
        return params.get("profile"), params.get("seed"), params
    params = config.as_dict() if hasattr(config, "as_dict") else {}
    return getattr(config, "profile", None), getattr(config, "seed", None), dict(params)


def record_figure(
    name: str,
    files: Iterable[str | Path],
    notebook: str | None = None,
    config: Any = None,
) -> dict[str, Any]:
    """Add (or replace) the manifest entry of figure ``name`` and return the entry.

    ``files`` are stored relative to the figures directory, each with its SHA-256.
    ``notebook`` defaults to ``$NBUTILS_NOTEBOOK`` (set by the pipeline) or ``"interactive"``;
    ``config`` is a :class:`nbutils.profiles` Config (``.profile``, ``.seed``, ``.as_dict()``) or None.
    """
    base = figures_dir()
    rel = [_relative(f, base) for f in files]
    profile, seed, params = _config_fields(config)
    entry = {
        "files": rel,
        "sha256": {r: _sha256(base / r) for r in rel},
        "notebook": notebook or os.environ.get("NBUTILS_NOTEBOOK") or "interactive",
        "profile": profile,
        "seed": seed,
        "parameters": params,
        "git_commit": git_commit(),
        "timestamp": utc_now(),
    }

    def mutate(data: dict[str, Any]) -> None:
        data["figures"][name] = entry

    update(mutate)
    return entry


def _profile_seed(profile: str) -> int | None:
    try:
        from nbutils import profiles
    except ImportError:
        return None
    defaults = getattr(profiles, "PROFILES", {}).get(profile, {})
    return defaults.get("seed") if isinstance(defaults, dict) else None


def record_run(
    profile: str,
    parameters: dict[str, Any],
    notebooks: list[dict[str, Any]],
    *,
    seed: int | None = None,
    started: str | _dt.datetime | None = None,
    finished: str | _dt.datetime | None = None,
) -> dict[str, Any]:
    """Record a pipeline run as the manifest's ``run`` (replacing the previous one); return it.

    ``parameters`` are the command-line overrides (``-p name=value``); ``notebooks`` is a list of
    ``{"name", "seconds", "status", "error"?}``. ``seed`` defaults to ``parameters["seed"]``, else the
    profile's default seed (``PROFILES[profile]["seed"]``) when there is one.
    """
    if seed is None:
        seed = parameters.get("seed", _profile_seed(profile))
    finished_s = _iso(finished) if isinstance(finished, _dt.datetime) else (finished or utc_now())
    if started is None:
        total = sum(float(nb.get("seconds") or 0.0) for nb in notebooks)
        fin = _dt.datetime.fromisoformat(finished_s.replace("Z", "+00:00"))
        started = fin - _dt.timedelta(seconds=total)
    started_s = _iso(started) if isinstance(started, _dt.datetime) else started
    nbs = []
    for nb in notebooks:
        item = {
            "name": nb["name"],
            "seconds": None if nb.get("seconds") is None else round(float(nb["seconds"]), 3),
            "status": nb["status"],
        }
        if nb.get("error"):
            item["error"] = nb["error"]
        nbs.append(item)
    run = {
        "profile": profile,
        "seed": seed,
        "parameters": dict(parameters),
        "notebooks": nbs,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "started": started_s,
        "finished": finished_s,
    }

    def mutate(data: dict[str, Any]) -> None:
        data["run"] = run

    update(mutate)
    return run


__all__ = [
    "MANIFEST_NAME",
    "figures_dir",
    "manifest_path",
    "git_commit",
    "package_versions",
    "record_figure",
    "record_run",
    "update",
    "load",
    "utc_now",
]
