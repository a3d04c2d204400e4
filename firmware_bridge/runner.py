"""Run the bridge: virtual wearables (bumble, one process) or a real device (bleak's backend).

:func:`run_virtual` starts one in-process ``LocalLink``, N virtual wearables replaying the
same source (subjects ``demo-01``.., devices ``vw-01``..), one :class:`DeviceLink` each through
the bumble bleak backend, and the :class:`Uplink`; it stops when every wearable has played its
source (or ``duration_s`` of source time has passed) and the spool is drained (or
``drain_timeout_s`` passed), and returns a :class:`RunReport`.

:func:`run_device` runs one real wearable through bleak's default backend (BlueZ,
CoreBluetooth, WinRT) until ``duration_s`` passes or the ``stop`` event is set.

Example
-------
>>> cfg = VirtualRunConfig(api_url="http://127.0.0.1:8000", spool_path="spool.db", n_virtual=2)
>>> [subject_id(k) for k in range(cfg.n_virtual)], device_id(0)
(['demo-01', 'demo-02'], 'vw-01')
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bumble.link import LocalLink

from firmware_bridge.bumble_backend import (
    BleakClientBumble,
    BleakScannerBumble,
    BumbleTransport,
    bumble_central_close,
)
from firmware_bridge.device_link import DeviceLink, DeviceLinkConfig
from firmware_bridge.spool import Spool
from firmware_bridge.status import LiveStatus
from firmware_bridge.uplink import Uplink
from firmware_bridge.virtual_wearable import (
    FAULT_KINDS,
    RecordingSource,
    SimulatedSource,
    VirtualWearable,
)
from firmware_bridge.virtual_wearable.sources import SignalSource

__all__ = [
    "DEFAULT_SOURCE",
    "DeviceTarget",
    "RunReport",
    "SubjectReport",
    "VirtualRunConfig",
    "device_id",
    "load_source",
    "run_device",
    "run_devices",
    "run_virtual",
    "subject_id",
]

logger = logging.getLogger(__name__)

#: The shipped real excerpt (Stress-Predict S02, ~17 min, rest → stress task → rest).
DEFAULT_SOURCE = Path(__file__).parent / "virtual_wearable" / "data" / "stress-predict-S02-excerpt"

_CHANNEL_KEYS = ("ppg", "eda", "temp", "acc", "hr", "rr")


def subject_id(k: int) -> str:
    """Subject id of the k-th (0-based) virtual wearable: ``demo-01``, ``demo-02``, ..."""
    return f"demo-{k + 1:02d}"


def device_id(k: int) -> str:
    """Device id of the k-th (0-based) virtual wearable: ``vw-01``, ``vw-02``, ..."""
    return f"vw-{k + 1:02d}"


def load_source(source: str | Path, *, seed: int = 0, duration_s: float | None = None
                ) -> SignalSource:
    """``"sim"`` → a seeded simulation (``duration_s`` rounded up to whole seconds, default
    120 s), else a recording folder (cut at ``duration_s`` of source time when given).

    Example
    -------
    >>> load_source("sim", duration_s=10.0).duration_s
    10.0
    """
    if str(source) == "sim":
        # Whole seconds: NeuroKit2's EDA simulator fails on a float duration (e.g. 10.0).
        return SimulatedSource(seed=seed, duration_s=math.ceil(duration_s or 120))
    recording = RecordingSource(Path(source))
    return recording if duration_s is None else recording.cut(duration_s)


@dataclass
class SubjectReport:
    """Per-subject counts of a run (samples per channel value).

    ``bad_input`` counts rejected or suspicious input per reason (unknown device, missing
    characteristic, truncated / oversize / corrupt frame, seq backwards, clock backwards or
    jumping, PMD refusals); ``repairs`` the re-sends asked on a live link; ``clock_resets`` the
    device clock restarts seen; ``gap_s`` the seconds missing in the reported gaps of ``hr``
    and PMD channels; ``faults`` the faults injected into a virtual wearable.
    """

    device_id: str
    sent: dict[str, int]
    decoded: dict[str, int]
    uploaded: dict[str, int]
    gaps: int
    decode_errors: int
    missing_frames: int = 0
    duplicate_frames: int = 0
    link_losses: int = 0
    spool_refused_batches: int = 0
    bad_input: dict[str, int] = field(default_factory=dict)
    repairs: int = 0
    clock_resets: int = 0
    gap_s: dict[str, float] = field(default_factory=dict)
    ppi_rejected: int = 0
    faults: dict[str, int] = field(default_factory=dict)


@dataclass
class RunReport:
    """What a run did; ``to_json()`` gives the report file's content."""

    subjects: dict[str, SubjectReport] = field(default_factory=dict)
    spool_depth: int = 0
    dead_letters: int = 0
    drained: bool = True

    def to_json(self) -> dict[str, Any]:
        """``{"subjects": {id: {...}}, "spool_depth": n, "dead_letters": n, "drained": b}``."""
        return {
            "subjects": {k: vars(v) for k, v in self.subjects.items()},
            "spool_depth": self.spool_depth,
            "dead_letters": self.dead_letters,
            "drained": self.drained,
        }

    def write(self, path: str | Path) -> None:
        """Write the JSON report."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class VirtualRunConfig:
    """Options of :func:`run_virtual`.

    Parameters
    ----------
    api_url
        Base URL of the wearemo API.
    spool_path
        Spool database file.
    n_virtual
        Number of virtual wearables (subjects ``demo-01``..).
    source
        ``"sim"`` or a recording folder (default: the shipped excerpt).
    speed
        Playback speed of every wearable.
    duration_s
        Stop after this much source time (None: the whole source). With ``"sim"`` it is also
        the simulation length.
    offset_s
        Wearable k's clock starts ``k · offset_s`` later (distinct timelines per subject).
    seed
        Simulation seed (wearable k uses ``seed + k``).
    drain_timeout_s
        Longest wait for the spool to drain at the end.
    mtu
        ATT MTU the bridge requests.
    chaos_drops
        Fault injection: each wearable suffers each fault kind of ``chaos_faults`` this many
        times at random moments of its replay (seeded by ``seed``).
    chaos_faults
        Kinds of :data:`~firmware_bridge.virtual_wearable.FAULT_KINDS` injected by chaos:
        ``drop`` (link loss), ``silent`` (no notifications for 2 s of device time),
        ``corrupt`` (one frame damaged on the air), ``reboot`` (clock and sequence numbers
        restart; unsent samples are lost by the device).
    live
        Show the live status table (devices, rates, gaps, spool, uplink) on stderr.
    api_key
        The wearemo API key the uplink sends (``Authorization: Bearer``); None sends none.
    pmd
        Polar-like wearables: Heart Rate and Polar PMD services (PPG, ACC, PPI), no wearemo
        sensor service; ``sent`` then counts PMD samples (``rr``: PPI records).
    """

    api_url: str
    spool_path: str | Path
    n_virtual: int = 1
    source: str | Path = DEFAULT_SOURCE
    speed: float = 1.0
    duration_s: float | None = None
    offset_s: float = 0.0
    seed: int = 0
    drain_timeout_s: float = 60.0
    mtu: int = 247
    chaos_drops: int = 0
    chaos_faults: tuple[str, ...] = ("drop", "silent", "corrupt")
    live: bool = False
    api_key: str | None = field(default=None, repr=False)  # a secret: kept out of reprs
    pmd: bool = False

    def __post_init__(self) -> None:
        if bad := [k for k in self.chaos_faults if k not in FAULT_KINDS]:
            raise ValueError(f"chaos_faults: unknown {bad}; options: {list(FAULT_KINDS)}")
        if not 1 <= self.n_virtual <= 99:
            raise ValueError(f"n_virtual must be within 1..99, got {self.n_virtual}")
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")


def _report_for(link: DeviceLink, sent: dict[str, int], uplink: Uplink, subject: str,
                faults: dict[str, int] | None = None) -> SubjectReport:
    uploaded = uplink.stats.uploaded_samples.get(subject, {})
    asm = link.assembler.stats
    return SubjectReport(
        device_id=link.config.device_id,
        sent={k: int(sent.get(k, 0)) for k in _CHANNEL_KEYS},
        decoded={k: link.stats.decoded_samples.get(k, 0) for k in _CHANNEL_KEYS},
        uploaded={k: uploaded.get(k, 0) for k in _CHANNEL_KEYS},
        gaps=asm.gaps,
        decode_errors=link.stats.decode_errors,
        missing_frames=sum(s.missing_frames for s in asm.channels.values()),
        duplicate_frames=sum(s.duplicate_frames for s in asm.channels.values()),
        link_losses=link.stats.link_losses,
        spool_refused_batches=link.stats.spool_refused_batches,
        bad_input=dict(link.stats.bad_input),
        repairs=link.stats.repairs,
        clock_resets=link.stats.clock_resets,
        gap_s={c.value: round(s.gap_s, 3) for c, s in asm.channels.items() if s.gap_s},
        ppi_rejected=link.stats.ppi_rejected,
        faults=dict(faults or {}),
    )


async def _finish(
    links: list[DeviceLink], link_tasks: list[asyncio.Task[None]], link_stop: asyncio.Event,
    uplink: Uplink, uplink_task: asyncio.Task[None], uplink_stop: asyncio.Event,
    drain_timeout_s: float,
) -> bool:
    for dl in links:
        await dl.wait_quiet(quiet_s=0.3, timeout_s=10.0)
    link_stop.set()
    await asyncio.gather(*link_tasks, return_exceptions=True)
    uplink_stop.set()
    await asyncio.gather(uplink_task, return_exceptions=True)
    return await uplink.drain(timeout_s=drain_timeout_s)


async def _chaos(wearables: Sequence[VirtualWearable], drops: int, *, seed: int,
                 faults: Sequence[str] = ("drop",)) -> None:
    """Inject each fault kind ``drops`` times per wearable at random moments of its replay."""
    rng = random.Random(seed)
    # Drops drawn first: a seed gives the same drop moments whatever other kinds are added.
    kinds = sorted(set(faults), key=lambda kind: kind != "drop")
    plan = sorted((rng.uniform(0.05, 0.95) * vw.source.duration_s / vw.speed, k, kind)
                  for kind in kinds for k, vw in enumerate(wearables) for _ in range(drops))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for at, k, kind in plan:
        await asyncio.sleep(max(0.0, t0 + at - loop.time()))
        if await wearables[k].inject(kind):
            logger.info("chaos: %s on %s", kind, wearables[k].name)


async def run_virtual(config: VirtualRunConfig) -> RunReport:
    """Virtual wearables → bridge → API in this process; see the module docstring.

    Example
    -------
    ``asyncio.run(run_virtual(VirtualRunConfig(api_url=url, spool_path="s.db", n_virtual=2,
    source="sim", speed=20, duration_s=30)))``
    """
    base = load_source(config.source, seed=config.seed, duration_s=config.duration_s)
    link = LocalLink()
    transport = BumbleTransport(link=link, mtu=config.mtu)
    wearables: list[VirtualWearable] = []
    links: list[DeviceLink] = []
    with Spool(config.spool_path) as spool:
        uplink = Uplink(spool, api_url=config.api_url, api_key=config.api_key)
        uplink_stop, link_stop = asyncio.Event(), asyncio.Event()
        uplink_task = asyncio.create_task(uplink.run(uplink_stop), name="uplink")
        link_tasks: list[asyncio.Task[None]] = []
        try:
            for k in range(config.n_virtual):
                source = base
                if str(config.source) == "sim" and k:
                    source = load_source("sim", seed=config.seed + k,
                                         duration_s=config.duration_s)
                start = (source.start_unix if source.start_unix is not None else None)
                rtc_start = None if start is None else start + k * config.offset_s
                vw = VirtualWearable(source, name=f"wearemo-{device_id(k)}", speed=config.speed,
                                     rtc_start_unix=rtc_start, pmd=config.pmd,
                                     sensor_service=not config.pmd)
                await vw.attach(link)
                wearables.append(vw)
                dl = DeviceLink(
                    DeviceLinkConfig(
                        subject_id=subject_id(k), device_id=device_id(k), name=vw.name,
                        address=vw.address, backend=BleakClientBumble,
                        scanner_backend=BleakScannerBumble, backend_kwargs={"bumble": transport},
                        scan_timeout_s=10.0, connect_timeout_s=10.0, reconnect_initial_s=0.1,
                        reconnect_max_s=2.0, clock_interval_s=2.0,
                    ),
                    spool, on_spooled=uplink.notify,
                )
                links.append(dl)
            for vw in wearables:
                await vw.start()
            for dl in links:
                link_tasks.append(asyncio.create_task(dl.run(link_stop)))
            if config.live:
                link_tasks.append(asyncio.create_task(
                    LiveStatus(links, spool, uplink).run(link_stop)))
            if config.chaos_drops:
                link_tasks.append(asyncio.create_task(
                    _chaos(wearables, config.chaos_drops, seed=config.seed,
                           faults=config.chaos_faults)))
            # Every source is exactly duration_s long (load_source cuts recordings), so the
            # wearables finish by themselves, having sent exactly what the source holds.
            await asyncio.gather(*(vw.wait_finished() for vw in wearables))
            drained = await _finish(links, link_tasks, link_stop, uplink, uplink_task,
                                    uplink_stop, config.drain_timeout_s)
        finally:
            link_stop.set()
            uplink_stop.set()
            for task in [*link_tasks, uplink_task]:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*link_tasks, uplink_task, return_exceptions=True)
            for vw in wearables:
                with contextlib.suppress(Exception):
                    await vw.stop()
            await bumble_central_close(transport)
        report = RunReport(spool_depth=spool.depth, dead_letters=spool.dead_depth,
                           drained=drained)
        for k, (vw, dl) in enumerate(zip(wearables, links, strict=True)):
            sent = vw.sent_counts
            if config.pmd:
                pmd = vw.pmd_sent_counts
                sent = {**sent, "ppg": pmd["ppg"], "acc": pmd["acc"], "rr": pmd["ppi"]}
            report.subjects[subject_id(k)] = _report_for(dl, sent, uplink, subject_id(k),
                                                         vw.faults)
    return report


@dataclass(frozen=True)
class DeviceTarget:
    """One real (or separately running virtual) wearable to bridge.

    ``address`` or ``name`` finds it; ``subject`` is its pseudonymous subject id; ``device_id``
    defaults to ``ble-`` + the address or name.
    """

    subject: str
    address: str | None = None
    name: str | None = None
    device_id: str | None = None

    def __post_init__(self) -> None:
        if (self.address is None) == (self.name is None):
            raise ValueError("DeviceTarget needs exactly one of address= and name=")

    @property
    def id(self) -> str:
        """The device id stamped on its batches: ``device_id``, or ``ble-`` + the address
        without colons or the name, lower-cased, other characters than ``[a-z0-9._-]`` as
        ``-`` (ids must match the API's pseudonymous-id pattern)."""
        if self.device_id:
            return self.device_id
        raw = (self.address or self.name or "").replace(":", "").lower()
        return ("ble-" + re.sub(r"[^a-z0-9._-]", "-", raw))[:128]


async def run_devices(
    targets: Sequence[DeviceTarget],
    *,
    api_url: str,
    spool_path: str | Path,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    drain_timeout_s: float = 30.0,
    bumble_transport: str | None = None,
    live: bool = False,
    api_key: str | None = None,
) -> RunReport:
    """Several wearables on one bridge (one spool, one uplink) until ``duration_s`` or
    ``stop``.

    Through bleak's default backend (BlueZ, CoreBluetooth, WinRT), or with
    ``bumble_transport`` (e.g. ``"tcp-client:127.0.0.1:9002"``) through the bumble backend on
    that HCI controller: the backend is the only difference between a field run and a test
    against the virtual wearable in another process.

    Example
    -------
    ``asyncio.run(run_devices([DeviceTarget("s01", address="AA:BB:CC:DD:EE:FF")],
    api_url=url, spool_path="spool.db", duration_s=600))``
    """
    if not targets:
        raise ValueError("run_devices needs at least one device")
    ids = [t.id for t in targets]
    if len(set(ids)) != len(ids) or len({t.subject for t in targets}) != len(targets):
        raise ValueError(f"device ids and subjects must be unique, got {ids}")
    stop = stop or asyncio.Event()
    transport = None if bumble_transport is None else BumbleTransport(spec=bumble_transport)
    backend: dict[str, Any] = {} if transport is None else {
        "backend": BleakClientBumble, "scanner_backend": BleakScannerBumble,
        "backend_kwargs": {"bumble": transport}}
    with Spool(spool_path) as spool:
        uplink = Uplink(spool, api_url=api_url, api_key=api_key)
        uplink_stop, link_stop = asyncio.Event(), asyncio.Event()
        uplink_task = asyncio.create_task(uplink.run(uplink_stop), name="uplink")
        links = [DeviceLink(DeviceLinkConfig(subject_id=t.subject, device_id=t.id,
                                             address=t.address, name=t.name, **backend),
                            spool, on_spooled=uplink.notify) for t in targets]
        tasks = [asyncio.create_task(dl.run(link_stop)) for dl in links]
        if live:
            tasks.append(asyncio.create_task(LiveStatus(links, spool, uplink).run(link_stop)))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration_s)
            drained = await _finish(links, tasks, link_stop, uplink, uplink_task,
                                    uplink_stop, drain_timeout_s)
        finally:
            for task in (*tasks, uplink_task):
                task.cancel()
            await asyncio.gather(*tasks, uplink_task, return_exceptions=True)
            if transport is not None:
                await bumble_central_close(transport)
        report = RunReport(spool_depth=spool.depth, dead_letters=spool.dead_depth,
                           drained=drained)
        for t, dl in zip(targets, links, strict=True):
            report.subjects[t.subject] = _report_for(dl, {}, uplink, t.subject)
    return report


async def run_device(
    *,
    api_url: str,
    subject: str,
    spool_path: str | Path,
    address: str | None = None,
    name: str | None = None,
    device: str | None = None,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    drain_timeout_s: float = 30.0,
    bumble_transport: str | None = None,
    api_key: str | None = None,
) -> RunReport:
    """One wearable (by address or advertised name): :func:`run_devices` with one target.

    Example
    -------
    ``asyncio.run(run_device(api_url=url, address="AA:BB:CC:DD:EE:FF", subject="s01",
    spool_path="spool.db", duration_s=600))``
    """
    if address is None and name is None:
        raise ValueError("run_device needs address= or name=")
    return await run_devices(
        [DeviceTarget(subject, address=address, name=name, device_id=device)],
        api_url=api_url, spool_path=spool_path, duration_s=duration_s, stop=stop,
        drain_timeout_s=drain_timeout_s, bumble_transport=bumble_transport, api_key=api_key)
