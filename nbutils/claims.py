"""The claims report: each claim of the two papers, what this run measured for it, and whether it held.

Notebooks call :func:`record` with the numbers they measured and the verdict of a stated criterion; the
report ``figures/claims.json`` (every entry) and ``figures/claims.md`` (readable) is rewritten after
every call. Claims that no notebook of this run has measured yet are listed as *not measured*: the
report never asserts a claim that the code did not test. The criteria are readings of the papers'
qualitative statements chosen for this companion; each entry states its criterion, so a reader can
disagree with the reading and still use the numbers.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from . import artifacts, manifest

#: (paper, id) -> the claim as the paper makes it (see ../shared/PAPERS.md)
CLAIMS: dict[str, str] = {
    "A1": "Many unlearning methods reach ~0% forget accuracy at the output, yet a linear probe on the "
          "penultimate features recovers near-original forget accuracy.",
    "A1r": "The probe's forget accuracy on such unlearned models is well above what it gives on a model "
           "retrained without the class (paper: SalUn 92.57% vs retrained 77.35% on CIFAR-10).",
    "A1b": "The cause is feature-classifier misalignment: after unlearning, the forget-class weight no "
           "longer points along the forget-class mean, 1 - cos(mu_k - mu_G, w_k) grows.",
    "A2": "Under neural collapse, changing only the classifier (features frozen) reaches negligible forget "
          "accuracy with retain accuracy preserved; the forget-class weight moves toward -mu_k.",
    "A3": "CMF-based unlearning leaves less forget-class information in the features (lower probe forget "
          "accuracy) than the base methods, at comparable retain accuracy.",
    "A4": "Fine-tuning an unlearned model can bring the erased class back (relearning); the retrained model "
          "relearns more slowly.",
    "B1": "Neural regression collapse occurs below the last layer (collapsed layers) in MLPs and ResNets.",
    "B2": "In collapsed layers, NRC1-NRC4 hold: features in an n-dimensional subspace, feature covariance "
          "aligned with target covariance, weights aligned with features, linear error close to the model's.",
    "B3": "Models with deep NRC learn the intrinsic dimension of low-rank targets.",
    "B4": "Weight decay is necessary for deep NRC: without it there is no collapse.",
}


def _paths():
    d = manifest.figures_dir()
    return d / "claims.json", d / "claims.md"


def load() -> dict:
    """The recorded entries (claim id -> entry) of this figures directory."""
    js, _ = _paths()
    return artifacts.load_json(js) if js.exists() else {}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def record(claim: str, *, held: bool | None, criterion: str, measured: dict, summary: str,
           notebook: str, setting: dict | None = None, variant: str = "") -> dict:
    """Record what a notebook measured for ``claim`` (a key of :data:`CLAIMS`) and rewrite the report.

    * ``held``: the verdict of ``criterion`` on ``measured`` (``None``: could not be decided, e.g. no
      method reached the precondition); computed by the caller from the numbers, never a constant.
    * ``summary``: one sentence with the key numbers; ``setting``: profile, dataset, forget set, seed.
    * ``variant``: the notebook's figure suffix (e.g. ``"_forget0-1-2"``): a variant's run is recorded
      beside the default setting's entry instead of replacing it.
    """
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; known: {sorted(CLAIMS)}")
    if held is not None and not isinstance(held, bool):
        raise ValueError(f"held must be True, False or None, got {held!r}")
    js, md = _paths()
    with manifest.locked(js):  # notebooks may run side by side (dask executor): read-modify-write under a lock
        entries = load()
        entries[claim + variant] = _clean({"id": claim, "variant": variant, "claim": CLAIMS[claim], "held": held, "criterion": criterion, "measured": measured,
                             "summary": summary, "notebook": notebook, "setting": setting or {},
                             "timestamp": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
        artifacts.save_json(js, entries)
        artifacts.atomic_write_bytes(md, render(entries).encode("utf-8"))
    return entries[claim + variant]


def verdict(held: bool | None) -> str:
    return {True: "held", False: "did not hold", None: "undecided"}[held]


def render(entries: dict) -> str:
    """The markdown report: one section per claim, in the papers' order."""
    lines = ["# Claims of the two papers, measured by this run", "",
             "Each entry: the claim, the criterion this companion uses to read it, the numbers measured in "
             "this run, and the verdict. Numbers come from the notebooks named; nothing here is asserted "
             "without a measurement.", "",
             "| claim | verdict | setting | notebook |", "|---|---|---|---|"]
    def of(cid):  # the default setting first, then the variants
        return sorted((e for k, e in entries.items() if e.get("id", k) == cid), key=lambda e: e.get("variant", ""))

    for cid in CLAIMS:
        found = of(cid)
        if not found:
            lines.append(f"| {cid} | not measured in this run | – | – |")
        for e in found:
            setting = ", ".join(f"{k}={v}" for k, v in e.get("setting", {}).items())
            name = cid + (f" ({e['variant'].lstrip('_')})" if e.get("variant") else "")
            lines.append(f"| {name} | **{verdict(e['held'])}** | {setting} | {e['notebook']} |")
    for cid, text in CLAIMS.items():
        lines += ["", f"## {cid}. {text}", ""]
        found = of(cid)
        if not found:
            lines.append("Not measured in this run.")
        for e in found:
            if e.get("variant"):
                lines += [f"Variant `{e['variant'].lstrip('_')}`:", ""]
            lines += [f"- **Verdict: {verdict(e['held'])}.** {e['summary']}", f"- Criterion: {e['criterion']}",
                      f"- Measured in `{e['notebook']}` ({e['timestamp']}):", "", "```",
                      _format_measured(e["measured"]), "```", ""]
    return "\n".join(lines) + "\n"


def _format_measured(m: dict, indent: int = 0) -> str:
    out = []
    for k, v in m.items():
        pad = "  " * indent
        if isinstance(v, dict):
            out.append(f"{pad}{k}:")
            out.append(_format_measured(v, indent + 1))
        elif isinstance(v, float):
            out.append(f"{pad}{k}: {v:.4g}")
        else:
            out.append(f"{pad}{k}: {v}")
    return "\n".join(out)
