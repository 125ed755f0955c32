"""Content-addressed cache of results: hashing, atomic writes, safe loading.

Every artifact (a trained model, a table of numbers) lives in ``data/results/`` under a name that
contains the hash of everything that determines it, so work already done is never redone and a
changed setting never reads a stale file. Writes go to a temporary file in the same directory and
are renamed into place, so an interrupted run never leaves a half file behind.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    """Directory of cached results: ``$NBUTILS_RESULTS`` or ``<repo>/data/results``."""
    d = Path(os.environ.get("NBUTILS_RESULTS", REPO_ROOT / "data" / "results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return obj  # keep 1.0 distinct from 1 only through json's own formatting
    return obj


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | Path, writer: Callable[[io.BytesIO], None]) -> Path:
    """Atomically write whatever ``writer(buffer)`` puts into a bytes buffer."""
    buf = io.BytesIO()
    writer(buf)
    return atomic_write_bytes(path, buf.getvalue())


def save_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_torch(path: str | Path, obj: Any) -> Path:
    """Atomically ``torch.save`` a state dict (or dict of tensors / plain values)."""
    import torch

    return atomic_write(path, lambda buf: torch.save(obj, buf))


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no pickled code."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)
