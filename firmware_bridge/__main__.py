"""``python -m firmware_bridge run ...``: the bridge from the command line.

Virtual wearables (bumble, no radio)::

    python -m firmware_bridge run --api http://127.0.0.1:8000 --virtual 2 --source sim \\
        --speed 20 --duration 60 --spool /tmp/spool.db --report /tmp/report.json

A real wearable through bleak's platform backend (BlueZ, CoreBluetooth, WinRT)::

    python -m firmware_bridge run --api http://127.0.0.1:8000 --address AA:BB:CC:DD:EE:FF \\
        --subject s01 --spool spool.db

Example
-------
>>> build_parser().parse_args(["run", "--api", "http://x", "--virtual", "2"]).virtual
2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence

from firmware_bridge.runner import (
    DEFAULT_SOURCE,
    RunReport,
    VirtualRunConfig,
    run_device,
    run_virtual,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``firmware_bridge`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m firmware_bridge",
                                     description="wearemo BLE bridge")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stream wearables to the wearemo API")
    run.add_argument("--api", required=True, help="API base URL, e.g. http://127.0.0.1:8000")
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("--virtual", type=int, metavar="N", help="N virtual wearables (bumble)")
    target.add_argument("--address", help="a real device's address (bleak's default backend)")
    target.add_argument("--name", help="a device's advertised name (instead of --address)")
    run.add_argument("--subject", help="subject id of the device (with --address/--name)")
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
            drain_timeout_s=args.drain_timeout,
        ))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    return await run_device(
        api_url=args.api, address=args.address, name=args.name, subject=args.subject,
        device=args.device_id, spool_path=args.spool, duration_s=args.duration, stop=stop,
        drain_timeout_s=args.drain_timeout, bumble_transport=args.bumble_transport,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 when the spool did not drain)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.address is not None or args.name is not None) and not args.subject:
        parser.error("--address/--name needs --subject")
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
