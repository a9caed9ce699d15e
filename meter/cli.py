"""Command line: ``meter run``, ``meter doctor``, ``meter report``, ``meter regions``.

The only module that prints or exits. Usage errors follow argparse (exit 2).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from . import __version__
from .errors import MeterError

EXIT_NO_COUNTER = 1


def _err(msg: str) -> None:
    print(f"meter: {msg}", file=sys.stderr)


# -- run ---------------------------------------------------------------------------------------


def _fmt_j(j) -> str:
    if j is None:
        return "n/a"
    return f"{j / 1000:.2f} kJ" if abs(j) >= 1000 else f"{j:.1f} J"


def _summary(result, emissions_g, intensity) -> str:
    lines = [f"meter: {result.name}: {result.duration_s:.2f} s, {_fmt_j(result.energy_j)}"
             + (f", avg {result.avg_power_w:.1f} W" if result.avg_power_w is not None else "")]
    for comp, ce in result.energy_by_component.items():
        lines.append(f"  {comp:<5} {_fmt_j(ce.energy_j):>10}  {ce.provenance}")
    if emissions_g is not None:
        lines.append(f"  emissions {emissions_g:.4g} gCO2eq at {intensity.g_per_kwh:.0f} g/kWh "
                     f"({intensity.zone}, {intensity.method}{', ' + str(intensity.year) if intensity.year else ''})")
    for w in result.warnings:
        lines.append(f"  note: {w}")
    return "\n".join(lines)


def _cmd_run(args) -> int:
    from .core import Meter

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        _err("no command given: meter run [options] -- CMD [ARGS...]")
        return 2
    try:
        # Created before the child starts, so a bad region or an unwritable output directory
        # is reported before any work is done. The CPU estimate covers this process's tree,
        # which is the child's tree plus meter's own small share.
        m = Meter(region=args.region, pue=args.pue, interval_s=args.interval, output_dir=args.output,
                  run_name=args.name, carbon=args.carbon, pid="children", sync_cuda=False)
    except MeterError as exc:
        _err(str(exc))
        return 2
    name = args.name or os.path.basename(cmd[0])
    track = m.track(name, tags={"command": " ".join(cmd)[:500]})
    span = track.__enter__()
    try:
        child = subprocess.Popen(cmd)
    except OSError as exc:
        track.__exit__(None, None, None)
        m.close()
        _err(f"cannot run {cmd[0]!r}: {exc.strerror}")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    sigs = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    live = sys.stderr.isatty() and not args.quiet
    last_live = 0.0
    try:
        while True:
            info = signal.sigtimedwait(sigs, 0.2)
            if info is not None:
                # A terminal's Ctrl-C reaches the child's process group by itself (si_pid 0);
                # a signal sent to meter by another process (kill, a scheduler) is passed on.
                if info.si_signo == signal.SIGTERM or info.si_pid != 0:
                    try:
                        child.send_signal(info.si_signo)
                    except ProcessLookupError:
                        pass
            rc = child.poll()
            if rc is not None:
                break
            if live and time.monotonic() - last_live >= 1.0:
                last_live = time.monotonic()
                snap = span.snapshot()
                print(f"\r\033[Kmeter: {snap.duration_s:7.1f} s  {(snap.avg_power_w or 0):7.1f} W avg  "
                      f"{_fmt_j(snap.energy_j):>10}", end="", file=sys.stderr, flush=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if live:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        if child.poll() is None:
            child.kill()
            child.wait()
        track.__exit__(None, None, None)
        m.close()
    span.tags["exit_code"] = rc
    if not args.quiet:
        print(_summary(span.result, span.emissions_g, m.intensity()), file=sys.stderr)
        print(f"meter: run log in {m.run_dir}", file=sys.stderr)
    return 128 - rc if rc < 0 else rc


# -- doctor ------------------------------------------------------------------------------------


def _cmd_doctor(args) -> int:
    from .core import Meter
    from .runlog import check_writable

    print(f"meter {__version__} doctor")
    try:
        m = Meter(write=False, region=args.region, rapl_root=args.rapl_root, gpus=args.gpus, sync_cuda=False)
    except MeterError as exc:
        _err(str(exc))
        return 2
    try:
        rep = m.sensors_report()
    finally:
        m.close()
    print("\nSensors")
    _print_sensors(rep, details=True)
    counters = sum(c["provenance"] == "counter" for c in rep["channels"])
    print("\nCarbon")
    inten = m.intensity()
    src = m.config.sources.get("region", "default")
    print(f"  region  {m.config.region or '(none)'} from {src}: {inten.name}, {inten.g_per_kwh:.1f} gCO2eq/kWh "
          f"({inten.method}; {inten.source}; {inten.year or 'year n/a'})")
    if inten.method == "region-unknown":
        print("          fix: set Meter(region=...), METER_REGION or [tool.meter] region; list zones with `meter regions`")
    print(f"  pue     {m.config.pue} from {m.config.sources.get('pue')}")
    print(f"  carbon  {m.config.carbon} from {m.config.sources.get('carbon')}")
    print("\nOutput")
    out = m.config.output_dir
    try:
        check_writable(out)
        print(f"  ok      {os.path.abspath(out)} is writable (from {m.config.sources.get('output_dir')})")
        writable = True
    except MeterError as exc:
        print(f"  error   {exc}")
        writable = False
    print()
    if counters:
        print(f"{counters} hardware energy counter(s) readable: energy will be measured.")
        return 0 if writable else 2
    print("No hardware energy counter is readable: energy will be power-integrated or estimated (see above for fixes).")
    return EXIT_NO_COUNTER


# -- regions -----------------------------------------------------------------------------------


def _cmd_regions(args) -> int:
    from . import carbon

    try:
        rows = carbon.regions(args.query)
    except MeterError as exc:
        _err(str(exc))
        return 2
    if not rows:
        from .carbon import offline

        close = offline.close_matches(args.query or "")
        _err(f"no zone matches {args.query!r}" + (f"; close: {', '.join(close)}" if close else ""))
        return 1
    wz = max(len(r["zone"]) for r in rows)
    wn = min(max(len(r["name"]) for r in rows), 60)
    print(f"{'zone':<{wz}}  {'name':<{wn}}  {'gCO2eq/kWh':>10}  {'year':>4}  {'factor':<11}  source")
    for r in rows:
        print(f"{r['zone']:<{wz}}  {r['name'][:wn]:<{wn}}  {r['g_per_kwh']:>10.1f}  {str(r['year'] or '-'):>4}  {r['factor']:<11}  {r['source']}")
    return 0


# -- report ------------------------------------------------------------------------------------


def _cmd_report(args) -> int:
    from .report import cards

    try:
        text = cards.render_paths(args.dirs, fmt=args.format, compare=args.compare, live=not args.offline)
    except (MeterError, OSError) as exc:
        _err(str(exc))
        return 2
    if args.output:
        mode = "wb" if isinstance(text, bytes) else "w"
        with open(args.output, mode) as f:
            f.write(text)
        print(f"meter: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text if isinstance(text, str) else text.decode())
    return 0


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meter", description="Energy and carbon of ML work, stage by stage.")
    p.add_argument("--version", action="version", version=f"meter {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{run,doctor,report,regions}")

    r = sub.add_parser("run", help="run a command and measure it as one stage",
                       description="Run CMD as a child and measure it as one span. Its exit code becomes meter's.")
    r.add_argument("--region", help="grid zone for emissions (see `meter regions`)")
    r.add_argument("--pue", type=float, help="power usage effectiveness, >= 1")
    r.add_argument("--output", help="output directory for the run log (default meter-runs)")
    r.add_argument("--interval", type=float, help="sampling interval in seconds (default 0.1)")
    r.add_argument("--name", help="stage name (default: the command's name)")
    r.add_argument("--carbon", help="live intensity: electricitymaps[:ZONE] or uk[:GB-N]")
    r.add_argument("-q", "--quiet", action="store_true", help="no live line and no summary")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    r.set_defaults(func=_cmd_run)

    d = sub.add_parser("doctor", help="which sensors work here, why others do not, and how to fix them",
                       description="Exit status: 0 when at least one hardware energy counter is readable, "
                                   "1 when energy would only be power-integrated or estimated, 2 on a configuration error.")
    d.add_argument("--rapl-root")
    d.add_argument("--gpus")
    d.add_argument("--region")
    d.set_defaults(func=_cmd_doctor)

    rp = sub.add_parser("report", help="render efficiency cards and comparisons from run logs")
    rp.add_argument("dirs", nargs="+", help="run directories or output directories holding runs")
    rp.add_argument("--format", choices=("md", "json", "html", "hf", "latex", "climate"), default="md")
    rp.add_argument("-o", "--output", help="write to FILE instead of standard output")
    rp.add_argument("--compare", help="a baseline run directory to compare against")
    rp.add_argument("--offline", action="store_true", help="never call a live carbon provider")
    rp.set_defaults(func=_cmd_report)

    g = sub.add_parser("regions", help="list or search carbon-intensity zones")
    g.add_argument("query", nargs="?")
    g.set_defaults(func=_cmd_regions)

    s = sub.add_parser("sensors", help="list the sensors found (short form of doctor)")
    s.add_argument("--rapl-root")
    s.add_argument("--gpus")
    s.set_defaults(func=_cmd_sensors)
    return p


def _cmd_sensors(args) -> int:
    from .core import Meter

    m = Meter(write=False, rapl_root=args.rapl_root, gpus=args.gpus, sync_cuda=False)
    try:
        rep = m.sensors_report()
    finally:
        m.close()
    print(f"meter {__version__}: sensors on this machine")
    _print_sensors(rep, details=False)
    return 0


def _print_sensors(rep: dict, *, details: bool) -> None:
    for c in rep["channels"]:
        print(f"  found   {c['key']:<20} {c['provenance']:<17} {c['label']}  [{c['scope']}]")
        for k in ("tdp_source", "source", "mig", "power_source") if details else ():
            if c.get("details", {}).get(k):
                print(f"          {k.replace('_', ' ')}: {c['details'][k]}")
    for u in rep["unavailable"]:
        print(f"  absent  {u['sensor']:<20} {u['reason']}")
        if u["hint"]:
            print(f"          fix: {u['hint']}")
    for n in rep["notes"]:
        print(f"  note    {n}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        return _cmd_sensors(parser.parse_args(["sensors"]))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
