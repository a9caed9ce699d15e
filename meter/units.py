"""Unit conversions. The only home of unit constants; SI (J, W, s, g) everywhere else."""

from __future__ import annotations

J_PER_KWH = 3.6e6
UJ_PER_J = 1e6
MJ_PER_J = 1e3  # millijoules per joule
MW_PER_W = 1e3  # milliwatts per watt
UW_PER_W = 1e6  # microwatts per watt
BYTES_PER_GB = 1e9
S_PER_HOUR = 3600.0
# 1 lb/MWh in g/kWh: 453.59237 g per lb / 1000 kWh per MWh.
G_PER_KWH_PER_LB_PER_MWH = 0.45359237


def uj_to_j(uj: float) -> float:
    """Microjoules to joules."""
    return uj / UJ_PER_J


def mj_to_j(mj: float) -> float:
    """Millijoules to joules."""
    return mj / MJ_PER_J


def uw_to_w(uw: float) -> float:
    """Microwatts to watts."""
    return uw / UW_PER_W


def mw_to_w(mw: float) -> float:
    """Milliwatts to watts."""
    return mw / MW_PER_W


def j_to_kwh(j: float) -> float:
    """Joules to kilowatt-hours, exactly (1 kWh = 3.6e6 J)."""
    return j / J_PER_KWH


def kwh_to_j(kwh: float) -> float:
    """Kilowatt-hours to joules, exactly."""
    return kwh * J_PER_KWH


def lb_per_mwh_to_g_per_kwh(value: float) -> float:
    """Emission factor in lb/MWh (eGRID, WattTime) to g/kWh."""
    return value * G_PER_KWH_PER_LB_PER_MWH
