"""The energy of a span between two odometer snapshots. Pure: every input is captured when the
span closes, so a result never depends on when (or on which thread) it is computed.

Counter channels whose span is shorter than their update period are corrected from polled
instantaneous power and say so; coarse counters with a learned update grid get the energy their
readings lag behind added back at both edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

from .measurement import ComponentEnergy, DeviceEnergy
from .sensors import COMPONENTS, COUNTER, ESTIMATED, POWER_INTEGRATED, Channel

#: A coarse counter's delta is used (with its edge lags added back) for spans of at least this
#: many update periods; shorter spans take their energy from polled power, since one misplaced
#: update would be a large error.
GRID_MIN_PERIODS = 1.5
#: Until a presumed-coarse counter's update period is learned (NVML energy counters update every
#: 20-100 ms), spans shorter than this take their energy from polled instantaneous power.
UNLEARNED_PINT_S = 1.0


@dataclass(frozen=True)
class Plan:
    """Per-channel constants for :func:`span_energy`, computed once per set of channels."""

    channels: tuple[Channel, ...]
    groups: tuple  # (component, channel indices, provenance, keys)
    counters: tuple[int, ...]
    estimated: frozenset
    estimate_note: str
    notes: tuple[str, ...]


def make_plan(channels: Sequence[Channel]) -> Plan:
    chans = tuple(channels)
    order = sorted({c.component for c in chans}, key=lambda c: (COMPONENTS.index(c) if c in COMPONENTS else 99, c))
    groups = []
    for comp in order:
        idx = tuple(i for i, c in enumerate(chans) if c.component == comp)
        provs = {chans[i].provenance for i in idx}
        groups.append((comp, idx, provs.pop() if len(provs) == 1 else "mixed", tuple(chans[i].key for i in idx)))
    counters = tuple(i for i, c in enumerate(chans) if c.mode == "energy" and c.provenance == COUNTER)
    estimated = frozenset(i for i, c in enumerate(chans) if c.provenance == ESTIMATED)
    note = ""
    if estimated:
        comps = sorted({chans[i].component for i in estimated})
        note = f"{', '.join(comps)} energy is estimated from a model, not measured"
    notes = tuple(f"{c.key}: {c.details.get('mig', 'reading covers the whole GPU')}"
                  for c in chans if c.shared and c.component == "gpu")
    return Plan(chans, tuple(groups), counters, estimated, note, notes)


class Figures(NamedTuple):
    """What :func:`span_energy` computes; the span adds its identity to make a Measurement."""

    duration_s: float
    energy_j: float | None
    measured_energy_j: float | None
    estimated_energy_j: float | None
    energy_by_component: dict
    devices: tuple
    avg_power_w: float | None
    peak_power_w: float | None
    peak_power_by_component_w: dict
    warnings: tuple


def _correct(i: int, d: float, s, e, dj: list, ch: Channel, warnings: list) -> bool:
    """Apply the coarse-counter rules to channel ``i``; True when its energy was corrected."""
    period = e.period_s[i] if e.period_s else 0.0
    pint = s.pint_j is not None and e.pint_j is not None and e.pint_j[i] > s.pint_j[i]
    if period == 0.0:
        # Not learned yet, or continuous. A counter presumed coarse (its instantaneous power is
        # polled) takes short spans from the integrated power: never a whole update, never zero.
        if pint and d < UNLEARNED_PINT_S:
            dj[i] = e.pint_j[i] - s.pint_j[i]
            warnings.append(f"{ch.key}: counter update period not learned yet; this {d * 1e3:.0f} ms span's "
                            "energy integrated from instantaneous power")
            return True
        presumed_coarse = s.pint_j is not None and e.pint_j is not None
        edge_w = (s.power_w[i] + e.power_w[i]) * 0.5
        if presumed_coarse and dj[i] == 0 and d < UNLEARNED_PINT_S and edge_w > 0:
            dj[i] = edge_w * d  # no polled power moved (its reads failed): the last power known
            warnings.append(f"{ch.key}: counter update period not learned yet and no instantaneous power "
                            f"was polled; energy from the last power read ({edge_w:.1f} W)")
            return True
        if dj[i] == 0 and d >= UNLEARNED_PINT_S and pint:
            warnings.append(f"{ch.key}: energy counter did not move during this {d:.1f} s span; no energy is "
                            "made up for it")
        return False
    lags = s.lag_j is not None and e.lag_j is not None and s.lag_j[i] is not None and e.lag_j[i] is not None
    if d >= GRID_MIN_PERIODS * period:
        if dj[i] == 0:
            warnings.append(f"{ch.key}: energy counter did not move during this {d:.2f} s span (it updates every "
                            f"{period * 1e3:.0f} ms); no energy is made up for it")
            return False
        if lags:
            # A known update grid: each reading lags its read time by the energy since the
            # counter's last update; add that back at both edges.
            dj[i] += e.lag_j[i] - s.lag_j[i]
            return False
        edge_w = (s.power_w[i] + e.power_w[i]) * 0.5
        if dj[i] > 0 and edge_w * period / dj[i] >= 0.01:
            warnings.append(f"{ch.key}: counter updates every {period * 1e3:.0f} ms; this {d * 1e3:.0f} ms span "
                            f"may be off by up to one update (~{100.0 * edge_w * period / dj[i]:.0f}%)")
        return False
    # Shorter than the counter's updates.
    if pint:
        dj[i] = e.pint_j[i] - s.pint_j[i]
        warnings.append(f"{ch.key}: span ({d * 1e3:.1f} ms) too short for the counter, which updates every "
                        f"{period * 1e3:.0f} ms; energy integrated from instantaneous power")
        return True
    edge_w = (s.power_w[i] + e.power_w[i]) * 0.5
    if edge_w > 0:
        dj[i] = edge_w * d
        warnings.append(f"{ch.key}: span ({d * 1e3:.1f} ms) too short for the counter, which updates every "
                        f"{period * 1e3:.0f} ms; energy from power at the span's edges ({edge_w:.1f} W)")
        return True
    return False


def _fault_warnings(faults: Sequence, s, e) -> list[str]:
    out = []
    for f in faults[: e.n_faults]:
        if f.permanent and f.t <= e.t:
            out.append(f"{f.key} failed during or before this span ({f.reason}); energy after that point is missing")
    for f in faults[s.n_faults:e.n_faults]:
        if not f.permanent:
            out.append(f"{f.key}: {f.reason}")
    return out


def _one(provs: list, idx: tuple) -> str:
    kinds = {provs[i] for i in idx}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def span_energy(s, e, plan: Plan, faults: Sequence = (), peak: Mapping[str, float] | None = None) -> Figures:
    """Energy, power and warnings between snapshots ``s`` and ``e`` (see :mod:`meter.odometer`).
    ``faults`` is the odometer's append-only fault list; ``peak`` the highest per-component and
    ``"total"`` power the sampler saw while the span was open."""
    d = e.t - s.t
    chans = plan.channels
    dj = [b - a for a, b in zip(s.energy_j, e.energy_j, strict=True)]
    corrected = set()
    warnings: list[str] = list(plan.notes)
    if d > 0:
        for i in plan.counters:
            if _correct(i, d, s, e, dj, chans[i], warnings):
                corrected.add(i)
    if faults:
        warnings.extend(_fault_warnings(faults, s, e))
    # A counter reading replaced by integrated power is labelled as what it is.
    provs = [POWER_INTEGRATED if i in corrected else c.provenance for i, c in enumerate(chans)]
    devices = tuple(DeviceEnergy(c.key, c.component, c.label, dj[i], provs[i], c.scope, c.shared, i in corrected)
                    for i, c in enumerate(chans))
    by_comp = {comp: ComponentEnergy(sum(dj[i] for i in idx), prov if not corrected else _one(provs, idx), keys)
               for comp, idx, prov, keys in plan.groups}
    if plan.estimate_note:
        warnings.append(plan.estimate_note)
    if not chans:
        warnings.append("no energy sensor was available: energy not measured (run `python -m meter`)")
        return Figures(d, None, None, None, {}, (), None, None, {}, tuple(dict.fromkeys(warnings)))
    total = sum(dj)
    estimated = sum(dj[i] for i in plan.estimated)
    avg = total / d if d > 0 else None
    peaks = dict(peak or {})
    peak_total = max(v for v in (peaks.pop("total", None), sum(s.power_w), sum(e.power_w), avg) if v is not None)
    if d > 0:
        for comp, ce in by_comp.items():
            peaks[comp] = max(peaks.get(comp, 0.0), ce.energy_j / d)
    return Figures(d, total, total - estimated, estimated, by_comp, devices, avg, peak_total, peaks,
                   tuple(dict.fromkeys(warnings)))
