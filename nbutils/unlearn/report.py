"""Tables and figures shared by the method notebooks (10–20) and the comparison notebook (21)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pathlib import Path

from .. import artifacts
from ..metrics.mia import mia_efficacy
from ..metrics.output import output_metrics

#: columns of the output-level table: key -> (header, scale, format)
COLUMNS = {
    "retain_test": ("retain test acc (%)", 100, "{:.2f}"),
    "forget_test": ("forget test acc (%)", 100, "{:.2f}"),
    "mia_efficacy": ("MIA-efficacy (%)", 100, "{:.1f}"),
    "UA": ("UA (%)", 100, "{:.2f}"),
    "RA": ("RA (%)", 100, "{:.2f}"),
    "TA": ("TA (%)", 100, "{:.2f}"),
    "seconds": ("time (s)", 1, "{:.1f}"),
    "time_ratio": ("time / retrain", 1, "{:.3f}"),
    # paper A's three heads (notebook 22): full model / linear probe / NCC x retain / forget test accuracy
    "out_retain": ("Full: retain (%)", 100, "{:.2f}"),
    "out_forget": ("Full: forget (%)", 100, "{:.2f}"),
    "lp_retain": ("LP: retain (%)", 100, "{:.2f}"),
    "lp_forget": ("LP: forget (%)", 100, "{:.2f}"),
    "ncc_retain": ("NCC: retain (%)", 100, "{:.2f}"),
    "ncc_forget": ("NCC: forget (%)", 100, "{:.2f}"),
    "ridge_forget": ("ridge LP: forget (%)", 100, "{:.2f}"),
    "misalign_forget": ("misalignment, forget class", 1, "{:.3f}"),
    "misalign_retain": ("misalignment, retain classes", 1, "{:.3f}"),
    # neural collapse of the training features (notebook 22)
    "nc1": ("NC1", 1, "{:.3g}"),
    "nc2_etf": ("NC2 (ETF distance)", 1, "{:.3f}"),
    "nc3_duality": ("NC3 (duality)", 1, "{:.3f}"),
    "nc4": ("NC4", 1, "{:.3f}"),
    # relearning (notebook 23): forget-class test accuracy
    "relearn_before": ("forget acc. before (%)", 100, "{:.1f}"),
    "relearn_half": ("few-shot, half-way (%)", 100, "{:.1f}"),
    "relearn_final": ("few-shot, final (%)", 100, "{:.1f}"),
    "relearn_retain_only": ("retain only, final (%)", 100, "{:.1f}"),
    "relearn_retain_after": ("retain acc. after few-shot (%)", 100, "{:.1f}"),
}

#: the columns of paper A's results table (Full / LP / NCC x retain / forget)
THREE_HEADS = ("out_retain", "out_forget", "lp_retain", "lp_forget", "ncc_retain", "ncc_forget")


def inside_row(r: dict) -> dict:
    """Flatten an :func:`nbutils.unlearn.inside.evaluate_representations` result into table columns."""
    fc = set(r["forget_classes"])
    row = {"out_retain": r["output"]["retain_test"], "out_forget": r["output"]["forget_test"],
           "ncc_retain": r["ncc"]["retain_test"], "ncc_forget": r["ncc"]["forget_test"],
           "ridge_forget": r["ridge"]["forget_test"]}
    if "probe" in r:
        row.update(lp_retain=r["probe"]["retain_test"], lp_forget=r["probe"]["forget_test"])
    if "misalignment" in r and fc:
        mis = np.asarray(r["misalignment"], dtype=float)
        f = np.array([c in fc for c in range(len(mis))])
        row.update(misalign_forget=float(np.nanmean(mis[f])), misalign_retain=float(np.nanmean(mis[~f])))
    row.update({k: r["nc"].get(k) for k in ("nc1", "nc2_etf", "nc3_duality", "nc4")})
    return row


def evaluate_model(model, data, split, mia: bool = True, seed: int = 0, cache: str | Path | None = None) -> dict:
    """Output metrics (paper A's retain/forget test accuracy, per-class test accuracy, SalUn's UA/RA/TA for
    random forgetting) and, if ``mia``, the MIA-efficacy of the forget set.

    ``cache``: a JSON file (e.g. in the model's results directory, named after the split) that holds the
    row once computed, so that the eleven method notebooks evaluate the original and retrained models once.
    """
    if cache is not None and Path(cache).exists():
        return artifacts.load_json(cache)
    row = output_metrics(model, data, split)
    if mia:
        row["mia_efficacy"] = mia_efficacy(model, data, split, seed=seed)["mia_efficacy"]
    if cache is not None:
        artifacts.save_json(cache, row)
    return row


def split_tag(split) -> str:
    """A short name of a split, for file names of cached evaluations."""
    what = "random" if split.scenario == "random" else "forget" + "-".join(map(str, split.forget_classes))
    return f"{what}-seed{split.info.get('seed', 0)}"


def figure_suffix(cfg, classifier_only: bool = False) -> str:
    """The file-name suffix of a variant's figures and tables: ``_head`` (classifier-only), ``_random``
    (random-sample forgetting), ``_forget1-2`` (a forget set other than the profile's default)."""
    from ..profiles import PROFILES

    default = PROFILES[cfg.profile]["forget_classes"]
    return (("_head" if classifier_only else "") + ("_random" if cfg.scenario == "random" else "")
            + ("" if list(cfg.forget_classes) == list(default) else "_forget" + "-".join(map(str, cfg.forget_classes))))


def _cell(v, scale, fmt) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return fmt.format(v * scale)


def markdown_table(rows: dict[str, dict], columns: Sequence[str]) -> str:
    """Rows (name -> metrics) as a GitHub-markdown table with the headers of :data:`COLUMNS`."""
    cols = [c for c in columns if any(c in r for r in rows.values())]
    lines = ["| method | " + " | ".join(COLUMNS[c][0] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(r.get(c), COLUMNS[c][1], COLUMNS[c][2]) for c in cols) + " |")
    return "\n".join(lines)


def latex_table(rows: dict[str, dict], columns: Sequence[str], caption: str = "", label: str = "") -> str:
    """The same table as LaTeX (booktabs)."""
    cols = [c for c in columns if any(c in r for r in rows.values())]
    esc = lambda s: s.replace("%", r"\%").replace("_", r"\_").replace("&", r"\&")  # noqa: E731
    out = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
           "method & " + " & ".join(esc(COLUMNS[c][0]) for c in cols) + r" \\", r"\midrule"]
    for name, r in rows.items():
        out.append(esc(name) + " & " + " & ".join(_cell(r.get(c), COLUMNS[c][1], COLUMNS[c][2]) for c in cols) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(r"\caption{" + esc(caption) + "}")
    if label:
        out.append(r"\label{" + label + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def plot_method(title: str, rows: dict[str, dict], class_names: Sequence[str], forget_classes: Sequence[int],
                history: list[dict] | None = None, reference: str = "retrain"):
    """Left: per-class test accuracy of each row (forget classes shaded). Right: retain / forget test
    accuracy after each epoch of the method, with the reference (retrained) model's values dashed."""
    import matplotlib.pyplot as plt

    ncols = 2 if history else 1
    fig, axes = plt.subplots(1, ncols, figsize=(11 if history else 7, 3.4), squeeze=False)
    ax = axes[0, 0]
    k = len(class_names)
    w = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows.items()):
        ax.bar(np.arange(k) + (i - len(rows) / 2 + 0.5) * w, 100 * np.asarray(r["per_class"]), w, label=name)
    for c in forget_classes:
        ax.axvspan(c - 0.45, c + 0.45, color="tab:red", alpha=0.12, lw=0)
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 105), title="per-class test accuracy (forget class shaded)")
    ax.legend(loc="lower left", fontsize=8)
    if history:
        ax = axes[0, 1]
        ep = np.arange(1, len(history) + 1)
        ax.plot(ep, [100 * h["retain_test_acc"] for h in history], marker="o", label="retain test")
        ax.plot(ep, [100 * h["forget_test_acc"] for h in history], marker="s", label="forget test")
        if reference in rows:
            ax.axhline(100 * rows[reference]["retain_test"], color="C0", ls="--", lw=1, label=f"{reference}: retain")
            ax.axhline(100 * rows[reference]["forget_test"], color="C1", ls="--", lw=1, label=f"{reference}: forget")
        ax.set(xlabel="epoch of unlearning", ylabel="accuracy (%)", ylim=(-2, 102), title="during unlearning")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig
