"""Provenance of a run: CPU, GPUs, driver, RAM, OS, Python, torch and meter versions."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from ._version import __version__
from .units import BYTES_PER_GB


def describe_host(discovery=None) -> dict[str, Any]:
    """Facts about this machine that make a measurement reproducible. Imports nothing heavy:
    torch and transformers versions are read only if the user already imported them."""
    from .sensors.estimate import cpu_model, socket_count

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "meter": __version__,
        "cpu_model": cpu_model(),
        "cpu_sockets": socket_count(),
        "logical_cpus": os.cpu_count(),
    }
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / BYTES_PER_GB, 2)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported: RAM unknown
        info["ram_gb"] = None
    for mod in ("torch", "transformers"):
        m = sys.modules.get(mod)
        if m is not None:
            info[f"{mod}_version"] = getattr(m, "__version__", "unknown")
    gpus = []
    if discovery is not None:
        for s in discovery.sensors:
            if s.name == "nvml":
                info["nvidia_driver"] = getattr(s, "driver", "unknown")
                for c in s.channels:
                    gpus.append({"index": c.details.get("index"), "name": c.details.get("name"),
                                 "uuid": c.details.get("uuid"), "mig": bool(c.shared)})
    info["gpus"] = gpus
    return info


def hardware_summary(host: dict[str, Any]) -> str:
    """One line for cards: ``1x NVIDIA H100 80GB HBM3; Intel Xeon ... (1 socket); 503 GB RAM``."""
    parts = []
    names: dict[str, int] = {}
    for g in host.get("gpus") or []:
        names[g.get("name") or "GPU"] = names.get(g.get("name") or "GPU", 0) + 1
    parts.extend(f"{n}x {name}" for name, n in names.items())
    if host.get("cpu_model"):
        sockets = host.get("cpu_sockets") or 1
        parts.append(f"{sockets}x {host['cpu_model']}")
    if host.get("ram_gb"):
        parts.append(f"{host['ram_gb']:g} GB RAM")
    return "; ".join(parts) or "unknown hardware"
