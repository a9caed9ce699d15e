"""Matplotlib figures (the ``plot`` extra): power timeline with stages shaded, per-stage energy
bars, the Pareto frontier. Each returns a Figure; the caller saves or embeds it."""

from __future__ import annotations

import contextlib
from typing import Any

from .escape import plot_text

COLORS = {"gpu": "#1b9e77", "cpu": "#d95f02", "dram": "#7570b3"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


#: Names are text: no mathtext (``cost $\\frac{1}{$`` would crash the figure), no TeX.
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False, "axes.formatter.use_mathtext": False}


@contextlib.contextmanager
def plain_text():
    """Matplotlib settings under which every label is literal text (figures and their saving)."""
    import warnings

    import matplotlib

    with matplotlib.rc_context(PLAIN_TEXT), warnings.catch_warnings():
        # A name in a script the font lacks is drawn as boxes; one warning per glyph is noise.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        yield


def _plain(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with plain_text():
            return fn(*a, **kw)

    return wrapper


@_plain
def power_timeline(run, card_run: dict | None = None):
    """Power per component over the run (W), from samples.csv, with top-level stages shaded."""
    from ..clock import parse_utc_iso

    plt = _plt()
    df = run.samples()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    if df.empty or len(df) < 2:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center")
        return fig
    t0 = df["t_wall_s"].iloc[0]
    t = df["t_wall_s"] - t0
    for comp in ("gpu", "cpu", "dram"):
        cols = [c for c in df.columns if c.startswith(comp + ":") and c.endswith(":energy_j")]
        if not cols:
            continue
        e = df[cols].sum(axis=1)
        p = e.diff() / df["t_wall_s"].diff()
        ax.step(t, p.fillna(0.0), where="post", label=comp.upper(), color=COLORS[comp], linewidth=1.2)
    stages = (card_run or {}).get("stages", [])
    shades = ["#00000010", "#0000ff10"]
    for k, s in enumerate(x for x in stages if x["depth"] == 0 and x.get("end_utc")):
        a, b = parse_utc_iso(s["start_utc"]) - t0, parse_utc_iso(s["end_utc"]) - t0
        ax.axvspan(a, b, color=shades[k % 2])
        ax.text((a + b) / 2, 1.0, plot_text(s["name"], 30), transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("power (W)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


@_plain
def stage_energy_bars(card_run: dict, *, max_depth: int = 1):
    """Each stage's own energy (J), stacked by component."""
    plt = _plt()
    stages = [s for s in card_run["stages"] if s["depth"] <= max_depth]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(stages) + 1.2))
    # Distinct labels even for equal names: the categorical axis would merge them.
    labels = [f"{'  ' * s['depth']}{plot_text(s['name'])}" + "\u200b" * k for k, s in enumerate(stages)][::-1]
    left = [0.0] * len(stages)
    for comp in ("gpu", "cpu", "dram"):
        vals = []
        for s in stages[::-1]:
            c = s["components"].get(comp)
            share = (s["own_energy_j"] or 0.0) / s["energy_j"] if s["energy_j"] else 0.0
            vals.append((c["energy_j"] * share) if c else 0.0)
        if any(vals):
            ax.barh(labels, vals, left=left, color=COLORS[comp], label=comp.upper())
            left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlabel("energy (J), nested stages of another kind excluded")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@_plain
def pareto_plot(df, *, quality: str, cost: str, label: str | None = None, maximize: bool = True, ax: Any = None):
    """Scatter of quality against cost with the non-dominated frontier drawn."""
    from .analysis import pareto_front

    plt = _plt()
    front = pareto_front(df, quality=quality, cost=cost, maximize=maximize)
    data = front.attrs["all"]
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(data[cost], data[quality], color="#999999", label="dominated")
    ax.scatter(front[cost], front[quality], color="#d95f02", label="Pareto-optimal", zorder=3)
    ax.plot(front[cost], front[quality], color="#d95f02", linewidth=1)
    if label and label in data.columns:
        for _, r in data.iterrows():
            ax.annotate(plot_text(r[label]), (r[cost], r[quality]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(plot_text(cost))
    ax.set_ylabel(plot_text(quality))
    ax.legend(fontsize=8)
    if fig is not None:
        fig.tight_layout()
    return fig or ax.figure


@_plain
def sweep_pareto(card: dict):
    """A sweep's quality metric against each run's energy (J), the Pareto frontier joined up and
    the baseline ringed. Needs ``card["sweep"]`` with a metric."""
    plt = _plt()
    sw = card["sweep"]
    rows = [r for r in sw["rows"] if r["metric"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    dom = [r for r in rows if not r["pareto"]]
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["energy_j"])
    ax.scatter([r["energy_j"] for r in dom], [r["metric"] for r in dom], color="#999999", label="dominated", zorder=2)
    ax.plot([r["energy_j"] for r in front], [r["metric"] for r in front], "o-", color="#d95f02", label="Pareto frontier", zorder=3)
    base = [r for r in rows if r["is_baseline"]]
    if base:
        ax.scatter([base[0]["energy_j"]], [base[0]["metric"]], s=180, facecolors="none", edgecolors="#1b9e77",
                   linewidths=1.5, label="baseline", zorder=4)
    for r in rows:
        ax.annotate(plot_text(r["title"], 40), (r["energy_j"], r["metric"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("energy per run (J, IT)")
    ax.set_ylabel(f"{plot_text(sw['metric'], 40)} ({'higher' if sw['maximize'] else 'lower'} is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@_plain
def sweep_energy_bars(card: dict):
    """Energy per run (J), stacked by component."""
    plt = _plt()
    rows = card["sweep"]["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 0.4 * len(rows) + 1.2))
    labels = [plot_text(r["title"], 40) + "\u200b" * k for k, r in enumerate(rows)][::-1]
    left = [0.0] * len(rows)
    for comp in ("gpu", "cpu", "dram"):
        vals = [r["components_j"].get(comp, 0.0) for r in rows][::-1]
        if any(vals):
            ax.barh(labels, vals, left=left, color=COLORS[comp], label=comp.upper())
            left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlabel("energy per run (J, IT, top-level stages)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
