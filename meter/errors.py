"""Exceptions raised by meter. Every message says what to do about the problem."""

from __future__ import annotations


class MeterError(Exception):
    """Base class of every error meter raises on purpose."""


class ConfigError(MeterError, ValueError):
    """A bad argument, environment variable or ``[tool.meter]`` setting."""


class SensorError(MeterError):
    """A sensor could not be read. Never raised into user code by spans or the sampler."""


class PermissionDenied(SensorError, PermissionError):
    """A sensor exists but this user may not read it (e.g. root-only RAPL ``energy_uj``)."""


class CarbonError(MeterError):
    """Carbon intensity could not be determined (unknown region, missing data, provider failure)."""


class RunLogError(MeterError):
    """A run log could not be written or read."""
