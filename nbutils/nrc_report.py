"""Reading paper B's results: which layers collapsed, the learned rank, curves over training, figures.

The records are those of :func:`nbutils.train.train_regressor` (``checkpoints``: one
:func:`nbutils.metrics.nrc.layer_nrc` dict per checkpoint epoch). The criteria here are this companion's
reading of the paper's qualitative statements (the paper sets no numeric threshold); notebooks print
them next to every verdict.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: a layer is *collapsed* when all three hold (the issue's reading of "NRC holds")
COLLAPSE = {"nrc1_max": 0.05, "nrc2_min": 0.9, "nrc3_min": 0.9}
#: an eigenvalue of the feature covariance counts towards the learned rank above this fraction of the trace
RANK_FRACTION = 0.01

METRICS = {  # key -> (label, ideal value under collapse)
    "nrc1": ("NRC1 (noise fraction)", 0.0),
    "nrc2": ("NRC2 (CKA with targets)", 1.0),
    "nrc3": ("NRC3 (weight-feature alignment)", 1.0),
    "nrc4_ratio": ("NRC4 / model MSE", 1.0),
}


def is_collapsed(row: dict, nrc1_max: float = COLLAPSE["nrc1_max"], nrc2_min: float = COLLAPSE["nrc2_min"],
                 nrc3_min: float = COLLAPSE["nrc3_min"]) -> bool:
    """Whether one layer's metrics (a row of ``layer_nrc(...)["layers"]``) meet the collapse reading."""
    v = [row.get("nrc1"), row.get("nrc2"), row.get("nrc3")]
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in v):
        return False
    return v[0] <= nrc1_max and v[1] >= nrc2_min and v[2] >= nrc3_min


def collapsed_layers(record: dict, **criterion) -> list[int]:
    """Indices of the collapsed layers of one checkpoint record (see :func:`is_collapsed`)."""
    return [i for i, row in enumerate(record["layers"]) if is_collapsed(row, **criterion)]


def low_noise_layers(record: dict, nrc1_max: float = COLLAPSE["nrc1_max"]) -> list[int]:
    """Indices of the layers whose features lie (up to ``nrc1_max``) in an n-dimensional subspace (NRC1 only)."""
    return [i for i, row in enumerate(record["layers"]) if row["nrc1"] is not None and row["nrc1"] <= nrc1_max]


def subspace_layers(record: dict, nrc1_max: float = COLLAPSE["nrc1_max"], nrc3_min: float = COLLAPSE["nrc3_min"]) -> list[int]:
    """Indices of the layers *below the last* whose features lie in the n-dim subspace that the next weights read
    (NRC1 <= ``nrc1_max`` and NRC3 >= ``nrc3_min``; NRC2 not required): notebook 32's reading of claim B4."""
    return [i for i, r in enumerate(record["layers"][:-1])
            if r["nrc1"] is not None and r["nrc3"] is not None and r["nrc1"] <= nrc1_max and r["nrc3"] >= nrc3_min]


def learned_rank(spectrum: Sequence[float], fraction: float = RANK_FRACTION) -> int:
    """Number of feature-covariance eigenvalues above ``fraction`` of the trace (``spectrum`` holds the
    top eigenvalues as fractions of the trace, descending)."""
    return int(sum(1 for v in spectrum if v is not None and v > fraction))


def curves(checkpoints: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)``: ``values[t, l]`` is metric ``key`` of layer l at checkpoint t (nan if absent)."""
    epochs = np.array([c["epoch"] for c in checkpoints])
    vals = np.array([[np.nan if r.get(key) is None else r[key] for r in c["layers"]] for c in checkpoints], float)
    return epochs, vals


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (sample, ddof=1) standard deviation; std 0 for a single value."""
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def plot_layer_curves(axes, checkpoints: Sequence[dict], keys: Sequence[str] = tuple(METRICS),
                      cmap: str = "viridis") -> None:
    """One panel per metric: the metric of every layer vs epoch (log axis; epoch 0 drawn at 0.5)."""
    import matplotlib.pyplot as plt

    n_layers = len(checkpoints[0]["layers"])
    colors = plt.get_cmap(cmap)(np.linspace(0, 0.9, n_layers))
    for ax, key in zip(np.ravel(axes), keys):
        ep, v = curves(checkpoints, key)
        x = np.where(ep == 0, 0.5, ep)
        for l in range(n_layers):
            ax.plot(x, v[:, l], "o-", ms=3, color=colors[l], label=f"layer {l + 1}")
        ax.set_xscale("log")
        _yscale(ax, key)
        ax.axhline(METRICS[key][1], color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("epoch")
        ax.set_title(METRICS[key][0])


def plot_metric_vs_layer(axes, record: dict, keys: Sequence[str] = tuple(METRICS), label: str | None = None,
                         **kw) -> None:
    """One panel per metric: the metric at each layer (1 = first linear map) of one checkpoint record."""
    layers = np.arange(1, len(record["layers"]) + 1)
    for ax, key in zip(np.ravel(axes), keys):
        v = [np.nan if r.get(key) is None else r[key] for r in record["layers"]]
        ax.plot(layers, v, "o-", label=label, **kw)
        ax.axhline(METRICS[key][1], color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("layer")
        ax.set_title(METRICS[key][0])
        _yscale(ax, key)


def _yscale(ax, key: str) -> None:
    """NRC1 spans decades down to 0 (symlog); NRC4 / MSE runs from ~1 to hundreds (log)."""
    if key == "nrc1":
        ax.set_yscale("symlog", linthresh=1e-3)
    elif key == "nrc4_ratio":
        ax.set_yscale("log")


_TEX = {"±": r"$\pm$", "≤": r"$\le$", "≥": r"$\ge$", "λ": r"$\lambda$", "θ": r"$\theta$", "%": r"\%", "_": r"\_",
        "&": r"\&", "×": r"$\times$", "∈": r"$\in$", "{": r"\{", "}": r"\}", "#": r"\#"}


def tex_escape(s: str) -> str:
    """Plain text (a caption, a table cell) as LaTeX: symbols to math, specials escaped."""
    return "".join(_TEX.get(ch, ch) for ch in s)


def tables(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[str, str]:
    """``(markdown, latex)`` versions of one table of already formatted cells (booktabs LaTeX, symbols escaped)."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    md = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                   + ["| " + " | ".join(r) + " |" for r in rows])

    tex = "\n".join([r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule", " & ".join(map(tex_escape, header)) + r" \\",
                     r"\midrule"] + [" & ".join(map(tex_escape, r)) + r" \\" for r in rows] + [r"\bottomrule", r"\end{tabular}"])
    return md + "\n", tex + "\n"
