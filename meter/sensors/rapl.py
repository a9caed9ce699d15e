"""CPU package and DRAM energy through Linux powercap (RAPL), Intel and AMD.

Zones live at ``<root>/intel-rapl:N`` (packages, psys) and ``intel-rapl:N:M`` (core, uncore,
dram). Domains nest: core and uncore sit inside package, and psys covers the whole platform
including package, so we read only package (as ``cpu``) and dram (as ``dram``) and never add a
nested zone to its parent. ``intel-rapl-mmio`` zones duplicate the MSR package zones and are
used only for packages the MSR interface lacks. Counters wrap at ``max_energy_range_uj``; the
sampler corrects that. Files are opened once and re-read with ``os.pread``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from ..units import uj_to_j, uw_to_w
from .base import COUNTER, Channel, Fault, Unavailable

PERMISSION_HINT = (
    "energy_uj is readable by root only since Linux 5.10 (CVE-2020-8694, 'PLATYPUS'). "
    "Run as root, or let this user read it until reboot with "
    "`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj`, "
    "or permanently with a udev rule: "
    'SUBSYSTEM=="powercap", ACTION=="add", RUN+="/bin/chmod a+r /sys%p/energy_uj". '
    "Either re-opens the PLATYPUS power side channel to every local user; decide with your admin."
)
# Used to check the sampler interval against the wrap period when a zone states no limit.
ASSUMED_MAX_POWER_W = 500.0
# The plausibility bound of a counter when its zone states no maximum power (generous: the
# largest server packages draw ~500 W, their DRAM far less).
DEFAULT_MAX_POWER_W = {"cpu": 1000.0, "dram": 500.0}
# Two package counters this close (independent sockets differ by kJ) that also move together are
# one counter exposed twice.
MIRROR_TOLERANCE_J = 0.1
RAPL_UPDATE_S = 0.001

_ZONE_RE = re.compile(r"^intel-rapl(-mmio)?:(\d+)(?::(\d+))?$")


@dataclass
class Zone:
    path: str
    name: str
    mmio: bool
    parent: int
    sub: int | None
    max_range_uj: int | None
    max_power_w: float | None


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def scan(root: str) -> tuple[list[Zone], list[Unavailable], list[str]]:
    """List zones under ``root`` without reading counters. Zones we cannot use become notes."""
    notes: list[str] = []
    if not os.path.isdir(root):
        return [], [Unavailable("rapl", f"{root} does not exist", "RAPL needs Linux on bare metal or a VM that exposes powercap", "missing")], notes
    zones: list[Zone] = []
    # Zones appear both at the top level and nested in their parent's directory.
    candidates: dict[str, str] = {}
    for base, dirs, _files in os.walk(root, followlinks=True):
        for d in dirs:
            if _ZONE_RE.match(d) and d not in candidates:
                candidates[d] = os.path.join(base, d)
        if base.count(os.sep) - root.count(os.sep) >= 2:
            dirs[:] = []
    for d, path in sorted(candidates.items()):
        m = _ZONE_RE.match(d)
        try:
            name = _read_text(os.path.join(path, "name"))
        except OSError as exc:
            notes.append(f"RAPL zone {d}: no readable name ({exc.strerror}); skipped")
            continue
        if not os.path.exists(os.path.join(path, "energy_uj")):
            notes.append(f"RAPL zone {d} ({name}): no energy_uj; skipped")
            continue
        max_range = None
        try:
            max_range = int(_read_text(os.path.join(path, "max_energy_range_uj")))
        except (OSError, ValueError):
            notes.append(f"RAPL zone {d} ({name}): no usable max_energy_range_uj; wraps cannot be corrected")
        limits = []
        for k in (0, 1):  # long-term (PL1) and short-term (PL2) constraints' maxima
            try:
                limits.append(uw_to_w(int(_read_text(os.path.join(path, f"constraint_{k}_max_power_uw")))))
            except (OSError, ValueError):
                pass
        max_power = max(limits) if limits and max(limits) > 0 else None
        zones.append(Zone(path, name, bool(m.group(1)), int(m.group(2)), int(m.group(3)) if m.group(3) else None, max_range, max_power))
    if not zones:
        return [], [Unavailable("rapl", f"no RAPL zones under {root}", "load the intel_rapl_msr module (`modprobe intel_rapl_msr`)", "missing")], notes
    return zones, [], notes


def _socket_of(name: str, zone: Zone, parents: dict[tuple[bool, int], Zone]) -> str:
    if zone.sub is None:
        return name
    parent = parents.get((zone.mmio, zone.parent))
    return parent.name if parent else f"package-{zone.parent}"


def open_rapl(root: str) -> tuple["RaplSensor | None", list[Unavailable], list[str]]:
    """Open the package and dram zones under ``root``. Returns (sensor or None, unavailable, notes)."""
    zones, unavailable, notes = scan(root)
    if not zones:
        return None, unavailable, notes
    parents = {(z.mmio, z.parent): z for z in zones if z.sub is None}
    chosen: list[tuple[str, Zone, str]] = []
    seen: set[tuple[str, str]] = set()
    for z in sorted(zones, key=lambda z: (z.mmio, z.parent, z.sub or -1)):
        base = z.name.split("-")[0]
        if base == "package" and z.sub is None:
            comp = "cpu"
        elif base == "dram":
            comp = "dram"
        elif base == "psys":
            notes.append(f"RAPL {z.name} (whole platform, contains package) not added to package energy")
            continue
        elif base in ("core", "uncore"):
            continue  # nested inside package: adding it would count it twice
        else:
            notes.append(f"RAPL zone {os.path.basename(z.path)} has unknown domain {z.name!r}; skipped")
            continue
        socket = _socket_of(z.name, z, parents)
        ident = (comp, socket)
        if ident in seen:
            notes.append(f"RAPL {os.path.basename(z.path)} duplicates {comp} of {socket} (MSR and MMIO); read once")
            continue
        seen.add(ident)
        chosen.append((comp, z, socket))

    sensor = RaplSensor(chosen)
    notes.extend(sensor.notes)
    unavailable.extend(sensor.unavailable)
    if not sensor.channels:
        return None, unavailable, notes
    return sensor, unavailable, notes


class RaplSensor:
    """Cumulative joules per package (``cpu``) and DRAM zone, wraps left for the sampler."""

    name = "rapl"

    def __init__(self, chosen: list[tuple[str, Zone, str]]):
        self.notes: list[str] = []
        self.unavailable: list[Unavailable] = []
        channels, fds = [], []
        for comp, z, socket in chosen:
            energy_path = os.path.join(z.path, "energy_uj")
            try:
                fd = os.open(energy_path, os.O_RDONLY)
            except PermissionError:
                self.unavailable.append(Unavailable("rapl", f"{energy_path} is not readable by this user", PERMISSION_HINT, "permission"))
                continue
            except OSError as exc:
                self.unavailable.append(Unavailable("rapl", f"{energy_path}: {exc.strerror}", "", "error"))
                continue
            try:
                int(os.pread(fd, 32, 0))
            except (OSError, ValueError) as exc:
                os.close(fd)
                why = exc.strerror if isinstance(exc, OSError) else "content is not an integer"
                kind = "permission" if isinstance(exc, PermissionError) else "error"
                self.unavailable.append(Unavailable("rapl", f"{energy_path}: {why}", PERMISSION_HINT if kind == "permission" else "", kind))
                continue
            zone_id = os.path.basename(z.path)
            wrap_j = uj_to_j(z.max_range_uj) if z.max_range_uj else None
            # RAPL counters update about every millisecond (Intel SDM); no need to learn it.
            details = {"zone": zone_id, "path": energy_path, "update_period_s": RAPL_UPDATE_S,
                       "max_power_w": z.max_power_w or DEFAULT_MAX_POWER_W[comp],
                       "max_power_source": "constraint max_power_uw" if z.max_power_w else "meter's default bound"}
            channels.append(
                Channel(
                    key=f"{comp}:{socket}",
                    component=comp,
                    label=f"RAPL {z.name} ({zone_id})",
                    mode="energy",
                    provenance=COUNTER,
                    scope="whole socket" if comp == "cpu" else "whole memory controller",
                    wrap_j=wrap_j,
                    shared=True,
                    details=details,
                )
            )
            fds.append(fd)
        self.channels = tuple(channels)
        self._fds = tuple(fds)
        self._drop_mirrors()

    def _drop_mirrors(self, wait_s: float = 0.02) -> None:
        """Multi-die AMD parts can expose one package counter several times (codecarbon #1274).
        Zones whose counters are equal now *and* after moving together are read once."""
        pkgs = [i for i, c in enumerate(self.channels) if c.component == "cpu"]
        if len(pkgs) < 2:
            return
        first = self.read()
        ok = [i for i in pkgs if not isinstance(first[i], Fault)]
        # Counters read a few microseconds apart may differ by one update: compare loosely.
        suspects = []
        for i in ok:
            for g in suspects:
                if abs(first[i] - first[g[0]]) <= MIRROR_TOLERANCE_J:
                    g.append(i)
                    break
            else:
                suspects.append([i])
        suspects = [g for g in suspects if len(g) > 1]
        if not suspects:
            return
        time.sleep(wait_s)
        second = self.read()
        drop = set()
        for g in suspects:
            deltas = [second[i] - first[i] if not isinstance(second[i], Fault) else 0.0 for i in g]
            if min(deltas) > 0 and max(deltas) - min(deltas) <= max(MIRROR_TOLERANCE_J, 0.01 * max(deltas)):
                for i in g[1:]:
                    drop.add(i)
                    self.notes.append(f"RAPL {self.channels[i].details['zone']} mirrors {self.channels[g[0]].details['zone']} (identical moving counter); read once")
        if drop:
            for i in sorted(drop):
                os.close(self._fds[i])
            self.channels = tuple(c for i, c in enumerate(self.channels) if i not in drop)
            self._fds = tuple(f for i, f in enumerate(self._fds) if i not in drop)

    def wrap_period_s(self) -> float | None:
        """Shortest time in which any counter could wrap, at its stated or an assumed max power."""
        periods = [
            c.wrap_j / (c.details["max_power_w"] if c.details.get("max_power_source") != "meter's default bound"
                        else ASSUMED_MAX_POWER_W)
            for c in self.channels
            if c.wrap_j
        ]
        return min(periods) if periods else None

    def read(self) -> tuple:
        out = []
        for fd in self._fds:
            try:
                out.append(uj_to_j(int(os.pread(fd, 32, 0))))
            except PermissionError as exc:
                out.append(Fault(f"RAPL read refused: {exc}", PERMISSION_HINT, True))
            except (OSError, ValueError) as exc:
                out.append(Fault(f"RAPL read failed: {exc}", "the powercap driver returned no number this time"))
        return tuple(out)

    def check(self) -> tuple:
        """Once per tick (not on span edges): a zone whose file vanished or was replaced (the
        driver unloaded or reloaded) is a permanent fault; the open descriptor would keep
        returning a stale number."""
        out = []
        for c, fd in zip(self.channels, self._fds, strict=True):
            try:
                mine, now = os.fstat(fd), os.stat(c.details["path"])
                same = mine.st_nlink > 0 and (mine.st_ino, mine.st_dev) == (now.st_ino, now.st_dev)
            except OSError:
                same = False
            out.append(None if same else Fault(f"RAPL zone {c.details['zone']} vanished or was replaced during the run",
                                               "the powercap driver was unloaded or reloaded; energy after that is missing",
                                               True))
        return tuple(out)

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = ()
