"""meter: energy and carbon of machine-learning work, stage by stage.

    import meter
    with meter.track("finetune") as span:
        ...
    span.energy_j, span.energy_by_component, span.emissions_g

Public names only; heavy modules (pandas, pynvml, requests, codecarbon, torch) load on use.
"""

from ._version import __version__
from .core import Meter, default_meter, track
from .errors import CarbonError, ConfigError, MeterError, PermissionDenied, RunLogError, SensorError
from .spans import ComponentEnergy, DeviceEnergy, Measurement, Span, current_span


def load(paths):
    """One pandas DataFrame row per span of the runs under ``paths`` (see meter.runlog.load)."""
    from .runlog import load as _load

    return _load(paths)


__all__ = [
    "__version__", "Meter", "track", "load", "default_meter", "current_span", "Span", "Measurement",
    "ComponentEnergy", "DeviceEnergy", "MeterError", "ConfigError", "SensorError", "PermissionDenied",
    "CarbonError", "RunLogError",
]
