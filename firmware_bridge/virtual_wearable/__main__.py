"""Run the virtual wearable standalone over an HCI transport.

Example
-------
Two linked virtual controllers, then the wearable on one of them::

    python -m bumble.apps.controllers tcp-server:127.0.0.1:9001 tcp-server:127.0.0.1:9002
    python -m firmware_bridge.virtual_wearable --transport tcp-client:127.0.0.1:9001 \\
        --source sim --speed 10
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from firmware_bridge.virtual_wearable.sources import RecordingSource, SignalSource, SimulatedSource
from firmware_bridge.virtual_wearable.wearable import VirtualWearable

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m firmware_bridge.virtual_wearable",
                                description="BLE virtual wearable (bumble) replaying signals.")
    p.add_argument("--transport", required=True,
                   help="bumble HCI transport, e.g. tcp-client:127.0.0.1:9001")
    p.add_argument("--source", default="sim",
                   help="an Empatica E4 folder, or 'sim' for a NeuroKit2 simulation")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed (device clock)")
    p.add_argument("--name", default="wearemo-vw", help="advertised name")
    p.add_argument("--address", default=None, help="random static address (default from name)")
    p.add_argument("--clock", choices=["rtc", "ticks"], default="rtc")
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    p.add_argument("--duration", type=float, default=300.0, help="simulation length, s")
    p.add_argument("--heart-rate", type=float, default=70.0, help="simulated mean HR, bpm")
    p.add_argument("--linger", type=float, default=5.0,
                   help="seconds to stay connected after the source ends")
    return p


async def _run(args: argparse.Namespace) -> None:
    source: SignalSource
    if args.source == "sim":
        source = SimulatedSource(seed=args.seed, duration_s=args.duration,
                                 heart_rate_bpm=args.heart_rate)
    else:
        source = RecordingSource(Path(args.source))
    vw = VirtualWearable(source, name=args.name, address=args.address, speed=args.speed,
                         clock=args.clock)
    await vw.attach_transport(args.transport)
    logging.info("advertising as %s (%s); source %.0f s at speed %g", vw.name, vw.address,
                 source.duration_s, vw.speed)
    await vw.start()
    try:
        await vw.wait_finished()
        await asyncio.sleep(args.linger)
    finally:
        await vw.stop()
        logging.info("sent %s; dropped %s", vw.sent_counts, vw.dropped_counts)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_run(_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
