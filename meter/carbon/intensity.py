"""Grid carbon intensity, with where it came from."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Intensity:
    """Grid carbon intensity used to turn energy into emissions.

    ``series`` holds ``(from_epoch_s, to_epoch_s, g_per_kwh)`` intervals for time-resolved
    intensity (live providers); ``g_per_kwh`` is then their time-weighted mean, used for energy
    outside the series.
    """

    zone: str
    name: str
    g_per_kwh: float
    source: str
    year: int | None
    kind: str = "average"  # average | marginal
    factor: str = "lifecycle"  # lifecycle | direct | operational | unspecified
    method: str = "offline"  # offline | live | fallback | region-unknown | ip-geolocation
    note: str = ""
    series: tuple = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        out = {
            "zone": self.zone, "name": self.name, "g_per_kwh": self.g_per_kwh, "source": self.source,
            "year": self.year, "kind": self.kind, "factor": self.factor, "method": self.method,
        }
        if self.note:
            out["note"] = self.note
        if self.series:
            out["series"] = [list(p) for p in self.series]
        return out

    def at(self, epoch_s: float) -> float:
        """Intensity at a moment: the series interval containing it, else ``g_per_kwh``."""
        if not self.series:
            return self.g_per_kwh
        starts = [p[0] for p in self.series]
        i = bisect.bisect_right(starts, epoch_s) - 1
        if i >= 0 and self.series[i][0] <= epoch_s < self.series[i][1]:
            return self.series[i][2]
        return self.g_per_kwh
