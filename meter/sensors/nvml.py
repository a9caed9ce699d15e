"""NVIDIA GPUs through NVML (the ``pynvml`` module of ``nvidia-ml-py``).

Energy from ``nvmlDeviceGetTotalEnergyConsumption`` (mJ, Volta and newer) where the device
supports it; otherwise power, from the instantaneous field ``NVML_FI_DEV_POWER_INSTANT`` (186)
where the driver fills it, else ``nvmlDeviceGetPowerUsage`` (mW), for the sampler to integrate.

Only the GPUs this process can see are read: ``gpus="visible"`` follows ``CUDA_VISIBLE_DEVICES``
(indices, ``GPU-`` UUIDs or unique prefixes of them, ``MIG-`` UUIDs) and ``CUDA_DEVICE_ORDER``.
MIG slices are read as their whole parent GPU and flagged ``shared``: NVML has no per-slice energy.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from ..errors import ConfigError
from ..units import MJ_PER_J, mj_to_j, mw_to_w
from .base import COUNTER, POWER_INTEGRATED, Channel, Fault, Unavailable

FI_DEV_POWER_INSTANT = 186
#: The plausibility bound of a GPU's counter when NVML states no power limit (generous: the
#: largest accelerators draw ~1.2 kW).
DEFAULT_MAX_POWER_W = 2000.0

_INSTALL_HINT = "install the NVIDIA driver (it ships libnvidia-ml.so.1) on a machine with an NVIDIA GPU"
# Codes that mean the device is gone for the rest of the run.
_PERMANENT_CODES = {15, 16, 28}  # GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND


def _code(exc: BaseException) -> int | None:
    return getattr(exc, "value", None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _init_failure(exc: BaseException) -> Unavailable:
    code = _code(exc)
    hints = {
        9: "the NVIDIA kernel driver is not loaded: check `nvidia-smi`",
        12: _INSTALL_HINT,
        4: "this user may not query the GPU: ask an administrator for access to /dev/nvidia*",
        18: "the driver and its user-space library differ: reboot or reload the driver",
    }
    kind = "missing" if code in (9, 12) else ("permission" if code == 4 else "error")
    return Unavailable("nvml", f"NVML init failed: {exc}", hints.get(code, "check `nvidia-smi`"), kind)


def parse_selector(text: str) -> list[str]:
    """Split a CUDA_VISIBLE_DEVICES-style string into entries (empty entries dropped)."""
    return [p.strip() for p in text.split(",") if p.strip()]


class _Dev:
    __slots__ = ("index", "handle", "uuid", "name", "mig", "mig_note")

    def __init__(self, index: int, handle: Any, uuid: str, name: str):
        self.index = index
        self.handle = handle
        self.uuid = uuid
        self.name = name
        self.mig = False
        self.mig_note = ""


def _cuda_order(devs: list[_Dev], order: str, notes: list[str]) -> list[_Dev]:
    """The order in which CUDA numbers the devices.

    NVML enumerates in PCI bus order. CUDA does too with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; its
    default, FASTEST_FIRST, only differs when the GPUs differ, and then only CUDA itself knows
    the order, so we ask torch when it is already imported and initialised.
    """
    if order == "PCI_BUS_ID" or len({d.name for d in devs}) <= 1:
        return devs
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            by_uuid = {d.uuid.lower(): d for d in devs}
            ordered = []
            for i in range(torch.cuda.device_count()):
                u = "GPU-" + str(torch.cuda.get_device_properties(i).uuid)
                ordered.append(by_uuid[u.lower()])
            if len(ordered) == len(devs):
                return ordered
    except (AttributeError, KeyError, RuntimeError):
        pass
    notes.append(
        "GPUs of different models with CUDA_DEVICE_ORDER unset: CUDA numbers them fastest first, "
        "which NVML cannot see; assuming PCI bus order. Set CUDA_DEVICE_ORDER=PCI_BUS_ID to make "
        "CUDA indices and meter's agree."
    )
    return devs


def _mig_children(nv: Any, dev: _Dev) -> list[str]:
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(dev.handle)
    except Exception:  # noqa: BLE001 - any NVML failure here just means "no MIG"
        return []
    if not current:
        return []
    dev.mig = True
    uuids = []
    try:
        count = nv.nvmlDeviceGetMaxMigDeviceCount(dev.handle)
    except Exception:  # noqa: BLE001
        return []
    for i in range(count):
        try:
            mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(dev.handle, i)
            uuids.append(_text(nv.nvmlDeviceGetUUID(mh)))
        except Exception:  # noqa: BLE001 - unpopulated slots raise NOT_FOUND
            continue
    return uuids


def select_devices(
    devs: list[_Dev], nv: Any, gpus: Any, environ: dict[str, str], notes: list[str]
) -> list[_Dev]:
    """Resolve a ``gpus=`` selection (``"visible"``, ``"all"``, or a list of indices/UUIDs)."""
    by_mig: dict[str, _Dev] = {}
    for d in devs:
        for mu in _mig_children(nv, d):
            by_mig[mu.lower()] = d

    if gpus == "all":
        return devs
    if gpus in (None, "visible"):
        raw = environ.get("CUDA_VISIBLE_DEVICES")
        if raw is None:
            return devs
        entries = parse_selector(raw)
        source = "CUDA_VISIBLE_DEVICES"
        ordered = _cuda_order(devs, environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST"), notes)
        strict = False  # CUDA silently ignores entries after the first invalid one
    else:
        if isinstance(gpus, (str, int)):
            entries = parse_selector(str(gpus))
        else:
            entries = [str(g).strip() for g in gpus]
        source = "gpus="
        ordered = devs  # an explicit selection names NVML indices
        strict = True

    chosen: list[_Dev] = []
    for entry in entries:
        dev = _match(entry, ordered, by_mig)
        if dev is None:
            msg = (
                f"{source} entry {entry!r} matches no GPU; valid are indices 0..{len(devs) - 1} "
                f"or UUIDs ({', '.join(d.uuid for d in devs) or 'none found'})"
            )
            if strict:
                raise ConfigError(msg)
            notes.append(msg + "; CUDA ignores it and every entry after it, and so does meter")
            break
        if entry.upper().startswith("MIG-"):
            dev.mig_note = (
                f"{entry} is a MIG slice of GPU {dev.index}; NVML reports energy for the whole "
                "GPU only, so this reading includes every slice on it"
            )
        if dev not in chosen:
            chosen.append(dev)
    return chosen


def _match(entry: str, ordered: list[_Dev], by_mig: dict[str, _Dev]) -> _Dev | None:
    if entry.lstrip("-").isdigit():
        i = int(entry)
        return ordered[i] if 0 <= i < len(ordered) else None
    low = entry.lower()
    if low.startswith("mig-"):
        if low in by_mig:
            return by_mig[low]
        # Old style MIG-GPU-<parent uuid>/<gi>/<ci>
        parent = low[4:].split("/")[0]
        hits = [d for d in ordered if d.uuid.lower() == parent]
        return hits[0] if len(hits) == 1 else None
    if not low.startswith("gpu-"):
        low = "gpu-" + low
    hits = [d for d in ordered if d.uuid.lower().startswith(low)]
    return hits[0] if len(hits) == 1 else None


def open_nvml(
    *, gpus: Any = "visible", binding: Any = None, environ: dict[str, str] | None = None,
    owner: Any = None,
) -> tuple["NvmlSensor | None", list[Unavailable], list[str]]:
    """Initialise NVML and select devices. Returns (sensor or None, unavailable, notes).
    ``owner`` (a :class:`meter.distributed.Ownership`) in a distributed job: the visible GPUs are
    resolved with the other ranks by UUID and only those this rank owns are kept (NVML is shut
    down again when it owns none)."""
    environ = os.environ if environ is None else environ
    notes: list[str] = []
    explicit = gpus not in (None, "visible", "all")
    if binding is None:
        try:
            import pynvml as binding  # noqa: PLC0415 - heavy-ish, imported on demand
        except ImportError:
            return None, [Unavailable("nvml", "pynvml is not installed", "pip install nvidia-ml-py")], notes
    nv = binding
    try:
        nv.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - any init failure is "no GPU sensor"
        if explicit:
            raise ConfigError(f"gpus={gpus!r} was requested but {_init_failure(exc).reason}") from exc
        return None, [_init_failure(exc)], notes
    try:
        count = nv.nvmlDeviceGetCount()
        devs = []
        for i in range(count):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            devs.append(_Dev(i, h, _text(nv.nvmlDeviceGetUUID(h)), _text(nv.nvmlDeviceGetName(h))))
    except Exception as exc:  # noqa: BLE001
        _shutdown(nv)
        return None, [Unavailable("nvml", f"listing GPUs failed: {exc}", "check `nvidia-smi`", "error")], notes
    try:
        chosen = select_devices(devs, nv, gpus, environ, notes)
    except ConfigError:
        _shutdown(nv)
        raise
    handed_off: list[str] = []
    if owner is not None:
        owner.resolve([d.uuid for d in chosen])
        handed_off = [d.uuid for d in chosen if not owner.owns_gpu(d.uuid)]
        if handed_off:
            chosen = [d for d in chosen if owner.owns_gpu(d.uuid)]
            notes.append("distributed job: " + ", ".join(
                f"{u} is measured by rank {owner.gpu_owners.get(u)}" for u in handed_off) + " (the lowest rank that sees it)")
    if not chosen:
        _shutdown(nv)
        if handed_off:
            return None, [Unavailable("nvml", "every GPU this rank sees is measured by a lower rank that sees it too",
                                      "", "not-needed")], notes
        why = "no NVIDIA GPU found" if not devs else "no GPU is visible to this process"
        hint = "" if not devs else "CUDA_VISIBLE_DEVICES hides them; unset it or name the GPUs"
        return None, [Unavailable("nvml", why, hint, "missing")], notes
    sensor = NvmlSensor(nv, chosen, notes)
    return sensor, sensor.unavailable, notes


def _shutdown(nv: Any) -> None:
    try:
        nv.nvmlShutdown()
    except Exception:  # noqa: BLE001 - shutting down a broken library is best effort
        pass


def _raw_energy_call(nv: Any, handles: tuple) -> tuple | None:
    """pynvml's C function for the energy counter, with one result buffer per device, checked
    once against the public call; None for other bindings (FakeNVML) or on any doubt."""
    get_fn = getattr(nv, "_nvmlGetFunctionPointer", None)
    if get_fn is None:
        return None
    try:
        import ctypes

        fn = get_fn("nvmlDeviceGetTotalEnergyConsumption")
        bufs = tuple(ctypes.c_uint64() for _ in handles)
        pairs = tuple((h, ctypes.byref(b)) for h, b in zip(handles, bufs, strict=True))
        for (h, ref), b in zip(pairs, bufs, strict=True):
            if fn(h, ref) != 0 or b.value > nv.nvmlDeviceGetTotalEnergyConsumption(h):
                return None
        return fn, pairs, bufs
    except Exception:  # noqa: BLE001 - the public call stays in use
        return None


def _field_value(v: Any) -> float:
    vt = int(v.valueType)
    val = v.value
    return float(
        (val.dVal, val.uiVal, val.ulVal, val.ullVal, val.sllVal, val.siVal, val.usVal)[vt]
        if 0 <= vt <= 6
        else val.uiVal
    )


class NvmlSensor:
    """One channel per selected GPU: an energy counter where supported, else power."""

    name = "nvml"

    def __init__(self, nv: Any, devs: Sequence[_Dev], notes: list[str]):
        self._nv = nv
        self.unavailable: list[Unavailable] = []
        channels = []
        readers = []
        try:
            self.driver = _text(nv.nvmlSystemGetDriverVersion())
        except Exception:  # noqa: BLE001
            self.driver = "unknown"
        for d in devs:
            reader, prov, detail = self._choose_reader(d)
            details = {"index": d.index, "uuid": d.uuid, "name": d.name, "power_source": detail,
                       **self._max_power(d)}
            scope = "device"
            if d.mig:
                scope = "whole GPU (MIG enabled)"
                details["mig"] = d.mig_note or "MIG is enabled; the reading covers every slice on this GPU"
            channels.append(
                Channel(
                    key=f"gpu:{d.index}",
                    component="gpu",
                    label=f"{d.name} [{d.index}]",
                    mode="energy" if prov == COUNTER else "power",
                    provenance=prov,
                    scope=scope,
                    shared=d.mig,
                    details=details,
                )
            )
            readers.append(reader)
        self.channels = tuple(channels)
        self._readers = tuple(readers)
        self._power_readers = tuple(self._instant_reader(d) for d in devs)
        self._dead: dict[int, Fault] = {}
        # Every channel an energy counter and no device lost: an edge is one call per device.
        self._edge_plain = all(c.mode == "energy" for c in self.channels)
        self._energy_fn = getattr(nv, "nvmlDeviceGetTotalEnergyConsumption", None)
        self._handles = tuple(d.handle for d in devs)
        self._raw = _raw_energy_call(nv, self._handles) if self._edge_plain else None

    def _max_power(self, d: _Dev) -> dict:
        try:
            _lo, hi = self._nv.nvmlDeviceGetPowerManagementLimitConstraints(d.handle)
            if hi and int(hi) > 0:
                return {"max_power_w": mw_to_w(int(hi)), "max_power_source": "NVML power limit constraint"}
        except Exception:  # noqa: BLE001 - not every GPU or binding has it: a generous bound instead
            pass
        return {"max_power_w": DEFAULT_MAX_POWER_W, "max_power_source": "meter's default bound"}

    def _instant_reader(self, d: _Dev):
        nv, h = self._nv, d.handle
        try:
            if int(nv.nvmlDeviceGetFieldValues(h, [FI_DEV_POWER_INSTANT])[0].nvmlReturn) == 0:

                def instant() -> float:
                    v = nv.nvmlDeviceGetFieldValues(h, [FI_DEV_POWER_INSTANT])[0]
                    if int(v.nvmlReturn) != 0:  # this read failed: no value, never 0 W
                        raise nv.NVMLError(int(v.nvmlReturn))
                    return mw_to_w(_field_value(v))

                return instant
        except Exception:  # noqa: BLE001 - no field API: fall back to the power call
            pass
        return lambda: mw_to_w(nv.nvmlDeviceGetPowerUsage(h))

    def read_power(self) -> tuple:
        """Instantaneous power (W) per channel, or None where it cannot be read. Used by the
        sampler for counters that update coarsely, to correct spans shorter than an update."""
        out = []
        for i, r in enumerate(self._power_readers):
            if i in self._dead:
                out.append(None)
                continue
            try:
                out.append(float(r()))
            except Exception:  # noqa: BLE001 - power is a refinement; energy stays exact
                out.append(None)
        return tuple(out)

    def _choose_reader(self, d: _Dev):
        nv, h = self._nv, d.handle
        try:
            nv.nvmlDeviceGetTotalEnergyConsumption(h)
            return (lambda: mj_to_j(nv.nvmlDeviceGetTotalEnergyConsumption(h))), COUNTER, "nvmlDeviceGetTotalEnergyConsumption"
        except Exception as exc:  # noqa: BLE001
            why = f"energy counter unavailable ({exc})"
        try:
            vals = nv.nvmlDeviceGetFieldValues(h, [FI_DEV_POWER_INSTANT])
            if int(vals[0].nvmlReturn) == 0:

                def read_instant():
                    v = nv.nvmlDeviceGetFieldValues(h, [FI_DEV_POWER_INSTANT])[0]
                    if int(v.nvmlReturn) != 0:
                        raise nv.NVMLError(int(v.nvmlReturn))
                    return mw_to_w(_field_value(v))

                return read_instant, POWER_INTEGRATED, f"NVML_FI_DEV_POWER_INSTANT; {why}"
        except Exception:  # noqa: BLE001 - field API missing or refused: try the next source
            pass
        return (lambda: mw_to_w(nv.nvmlDeviceGetPowerUsage(h))), POWER_INTEGRATED, f"nvmlDeviceGetPowerUsage; {why}"

    def read(self) -> tuple:
        raw = self._raw
        if raw is not None and self._edge_plain:
            fn, pairs, bufs = raw
            for h, ref in pairs:
                if fn(h, ref):
                    break
            else:
                return tuple([b.value / MJ_PER_J for b in bufs])
        return tuple([self._read_index(i) for i in range(len(self._readers))])

    def read_edge(self) -> tuple:
        """What a span edge reads: the energy counters, one NVML call per device. Power-only
        channels give None: the sampler thread polls them and the edge extends their last value."""
        if self._edge_plain:
            raw = self._raw
            if raw is not None:
                # The library's own function, called with buffers made once: the same C call as
                # pynvml's wrapper without its per-call lookup, allocation and checks. Any
                # return code but success is read again through the path that makes Faults.
                fn, pairs, bufs = raw
                for h, ref in pairs:
                    if fn(h, ref):
                        return tuple([self._read_index(i) for i in range(len(self._readers))])
                return tuple([b.value / MJ_PER_J for b in bufs])
            get = self._energy_fn
            try:
                return tuple([get(h) / MJ_PER_J for h in self._handles])
            except Exception:  # noqa: BLE001 - read again through the path that turns errors into Faults
                return self.read()
        return tuple([None if self.channels[i].mode == "power" else self._read_index(i)
                      for i in range(len(self._readers))])

    def _read_index(self, i: int):
        dead = self._dead.get(i)
        if dead is not None:
            return dead
        try:
            return self._readers[i]()
        except Exception as exc:  # noqa: BLE001 - NVML errors become Faults, never raise
            code = _code(exc)
            permanent = code in _PERMANENT_CODES
            fault = Fault(
                f"{self.channels[i].key}: {exc}",
                "the GPU fell off the bus or needs a reset; see `nvidia-smi` and dmesg"
                if permanent
                else "a transient NVML error; the next read will try again",
                permanent,
            )
            if permanent:
                self._dead[i] = fault
                self._edge_plain = False
            return fault

    def close(self) -> None:
        _shutdown(self._nv)
