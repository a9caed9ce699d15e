"""meter: energy and carbon of machine-learning work, stage by stage.

    import meter
    with meter.track("finetune") as span:
        ...
    span.energy_j, span.energy_by_component, span.emissions_g

Public names only; heavy modules (pandas, pynvml, requests, codecarbon, torch) load on use.
"""

from ._version import __version__
from .core import Meter, default_meter, track
from .errors import CarbonError, ConfigError, MeterError, RunLogError, SensorError, SpanStateError
from .measurement import SCHEMA_VERSION, ComponentEnergy, DeviceEnergy, Measurement
from .spans import Span, Track, current_span


def load(paths, *, live: bool = True):
    """A pandas DataFrame, one row per span of the runs under ``paths`` (a run directory, an
    output directory, or a list of them), with energy by component and provenance, counts, tags,
    and emissions from the run's region and PUE. See :func:`meter.report.frame.load`."""
    from .report.frame import load as _load

    return _load(paths, live=live)


__all__ = [
    "__version__", "Meter", "track", "load", "default_meter", "current_span", "Span", "Track", "Measurement",
    "ComponentEnergy", "DeviceEnergy", "SCHEMA_VERSION", "MeterError", "ConfigError", "SensorError",
    "CarbonError", "RunLogError", "SpanStateError",
]
