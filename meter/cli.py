"""Command line. The only module that prints or exits."""

from __future__ import annotations

import argparse

from . import __version__


def _sensors(args) -> int:
    from .core import Meter

    m = Meter(write=False, rapl_root=args.rapl_root, gpus=args.gpus, sync_cuda=False)
    try:
        rep = m.sensors_report()
    finally:
        m.close()
    print(f"meter {__version__}: sensors on this machine")
    for c in rep["channels"]:
        print(f"  found  {c['key']:<22} {c['provenance']:<17} {c['label']} [{c['scope']}]")
    for u in rep["unavailable"]:
        print(f"  absent {u['sensor']:<22} {u['reason']}")
        if u["hint"]:
            print(f"         fix: {u['hint']}")
    for n in rep["notes"]:
        print(f"  note   {n}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meter", description="Energy and carbon of ML work, stage by stage.")
    p.add_argument("--version", action="version", version=f"meter {__version__}")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("sensors", help="list the sensors found and why others were not")
    s.add_argument("--rapl-root", default=None)
    s.add_argument("--gpus", default=None)
    s.set_defaults(func=_sensors)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["sensors"])
    return args.func(args)
