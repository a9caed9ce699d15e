"""A plain-text per-stage table for terminals and examples. Renders; computes nothing."""

from __future__ import annotations

import math
from typing import Any

from .escape import clean

PROV_SHORT = {"counter": "ctr", "power-integrated": "pwr", "estimated": "est", "mixed": "mix"}


def _fmt_energy(j: Any) -> str:
    if j is None or (isinstance(j, float) and math.isnan(j)):
        return "n/a"
    if abs(j) >= 3.6e5:
        return f"{j / 3.6e6:.3f} kWh"
    if abs(j) >= 1000:
        return f"{j / 1000:.2f} kJ"
    return f"{j:.2f} J"


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def stage_table(df, *, components=("gpu", "cpu", "dram")) -> str:
    """One line per span (indented by depth): duration, energy, per-component energy with its
    provenance (ctr = hardware counter, pwr = integrated power samples, est = estimated),
    average power, energy per sample and emissions when the frame has an ``emissions_g`` column."""
    comps = [c for c in components if f"{c}_energy_j" in df.columns]
    head = ["stage", "time", "energy"] + comps + ["avg W", "J/sample"]
    has_em = "emissions_g" in df.columns
    if has_em:
        head.append("gCO2eq")
    rows = []
    for _, r in df.iterrows():
        depth = int(_num(r.get("depth")) or 0)
        # clean(): a name cannot move the cursor, clear the terminal or break the line
        name = "  " * min(depth, 20) + clean(r["name"]) + ("" if r.get("status", "complete") == "complete" else f" ({clean(r['status'])})")
        cells = [name, f"{_num(r['duration_s']) or 0.0:.2f} s", _fmt_energy(_num(r["energy_j"]))]
        for c in comps:
            e = _num(r.get(f"{c}_energy_j"))
            prov = PROV_SHORT.get(str(r.get(f"{c}_provenance")), "?")
            cells.append("-" if e is None else f"{_fmt_energy(e)} {prov}")
        avg = _num(r.get("avg_power_w"))
        cells.append("n/a" if avg is None else f"{avg:.1f}")
        samples, energy = _num(r.get("samples")), _num(r["energy_j"])
        cells.append(f"{energy / samples:.3g}" if samples and energy is not None else "-")
        if has_em:
            em = _num(r.get("emissions_g"))
            cells.append("n/a" if em is None else f"{em:.4g}")
        rows.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for cells in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
    return "\n".join(lines)
