"""Live status of a running bridge: devices, rates, gaps, spool depth and uplink state (rich).

Example
-------
>>> status_table(StatusSnapshot.take([], None, None), None).title
'wearemo bridge'
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from firmware_bridge.device_link import DeviceLink
from firmware_bridge.spool import Spool
from firmware_bridge.uplink import Uplink

__all__ = ["LiveStatus", "StatusSnapshot", "status_table"]


@dataclass(frozen=True, slots=True)
class _Device:
    device_id: str
    subject_id: str
    connected: bool
    link_losses: int
    samples: int
    gaps: int
    missing_frames: int
    decode_errors: int
    bad_input: int = 0
    repairs: int = 0
    clock_resets: int = 0


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """Counters of every device link, the spool and the uplink at one instant.

    Per device: link state and losses, samples, gaps (sequence gaps, and gaps of the services
    that cannot re-send: HRS, PMD), missing frames, decode errors, bad input (everything
    counted in ``DeviceLinkStats.bad_input``), repairs (``RESUME_FROM`` on a live link) and
    device clock resets.
    """

    at: float
    devices: tuple[_Device, ...]
    spool_depth: int = 0
    dead_letters: int = 0
    uploaded_batches: int = 0
    uplink_error: str | None = None
    retries: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def take(cls, links: Sequence[DeviceLink], spool: Spool | None,
             uplink: Uplink | None) -> StatusSnapshot:
        """Read the counters now."""
        devices = tuple(
            _Device(
                dl.config.device_id, dl.config.subject_id, dl.connected.is_set(),
                dl.stats.link_losses, sum(dl.stats.decoded_samples.values()),
                dl.assembler.stats.gaps,
                sum(s.missing_frames for s in dl.assembler.stats.channels.values()),
                dl.stats.decode_errors, sum(dl.stats.bad_input.values()), dl.stats.repairs,
                dl.stats.clock_resets)
            for dl in links)
        return cls(
            at=time.monotonic(), devices=devices,
            spool_depth=spool.depth if spool is not None else 0,
            dead_letters=spool.dead_depth if spool is not None else 0,
            uploaded_batches=(uplink.stats.stored + uplink.stats.duplicates) if uplink else 0,
            uplink_error=uplink.stats.last_error if uplink is not None else None,
            retries=uplink.stats.retries if uplink is not None else 0,
        )


def status_table(now: StatusSnapshot, before: StatusSnapshot | None) -> Table:
    """The status as a table; rates come from the difference to ``before``."""
    dt = (now.at - before.at) if before is not None else 0.0
    prev = {d.device_id: d for d in before.devices} if before is not None else {}
    if now.uplink_error is None:
        up = "[green]up[/green]"
    elif now.uplink_error.startswith("unauthorized"):
        up = f"[red]unauthorized[/red] ({now.uplink_error.removeprefix('unauthorized ')})"
    else:
        up = f"[red]down[/red] ({now.uplink_error})"
    table = Table(title="wearemo bridge", caption=(
        f"spool {now.spool_depth} batches queued, {now.dead_letters} dead-lettered · API {up} · "
        f"{now.uploaded_batches} batches uploaded, {now.retries} retries"))
    for col in ("device", "subject", "link", "samples/s", "samples", "gaps", "missing frames",
                "link losses", "decode errors", "bad input", "repairs", "clock resets"):
        table.add_column(col, no_wrap=True)
    for d in now.devices:
        p = prev.get(d.device_id)
        rate = (d.samples - p.samples) / dt if p is not None and dt > 0 else 0.0
        table.add_row(
            d.device_id, d.subject_id,
            "[green]connected[/green]" if d.connected else "[yellow]searching[/yellow]",
            f"{rate:.0f}", str(d.samples), str(d.gaps), str(d.missing_frames),
            str(d.link_losses), str(d.decode_errors), str(d.bad_input), str(d.repairs),
            str(d.clock_resets))
    return table


class LiveStatus:
    """Refresh :func:`status_table` on a console until stopped.

    Example
    -------
    ``task = asyncio.create_task(LiveStatus(links, spool, uplink).run(stop))``
    """

    def __init__(self, links: Sequence[DeviceLink], spool: Spool, uplink: Uplink, *,
                 console: Console | None = None, period_s: float = 1.0) -> None:
        self.links, self.spool, self.uplink = links, spool, uplink
        self.console = console or Console(stderr=True)
        self.period_s = period_s

    async def run(self, stop: asyncio.Event) -> None:
        """Show the table, refreshed every ``period_s``, until ``stop`` is set."""
        before = StatusSnapshot.take(self.links, self.spool, self.uplink)
        with Live(status_table(before, None), console=self.console,
                  refresh_per_second=4, transient=False) as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.period_s)
                now = StatusSnapshot.take(self.links, self.spool, self.uplink)
                live.update(status_table(now, before))
                before = now
