"""Reading hardware, and nothing else.

A sensor owns a few *channels* (one per device or zone). ``Sensor.read()`` returns one value per
channel, in channel order: cumulative joules for ``mode="energy"`` channels, watts for
``mode="power"`` channels, or a :class:`Fault` when that channel could not be read this time.
Sensors never raise from ``read()`` for hardware trouble; they interpret their own errors into a
``Fault`` with a reason and a hint. Turning values into energy is the sampler's job.
"""

from __future__ import annotations

from typing import Any

from .base import COMPONENTS, COUNTER, ESTIMATED, POWER_INTEGRATED, Channel, Discovery, Fault, Sensor, Unavailable

__all__ = ["COMPONENTS", "COUNTER", "ESTIMATED", "POWER_INTEGRATED", "Channel", "Discovery", "Fault", "Sensor",
           "Unavailable", "discover"]


def discover(
    *,
    gpus: Any = "visible",
    rapl_root: str = "/sys/class/powercap",
    nvml: Any = None,
    estimate: bool = True,
    cpu_tdp_w: float | None = None,
    cpu_power_w: float | None = None,
    pid: int | str | None = None,
    environ: dict[str, str] | None = None,
    host_owner: bool = True,
    owner: Any = None,
) -> Discovery:
    """Find every readable sensor. Never raises for hardware trouble: problems become
    :class:`Unavailable` entries. Raises :class:`~meter.errors.ConfigError` only for a bad
    ``gpus`` selection, which is the caller's input.

    CPU and DRAM are estimated only when RAPL gives no package counter; the estimate is always
    labelled ``estimated``. In a distributed job, ``owner`` (a
    :class:`meter.distributed.Ownership`) decides with the other ranks which visible GPUs (by
    UUID) and whether this node's host sensors are this rank's; ``host_owner=False`` alone
    leaves whole-socket RAPL counters to another process. A rank that does not own the host
    sensors still estimates the RAM of its own process where no DRAM counter exists, and its CPU
    time where no package counter exists (each rank's own process tree: they sum correctly).
    """
    from . import nvml as nvml_mod
    from . import rapl as rapl_mod

    found = Discovery()
    if gpus == ():
        found.unavailable.append(Unavailable("nvml", "GPU measurement disabled (gpus='none')", "", "not-needed"))
    else:
        gpu_sensor, gpu_unavail, gpu_notes = nvml_mod.open_nvml(gpus=gpus, binding=nvml, environ=environ, owner=owner)
        if gpu_sensor is not None:
            found.sensors.append(gpu_sensor)
        found.unavailable.extend(gpu_unavail)
        found.notes.extend(gpu_notes)

    if owner is not None:
        owner.resolve([])  # no GPU seen (or NVML missing): this rank still answers the others
        host_owner = owner.host_owner
    rapl_sensor, rapl_unavail, rapl_notes = rapl_mod.open_rapl(rapl_root)
    found.unavailable.extend(rapl_unavail)
    found.notes.extend(rapl_notes)
    have_cpu = False
    have_dram = False
    if rapl_sensor is not None and not host_owner:
        # The node's local rank 0 reads these whole-socket counters; they already contain this
        # process, so it neither reads nor estimates what they cover.
        have_cpu = any(c.component == "cpu" for c in rapl_sensor.channels)
        have_dram = any(c.component == "dram" for c in rapl_sensor.channels)
        rapl_sensor.close()
        rapl_sensor = None
        who = getattr(owner, "host_owner_rank", None)
        found.notes.append(f"RAPL counters are read by {'rank ' + str(who) if who is not None else 'local rank 0'}, "
                           "the lowest rank of this node (they cover the whole socket)")
    if rapl_sensor is not None:
        found.sensors.append(rapl_sensor)
        have_cpu = any(c.component == "cpu" for c in rapl_sensor.channels)
        have_dram = any(c.component == "dram" for c in rapl_sensor.channels)

    if estimate and not (have_cpu and have_dram):
        from . import estimate as est_mod

        est = est_mod.EstimateSensor(cpu=not have_cpu, ram=not have_dram, cpu_tdp_w=cpu_tdp_w,
                                     cpu_power_w=cpu_power_w, pid=pid)
        found.sensors.append(est)
        for comp in ("cpu", "dram"):
            if any(c.component == comp for c in est.channels):
                found.notes.append(
                    f"{comp} energy is estimated ({est.assumptions_text(comp)}); "
                    "no hardware counter was readable for it"
                )
    return found
