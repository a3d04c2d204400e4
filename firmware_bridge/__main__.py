"""``python -m firmware_bridge run ...``: the bridge from the command line.

Virtual wearables (bumble, no radio)::

    python -m firmware_bridge run --api http://127.0.0.1:8000 --virtual 2 --source sim \\
        --speed 20 --duration 60 --spool /tmp/spool.db --report /tmp/report.json

Real wearables through bleak's platform backend (BlueZ, CoreBluetooth, WinRT), by address or
advertised name, each optionally ``=SUBJECT`` (default: the device id)::

    python -m firmware_bridge run --api http://127.0.0.1:8000 \\
        --device AA:BB:CC:DD:EE:FF=s01 --device "Polar H10 1234ABCD"=s02 --spool spool.db

``--live`` shows devices, rates, gaps, spool depth and uplink state in a table on stderr;
``--chaos`` (virtual) injects faults into each wearable at random moments (``--chaos-faults``:
link drops, silences, corrupted frames, reboots).

Example
-------
>>> build_parser().parse_args(["run", "--api", "http://x", "--virtual", "2"]).virtual
2
>>> parse_device("AA:BB:CC:DD:EE:FF=s01")
DeviceTarget(subject='s01', address='AA:BB:CC:DD:EE:FF', name=None, device_id=None)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence

from firmware_bridge.runner import (
    DEFAULT_SOURCE,
    DeviceTarget,
    RunReport,
    VirtualRunConfig,
    run_devices,
    run_virtual,
)
from firmware_bridge.virtual_wearable import FAULT_KINDS

__all__ = ["build_parser", "main", "parse_device"]

# A BLE address as BlueZ/WinRT print it, or a CoreBluetooth UUID; anything else is a name.
_ADDRESS = re.compile(
    r"^(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$"
    r"|^[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$"
)


def parse_device(spec: str, *, subject: str | None = None) -> DeviceTarget:
    """``NAME_OR_ADDRESS[=SUBJECT]`` → a :class:`DeviceTarget`.

    An address (``AA:BB:..`` or a CoreBluetooth UUID) is matched exactly; anything else is an
    advertised name. Without ``=SUBJECT`` (and without ``subject``) the subject id is the
    device id (``ble-<address or name>``), so a real strap works with no set-up.

    Example
    -------
    >>> parse_device("Polar H10 1234").name, parse_device("Polar H10 1234").subject
    ('Polar H10 1234', 'ble-polar-h10-1234')
    """
    device, sep, named = spec.rpartition("=") if "=" in spec else (spec, "", "")
    device = device.strip()
    if not device or (sep and not named.strip()):
        raise ValueError(f"--device {spec!r}: expected NAME_OR_ADDRESS or NAME_OR_ADDRESS=SUBJECT")
    kind = "address" if _ADDRESS.match(device) else "name"
    target = DeviceTarget("?", **{kind: device})
    return DeviceTarget(named.strip() or subject or target.id, **{kind: device})


def build_parser() -> argparse.ArgumentParser:
    """The ``firmware_bridge`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m firmware_bridge",
                                     description="wearemo BLE bridge")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stream wearables to the wearemo API")
    run.add_argument("--api", required=True, help="API base URL, e.g. http://127.0.0.1:8000")
    run.add_argument("--api-key", default=os.environ.get("WEAREMO_API_KEY"),
                     help="wearemo API key of this bridge (a device key granted its subjects; "
                     "default: the WEAREMO_API_KEY environment variable, which keeps it out of "
                     "the process list)")
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("--virtual", type=int, metavar="N", help="N virtual wearables (bumble)")
    target.add_argument("--device", action="append", metavar="NAME_OR_ADDRESS[=SUBJECT]",
                        help="a real wearable (repeat for several on one bridge); subject "
                        "defaults to the device id")
    target.add_argument("--address", help="one device's address (same as --device ADDRESS)")
    target.add_argument("--name", help="one device's advertised name (same as --device NAME)")
    run.add_argument("--subject", help="subject id of the device (with --address/--name)")
    run.add_argument("--live", action="store_true",
                     help="live table of devices, rates, gaps, spool depth and uplink (stderr)")
    run.add_argument("--chaos", type=int, nargs="?", const=3, default=0, metavar="DROPS",
                     help="virtual: drop each wearable's link DROPS times (default 3) at random "
                     "moments")
    run.add_argument("--pmd", action="store_true",
                     help="virtual: Polar-like wearables (Heart Rate + Polar PMD: PPG, ACC, PPI; "
                     "no wearemo sensor service)")
    run.add_argument("--chaos-faults", default="drop,silent,corrupt", metavar="KINDS",
                     help="fault kinds of --chaos, comma-separated, each DROPS times: drop, "
                     "silent, corrupt, reboot (default drop,silent,corrupt)")
    run.add_argument("--bumble-transport", metavar="SPEC",
                     help="use the bumble backend on this HCI transport instead of the "
                     "platform's (e.g. tcp-client:127.0.0.1:9002)")
    run.add_argument("--device-id", help="device id of the real device (default from address)")
    run.add_argument("--source", default=str(DEFAULT_SOURCE),
                     help="recording folder or 'sim' (default: the shipped excerpt)")
    run.add_argument("--speed", type=float, default=1.0, help="playback speed (virtual)")
    run.add_argument("--duration", type=float, default=None, metavar="S",
                     help="seconds of source time (virtual) or of wall time (real device)")
    run.add_argument("--offset", type=float, default=0.0, metavar="S",
                     help="clock offset between virtual wearables")
    run.add_argument("--seed", type=int, default=0, help="simulation seed")
    run.add_argument("--spool", default="bridge-spool.db", help="spool database file")
    run.add_argument("--report", default=None, help="write the JSON run report here")
    run.add_argument("--drain-timeout", type=float, default=60.0, metavar="S")
    run.add_argument("-v", "--verbose", action="store_true")
    return parser


async def _run(args: argparse.Namespace) -> RunReport:
    if args.virtual is not None:
        return await run_virtual(VirtualRunConfig(
            api_url=args.api, spool_path=args.spool, n_virtual=args.virtual, source=args.source,
            speed=args.speed, duration_s=args.duration, offset_s=args.offset, seed=args.seed,
            drain_timeout_s=args.drain_timeout, chaos_drops=args.chaos, live=args.live,
            api_key=args.api_key,
            chaos_faults=tuple(k.strip() for k in args.chaos_faults.split(",") if k.strip()),
            pmd=args.pmd,
        ))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    return await run_devices(
        _targets(args), api_url=args.api, spool_path=args.spool, duration_s=args.duration,
        stop=stop, drain_timeout_s=args.drain_timeout, bumble_transport=args.bumble_transport,
        live=args.live, api_key=args.api_key,
    )


def _targets(args: argparse.Namespace) -> list[DeviceTarget]:
    if args.device:
        return [parse_device(spec) for spec in args.device]
    one = DeviceTarget(args.subject, address=args.address, name=args.name,
                       device_id=args.device_id)
    return [one]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 when the spool did not drain)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.address is not None or args.name is not None) and not args.subject:
        parser.error("--address/--name needs --subject")
    if args.chaos and args.virtual is None:
        parser.error("--chaos needs --virtual (fault injection happens in the virtual wearables)")
    kinds = [k.strip() for k in args.chaos_faults.split(",") if k.strip()]
    if bad := sorted(set(kinds) - set(FAULT_KINDS)):
        parser.error(f"--chaos-faults: unknown {bad}; options: {', '.join(FAULT_KINDS)}")
    if args.device:
        try:
            targets = [parse_device(spec) for spec in args.device]
            ids = [t.id for t in targets]
            if len(set(ids)) != len(ids) or len({t.subject for t in targets}) != len(ids):
                raise ValueError(f"--device: devices and subjects must be unique, got {ids}")
        except ValueError as exc:
            parser.error(str(exc))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = asyncio.run(_run(args))
    if args.report:
        report.write(args.report)
    json.dump(report.to_json(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0 if report.drained else 1


if __name__ == "__main__":
    sys.exit(main())
