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
import json
import logging
import random
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
    p.add_argument("--duration", type=float, default=None,
                   help="simulation length (default 300 s), or where to cut a recording, s")
    p.add_argument("--heart-rate", type=float, default=70.0, help="simulated mean HR, bpm")
    p.add_argument("--linger", type=float, default=5.0,
                   help="seconds to stay connected after the source ends")
    p.add_argument("--drops", type=int, default=0,
                   help="chaos: drop the link this many times at random moments of the replay")
    p.add_argument("--silences", type=int, default=0,
                   help="chaos: go silent (link up, no notifications) for 2 s of device time "
                   "this many times")
    p.add_argument("--corruptions", type=int, default=0,
                   help="chaos: damage a sensor frame on the air this many times")
    p.add_argument("--reboots", type=int, default=0,
                   help="chaos: reboot (clock and seq restart, unsent samples lost) this many "
                   "times")
    p.add_argument("--pmd", action="store_true", help="also expose Polar's PMD service")
    p.add_argument("--no-sensor-service", action="store_true",
                   help="no wearemo sensor service (with --pmd: a Polar-like device)")
    p.add_argument("--chaos-seed", type=int, default=0, help="seed of the fault moments")
    p.add_argument("--report", type=Path, default=None,
                   help="write a JSON report (samples sent per channel, drops) here at the end")
    return p


async def _drop_links(vw: VirtualWearable, moments_s: list[float]) -> list[float]:
    """Drop the link at each moment (source seconds); a moment with no central connected
    waits up to 2 min for the next connection. Returns the source times of the drops."""
    done: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for moment in moments_s:
        await asyncio.sleep(max(0.0, t0 + moment / vw.speed - loop.time()))
        for _ in range(600):  # no central connected (it is reconnecting): try a bit later
            if await vw.drop_link():
                break
            await asyncio.sleep(0.2)
        else:
            continue
        done.append((loop.time() - t0) * vw.speed)
        vw.faults["drop"] += 1
        logging.info("chaos: dropped the link at %.1f s of source time", done[-1])
    return done


async def _inject(vw: VirtualWearable, plan: list[tuple[float, str]]) -> None:
    """Inject each (source second, fault kind) of ``plan`` at its moment."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for moment, kind in plan:
        await asyncio.sleep(max(0.0, t0 + moment / vw.speed - loop.time()))
        await vw.inject(kind)
        logging.info("chaos: %s at %.1f s of source time", kind, moment)


async def _run(args: argparse.Namespace) -> None:
    source: SignalSource
    if args.source == "sim":
        source = SimulatedSource(seed=args.seed, duration_s=args.duration or 300.0,
                                 heart_rate_bpm=args.heart_rate)
    else:
        source = RecordingSource(Path(args.source))
        if args.duration is not None:
            source = source.cut(args.duration)
    vw = VirtualWearable(source, name=args.name, address=args.address, speed=args.speed,
                         clock=args.clock, pmd=args.pmd,
                         sensor_service=not args.no_sensor_service)
    await vw.attach_transport(args.transport)
    logging.info("advertising as %s (%s); source %.0f s at speed %g", vw.name, vw.address,
                 source.duration_s, vw.speed)
    await vw.start()
    rng = random.Random(args.chaos_seed)
    # Drops spread over the replay, away from its first and last 5 %.
    moments = sorted(rng.uniform(0.05, 0.95) * source.duration_s for _ in range(args.drops))
    chaos = asyncio.ensure_future(_drop_links(vw, moments))
    others = sorted((rng.uniform(0.05, 0.95) * source.duration_s, kind)
                    for kind, n in (("silent", args.silences), ("corrupt", args.corruptions),
                                    ("reboot", args.reboots)) for _ in range(n))
    faults = asyncio.ensure_future(_inject(vw, others))
    try:
        await vw.wait_finished()
        await asyncio.sleep(args.linger)
    finally:
        drops = chaos.result() if chaos.done() else []
        chaos.cancel()
        faults.cancel()
        await vw.stop()
        logging.info("sent %s; dropped %s", vw.sent_counts, vw.dropped_counts)
        if args.report is not None:
            args.report.write_text(json.dumps({
                "sent": {ch.value if hasattr(ch, "value") else str(ch): n
                         for ch, n in vw.sent_counts.items()},
                "link_drops_s": drops, "start_unix": source.start_unix,
                "faults": vw.faults, "dropped": vw.dropped_counts,
                "pmd_sent": vw.pmd_sent_counts,
            }, indent=1))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_run(_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
