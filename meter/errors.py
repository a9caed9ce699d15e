"""Exceptions raised by meter. Every message says what to do about the problem."""

from __future__ import annotations


class MeterError(Exception):
    """Base class of every error meter raises on purpose."""


class ConfigError(MeterError, ValueError):
    """A bad argument, environment variable or ``[tool.meter]`` setting."""


class SensorError(MeterError):
    """Sensors could not be opened when a Meter started. Never raised by spans or the sampler:
    a sensor that fails while measuring becomes a recorded fault."""


class SpanStateError(MeterError, RuntimeError):
    """A span used in a way its state does not allow: its result while open, a rename after exit."""


class CarbonError(MeterError):
    """Carbon intensity could not be determined (unknown region, missing data, provider failure)."""


class RunLogError(MeterError):
    """A run log could not be written or read."""
