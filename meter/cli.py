"""Command line: ``meter run``, ``meter doctor``, ``meter report``, ``meter regions``.

The only module that prints or exits. Usage errors follow argparse (exit 2); every other
configuration error (a :class:`~meter.errors.MeterError`) is caught once, in :func:`main`, and
printed as one line with its fix, exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from . import __version__
from .errors import ConfigError, MeterError

EXIT_NO_COUNTER = 1
EXIT_CONFIG = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool killed by SIGPIPE

# Fixes for core messages that name the problem but not the remedy (matched on the message).
_FIXES = (
    (re.compile(r"^gpus=.* was requested but"),
     "fix: pass --gpus none (or set METER_GPUS=none) on a machine without an NVIDIA driver, "
     "or install the driver so that `nvidia-smi` works"),
    (re.compile(r"^\S+ does not exist$|^no meter runs"),
     "fix: give run directories (holding run.json) or the output directory that holds them, e.g. meter-runs"),
)


def _err(msg: str) -> None:
    print(f"meter: {msg}", file=sys.stderr)


def error_line(exc: BaseException) -> str:
    """One line for a configuration error: the message, with its fix when the message lacks one."""
    text = " ".join(str(exc).split())
    for pattern, fix in _FIXES:
        if pattern.search(text) and "fix:" not in text:
            text = f"{text}; {fix}"
    return text


# -- run ---------------------------------------------------------------------------------------


def _fmt_j(j) -> str:
    if j is None:
        return "n/a"
    return f"{j / 1000:.2f} kJ" if abs(j) >= 1000 else f"{j:.1f} J"


def _summary(result, emissions_g, intensity) -> str:
    from .report.escape import clean

    lines = [f"meter: {clean(result.name)}: {result.duration_s:.2f} s, {_fmt_j(result.energy_j)}"
             + (f", avg {result.avg_power_w:.1f} W" if result.avg_power_w is not None else "")]
    for comp, ce in result.energy_by_component.items():
        lines.append(f"  {comp:<5} {_fmt_j(ce.energy_j):>10}  {ce.provenance}")
    if emissions_g is not None:
        lines.append(f"  emissions {emissions_g:.4g} gCO2eq at {intensity.g_per_kwh:.0f} g/kWh "
                     f"({intensity.zone}, {intensity.method}{', ' + str(intensity.year) if intensity.year else ''})")
    for w in result.warnings:
        lines.append(f"  note: {clean(w)}")
    return "\n".join(lines)


def _cmd_run(args) -> int:
    from .core import Meter

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        _err("no command given: meter run [options] -- CMD [ARGS...]")
        return EXIT_CONFIG
    # A command that cannot be started is refused before the Meter exists, so no run log (and
    # no "complete" record of work that never ran) is written.
    exe = shutil.which(cmd[0])
    if exe is None:
        why = "not found or not executable" if os.sep in cmd[0] else "not found on PATH"
        _err(f"cannot run {cmd[0]!r}: {why}; nothing was measured")
        return 126 if os.path.exists(cmd[0]) else 127
    # Created before the child starts, so a bad region, an unwritable output directory or GPUs
    # that cannot be read are reported before any work is done. The CPU estimate covers the
    # processes this one starts (the command's tree), once, and not meter's own polling.
    # run.json records this process's argv: with secret-looking values masked (the writer does
    # that for every run), or nothing at all with --no-argv.
    from .redact import env_secrets, mask_argv

    m = Meter(region=args.region, pue=args.pue, interval_s=args.interval, quiet_interval_s=args.quiet_interval,
              output_dir=args.output,
              run_name=args.name, carbon=args.carbon, pid="children", sync_cuda=False,
              argv=[] if args.no_argv else mask_argv(sys.argv, env_secrets()))
    m.start()  # writes run.json, with the argv above
    name = args.name or os.path.basename(cmd[0])
    tags = {} if args.no_argv else {"command": " ".join(mask_argv(cmd, env_secrets()))[:500]}
    track = m.track(name, tags=tags)
    try:
        span = track.__enter__()
    except BaseException:
        m.close()
        raise
    try:
        child = subprocess.Popen(cmd)
    except OSError as exc:
        # Raced away between the check and the start: the span ends with the exception, so its
        # record says it did not complete.
        track.__exit__(type(exc), exc, exc.__traceback__)
        m.close()
        _err(f"cannot run {cmd[0]!r}: {exc.strerror}; nothing was measured")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    # Blocked here, after the command started (it must not inherit the mask), and in meter's own
    # threads (meter.threads): each arrives in the wait below. SIGCHLD wakes it the moment the
    # command exits, so the span ends with the command.
    sigs = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs | {signal.SIGCHLD})
    live = sys.stderr.isatty() and not args.quiet
    last_live = 0.0
    try:
        while child.poll() is None:
            info = signal.sigtimedwait(sigs | {signal.SIGCHLD}, 0.2)
            if info is not None and info.si_signo != signal.SIGCHLD:
                # A terminal's Ctrl-C reaches the child's process group by itself (si_pid 0);
                # a signal sent to meter by another process (kill, a scheduler) is passed on.
                if info.si_signo == signal.SIGTERM or info.si_pid != 0:
                    try:
                        child.send_signal(info.si_signo)
                    except ProcessLookupError:
                        pass
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
        rc = child.returncode
        span.tags["exit_code"] = rc  # before the exit: the record is frozen there
        track.__exit__(None, None, None)
        m.close()
    if not args.quiet:
        print(_summary(span.result, span.emissions_g, m.intensity()), file=sys.stderr)
        print(f"meter: run log in {m.run_dir}", file=sys.stderr)
    return 128 - rc if rc < 0 else rc


# -- doctor ------------------------------------------------------------------------------------


def _cmd_doctor(args) -> int:
    from .core import Meter
    from .runlog import check_writable

    print(f"meter {__version__} doctor")
    m = Meter(write=False, region=args.region, rapl_root=args.rapl_root, gpus=args.gpus, sync_cuda=False)
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
        print(f"  error   {error_line(exc)}")
        writable = False
    print()
    if counters:
        print(f"{counters} hardware energy counter(s) readable: energy will be measured.")
        return 0 if writable else EXIT_CONFIG
    print("No hardware energy counter is readable: energy will be power-integrated or estimated (see above for fixes).")
    return EXIT_NO_COUNTER


# -- regions -----------------------------------------------------------------------------------


def _cmd_regions(args) -> int:
    from . import carbon

    rows = carbon.regions(args.query)  # ranked: exact code, then prefixes, then the rest
    if not rows:
        from .carbon import offline

        close = offline.close_matches(args.query or "")
        _err(f"no zone matches {args.query!r}" + (f"; close: {', '.join(close)}" if close else "")
             + "; list every zone with `meter regions`")
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

    if args.training_type is not None and args.format != "hf":
        raise ConfigError(f"--training-type applies to --format hf only (got --format {args.format}); drop it or add --format hf")
    opts = dict(compare=args.compare, live=not args.offline, metric=args.metric, baseline=args.baseline,
                maximize=not args.lower_is_better)
    if args.format == "hf" and args.output:
        # Merge into an existing model card (keeps its other keys and its text), never overwrite it.
        path = cards.update_hf_card(args.dirs, args.output, training_type=args.training_type or "fine-tuning", **opts)
        print(f"meter: updated {path} (co2_eq_emissions and the efficiency section; everything else kept)", file=sys.stderr)
        return 0
    kw = {"training_type": args.training_type} if args.training_type else {}
    try:
        text = cards.render_paths(args.dirs, fmt=args.format, **opts, **kw)
    except OSError as exc:
        raise ConfigError(f"cannot read the runs: {exc}; give run directories or the output directory holding them") from exc
    if args.output:
        data = text if isinstance(text, bytes) else text.encode("utf-8")  # names in any script, any locale
        try:
            with open(args.output, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise ConfigError(f"cannot write {args.output}: {exc.strerror}; choose a writable path with -o") from exc
        print(f"meter: wrote {args.output}", file=sys.stderr)
    else:
        text = text if isinstance(text, str) else text.decode()
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:  # a terminal or pipe in an ASCII locale: UTF-8 bytes all the same
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode("utf-8"))
    return 0


# -- sensors -----------------------------------------------------------------------------------


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


# -- parser ------------------------------------------------------------------------------------

_GPUS_HELP = "GPUs to read: visible (default, follows CUDA_VISIBLE_DEVICES), all, none, or indices/UUIDs (0,1)"
_RAPL_HELP = "root of the powercap tree with the RAPL counters (default /sys/class/powercap)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meter", description="Energy and carbon of ML work, stage by stage. "
                                "Configuration errors exit 2 with the fix.")
    p.add_argument("--version", action="version", version=f"meter {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{run,doctor,report,regions,sensors}")

    r = sub.add_parser("run", help="run a command and measure it as one stage",
                       description="Run CMD as a child and measure it as one span. Its exit code becomes meter's "
                                   "(127 if it cannot be found, 2 on a configuration error, before CMD starts).")
    r.add_argument("--region", help="grid zone for emissions, e.g. FR, US-CA, aws:eu-west-3 (see `meter regions`)")
    r.add_argument("--pue", type=float, help="power usage effectiveness of the facility, >= 1 (default 1.0)")
    r.add_argument("--output", metavar="DIR", help="output directory for the run log (default meter-runs)")
    r.add_argument("--interval", type=float, metavar="S", help="sampling interval in seconds (default 0.1)")
    r.add_argument("--quiet-interval", type=float, metavar="S",
                   help="longest gap between samples while no stage starts or ends (default 1; "
                        "equal to --interval for a fixed cadence)")
    r.add_argument("--name", help="stage name (default: the command's name)")
    r.add_argument("--carbon", help="live intensity provider: electricitymaps[:ZONE] or uk[:GB-N] (default offline)")
    r.add_argument("-q", "--quiet", action="store_true", help="no live line and no summary")
    r.add_argument("--no-argv", action="store_true", help="record no command line (run.json's argv and the span's "
                   "command tag); without it, values of secret-looking arguments (--token, --password, --key, "
                   "*_TOKEN=..., URL credentials) are recorded as ***")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]: the command to run and measure")
    r.set_defaults(func=_cmd_run)

    d = sub.add_parser("doctor", help="which sensors work here, why others do not, and how to fix them",
                       description="Exit status: 0 when at least one hardware energy counter is readable, "
                                   "1 when energy would only be power-integrated or estimated, 2 on a configuration error.")
    d.add_argument("--rapl-root", metavar="DIR", help=_RAPL_HELP)
    d.add_argument("--gpus", help=_GPUS_HELP)
    d.add_argument("--region", help="grid zone to check (default: METER_REGION or [tool.meter] region)")
    d.set_defaults(func=_cmd_doctor)

    rp = sub.add_parser("report", help="render efficiency cards, sweep overviews and comparisons from run logs",
                        description="Several runs give a sweep report: an overview (one row per run, the Pareto "
                                    "frontier of energy against --metric, a comparison with --baseline), then each run.")
    rp.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or output directories holding runs")
    rp.add_argument("--format", choices=("md", "json", "html", "hf", "latex", "climate"), default="md",
                    help="md (default), json (the card model), html (self-contained page with plots), hf (Hugging Face "
                         "README.md; with -o it is merged into an existing card), latex (booktabs), climate (Hershcovich et al.)")
    rp.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    rp.add_argument("--compare", metavar="DIR", help="a baseline run to compare the first run with, stage by stage "
                                                    "(md, json and html only)")
    rp.add_argument("--baseline", metavar="RUN", help="in a sweep, the run the others are compared with: run id, "
                                                      "run name or directory (default: the first run)")
    rp.add_argument("--metric", metavar="NAME", help="quality metric of a sweep, logged as the span tag metric.NAME "
                                                    "(default: the first metric.* tag found)")
    rp.add_argument("--lower-is-better", action="store_true", help="the metric is a loss or an error: lower is better")
    rp.add_argument("--training-type", choices=("fine-tuning", "pre-training"),
                    help="co2_eq_emissions training_type for --format hf (default fine-tuning)")
    rp.add_argument("--offline", action="store_true", help="never call a live carbon provider")
    rp.set_defaults(func=_cmd_report)

    g = sub.add_parser("regions", help="list or search carbon-intensity zones",
                       description="Exit 1 when nothing matches, with close matches.")
    g.add_argument("query", nargs="?", help="zone code or part of a name (FR, US-CA, france, aws); exact codes first")
    g.set_defaults(func=_cmd_regions)

    s = sub.add_parser("sensors", help="list the sensors found (short form of doctor)")
    s.add_argument("--rapl-root", metavar="DIR", help=_RAPL_HELP)
    s.add_argument("--gpus", help=_GPUS_HELP)
    s.set_defaults(func=_cmd_sensors)
    return p


def _quiet_broken_pipe() -> int:
    # The reader went away (`meter regions | head`): stop quietly. Point stdout at /dev/null so
    # the interpreter's final flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["sensors"])
    try:
        rc = args.func(args)
        sys.stdout.flush()
        return rc
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except MeterError as exc:
        from .redact import env_secrets, redact

        _err(redact(error_line(exc), env_secrets()))
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - a report never ends in a traceback
        if args.command != "report":
            raise
        from .redact import env_secrets, redact

        _err(redact(f"could not render the report ({type(exc).__name__}: {exc}); this is a bug in meter {__version__}: "
                    "please report it with the run directory", env_secrets()))
        return EXIT_CONFIG
