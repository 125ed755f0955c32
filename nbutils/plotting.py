"""One figure style for every notebook, and reproducible, recorded figure files.

Usage in a notebook::

    from nbutils import plotting
    plotting.use_style()
    fig, ax = plt.subplots()
    ...
    plotting.savefig(fig, "A_fig2_probe_curves")      # figures/A_fig2_probe_curves.{png,pdf}

Importing this module changes nothing; :func:`use_style` sets matplotlib's rcParams (it can be
called any number of times). :func:`savefig` strips the timestamps and version strings that
matplotlib would write, so the same figure gives byte-identical files on every run, writes each
file atomically, and records it in ``figures/manifest.json`` with the current profile and settings.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Iterable

from nbutils import manifest
from nbutils.artifacts import atomic_write_bytes

#: PNG resolution.
DPI = 150

#: Okabe & Ito (2008) colour-blind-safe palette, ordered for lines (yellow and black last).
OKABE_ITO = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)

#: rcParams set by use_style() (the colour cycle is added there, where cycler is imported).
STYLE: dict[str, Any] = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "savefig.dpi": DPI,
    "savefig.format": "png",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 12,
    "axes.grid": True,
    "grid.color": "#b0b0b0",
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "grid.linestyle": "-",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "image.cmap": "viridis",
    "pdf.fonttype": 42,  # TrueType: text stays text in the PDF
    "svg.hashsalt": "nbutils",  # deterministic element ids in SVG
}

#: Keyword arguments per format that keep the output byte-identical from run to run.
_FORMAT_KWARGS: dict[str, dict[str, Any]] = {
    "png": {"dpi": DPI, "metadata": {"Software": None}},
    "pdf": {"metadata": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}},
    "svg": {"metadata": {"Date": None, "Creator": None}},
}

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_EXT_RE = re.compile(r"^[A-Za-z0-9]+$")


def use_style() -> None:
    """Apply the project's figure style to matplotlib's global rcParams (idempotent)."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=list(OKABE_ITO))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid figure name {name!r}: use only letters, digits, '_' and '-' "
            "(no extension, no directory), e.g. 'A_fig2_probe_curves'"
        )
    return name


def _current_config() -> Any:
    from nbutils import profiles

    return profiles.current()


def savefig(fig: Any, name: str, formats: Iterable[str] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``<figures_dir>/<name>.<fmt>`` for each format; record it; return the paths.

    ``name`` may contain only letters, digits, ``_`` and ``-``. Formats: ``png`` (at :data:`DPI`),
    ``pdf``, ``svg``. Files carry no timestamps or version strings, so saving the same figure again
    gives the same bytes.
    """
    _check_name(name)
    formats = [formats] if isinstance(formats, str) else list(formats)
    if not formats:
        raise ValueError("savefig: no formats given")
    unknown = [f for f in formats if f not in _FORMAT_KWARGS]
    if unknown:
        raise ValueError(f"savefig: unsupported format(s) {unknown}; supported: {sorted(_FORMAT_KWARGS)}")
    out_dir = manifest.figures_dir()
    paths = []
    for fmt in dict.fromkeys(formats):  # keep order, drop duplicates
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, **_FORMAT_KWARGS[fmt])
        paths.append(atomic_write_bytes(out_dir / f"{name}.{fmt}", buf.getvalue()))
    manifest.record_figure(name, paths, config=_current_config())
    return paths


def savetable(text: str, name: str, ext: str = "md") -> Path:
    """Write a table (markdown, LaTeX, ...) to ``<figures_dir>/<name>.<ext>`` and record it; return the path.

    The manifest entry is named ``<name>.<ext>``, so several formats of one table are all recorded.
    """
    _check_name(name)
    ext = ext.lstrip(".")
    if not _EXT_RE.match(ext):
        raise ValueError(f"invalid table extension {ext!r}: use letters and digits only, e.g. 'md' or 'tex'")
    if not text.endswith("\n"):
        text += "\n"
    path = atomic_write_bytes(manifest.figures_dir() / f"{name}.{ext}", text.encode("utf-8"))
    # keyed "<name>.<ext>" so the markdown and LaTeX versions of one table both stay recorded
    manifest.record_figure(f"{name}.{ext}", [path], config=_current_config())
    return path


__all__ = ["DPI", "OKABE_ITO", "STYLE", "use_style", "savefig", "savetable"]
