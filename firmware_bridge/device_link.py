"""The bleak link to one wearable: scan, connect, subscribe, clock, reconnect; decode → spool.

Everything BLE goes through bleak's own API (``BleakScanner`` / ``BleakClient``). The backend is
injected from :class:`DeviceLinkConfig`: ``backend=None`` uses the platform's (BlueZ,
CoreBluetooth, WinRT); without a radio, ``firmware_bridge.bumble_backend`` classes plus
``backend_kwargs={"bumble": BumbleTransport(...)}``. The ATT MTU is negotiated by the backend
(the bumble backend requests 247 on connect; BlueZ negotiates by itself).

Per session (one connection):

1. subscribe to the wearemo control point, ``READ_CLOCK`` (feeds the :class:`DeviceClock`);
2. subscribe to the wearemo data characteristic; after a reconnect, ``RESUME_FROM`` the next
   ``seq`` of every channel so the frames sampled while the link was down are re-sent (held and
   put in ``seq`` order before live frames are assembled, so batches stay in time order);
3. ``START`` the configured channels; subscribe to Heart Rate Measurement 0x2A37;
4. on a device with Polar's PMD service (and no wearemo sensor service needed): read its
   features, subscribe to PMD control and data, and per measurement (PPG, PPI, ACC) ask for
   the settings, choose the highest of each and START it; redone after every reconnect (a
   Polar sensor stops measuring when the link drops). PPG channel 0 → ``ppg``
   (raw × factor), ACC → ``acc`` in g (raw mG × factor / 1000), PPI → ``rr`` (records with the
   blocker flag, or without skin contact where the sensor detects it, are dropped and counted;
   while PPI runs the HRS RR intervals are ignored, so beats are not stored twice); sample
   times from the PMD frame times (ns since 2000) through a :class:`DeviceClock`;
5. until stopped or the link drops: ``READ_CLOCK`` every ``clock_interval_s``; a rejected data
   frame or a ``seq`` gap holds further frames and asks the device to re-send from the first
   missing ``seq`` (``RESUME_FROM``) while the link stays up.

Bad input (unknown devices, services missing a characteristic, truncated / oversize / corrupt
frames, sequence numbers going backwards, clocks jumping) is logged with the device and the
reason and counted in :attr:`DeviceLinkStats.bad_input`; it never stops the link.

After a link loss the old client is disconnected and awaited, then a fresh ``BleakClient`` is
made (reusing a client on BlueZ duplicated notifications) with exponential backoff.

Notification callbacks only put ``(characteristic uuid, bytes, host time ns)`` on an
``asyncio.Queue``; one consumer task decodes (counting decode errors, never stopping on them),
maps device time to UTC, assembles :class:`~wearemo.samples.SampleBatch`es and puts them into
the :class:`~firmware_bridge.spool.Spool`.

Example
-------
>>> cfg = DeviceLinkConfig(subject_id="demo-01", device_id="vw-01", name="wearemo-vw-01")
>>> cfg.channels == frozenset(SENSOR_CHANNELS)
True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError
from bleak_retry_connector import establish_connection

from firmware_bridge.assembler import BatchAssembler
from firmware_bridge.device_clock import DeviceClock
from firmware_bridge.gatt.errors import GattDecodeError
from firmware_bridge.gatt.heart_rate import HR_MEASUREMENT_UUID, decode_heart_rate_measurement
from firmware_bridge.gatt.polar_pmd import (
    PMD_CONTROL_POINT_UUID,
    PMD_DATA_UUID,
    POLAR_EPOCH_UNIX_NS,
    MeasurementType,
    PmdControlResponse,
    PmdFrame,
    PmdOpcode,
    PmdSetting,
    decode_pmd_control_response,
    decode_pmd_frame,
    decode_pmd_settings,
    encode_pmd_start,
)
from firmware_bridge.gatt.wearemo_sensor import (
    CONTROL_CHAR_UUID,
    DATA_CHAR_UUID,
    ClockReading,
    Command,
    CommandResult,
    ReadClockCommand,
    Response,
    ResultCode,
    ResumeFromCommand,
    SensorFrame,
    StartCommand,
    declared_frame_length,
    decode_frame,
    decode_response,
    encode_command,
)
from firmware_bridge.spool import Spool, SpoolFullError
from wearemo.samples import Channel, SampleBatch

__all__ = ["BAD_INPUT_REASONS", "PMD_MEASUREMENTS", "SENSOR_CHANNELS", "DeviceLink",
           "DeviceLinkConfig", "DeviceLinkStats"]

logger = logging.getLogger(__name__)

#: Channels carried by the wearemo sensor service.
SENSOR_CHANNELS = (Channel.PPG, Channel.EDA, Channel.TEMP, Channel.ACC)

#: PMD measurements the link starts when a device offers them.
PMD_MEASUREMENTS = frozenset({MeasurementType.PPG, MeasurementType.PPI, MeasurementType.ACC})
#: Keys of :attr:`DeviceLinkStats.bad_input`.
BAD_INPUT_REASONS = (
    "unknown_device", "missing_characteristic", "truncated_frame", "oversize_frame",
    "corrupt_frame", "seq_backwards", "clock_backwards", "clock_jump", "pmd_refused",
)
_PMD_CHANNEL = {MeasurementType.PPG: Channel.PPG, MeasurementType.ACC: Channel.ACC}
_PMD_ALREADY_IN_STATE = 6
_CLOCK_JUMP_US = 2_000_000  # frame time this far past where its channel's previous frame ended
_ANCHOR_MAX_AGE_NS = 1_000_000_000
_HOLD = "hold"
_RELEASE = "release"


@dataclass(frozen=True)
class DeviceLinkConfig:
    """How to reach one wearable and whom its data belongs to.

    Parameters
    ----------
    subject_id, device_id
        Stamped on every batch (the device → subject mapping comes from configuration).
    address, name
        Find the device by address, else by advertised name (one of them is required).
    backend, scanner_backend
        bleak backend classes; None uses the platform's.
    backend_kwargs
        Extra keyword arguments for both backends (e.g. ``{"bumble": BumbleTransport(...)}``).
    channels
        wearemo sensor channels to START.
    scan_timeout_s, connect_timeout_s
        Per attempt.
    reconnect_initial_s, reconnect_max_s
        Backoff between attempts (doubling, capped).
    connect_attempts
        ``establish_connection`` attempts per round.
    command_timeout_s
        Wait for a control-point answer.
    clock_interval_s
        ``READ_CLOCK`` period while connected.
    max_batch_s
        Batch length (see :class:`~firmware_bridge.assembler.BatchAssembler`).
    flush_after_s
        A partly filled batch is spooled once its first sample arrived this long ago (host).
    resume
        After a reconnect, a rejected frame or a ``seq`` gap, ask for the missed frames with
        ``RESUME_FROM``.
    pmd_measurements
        Polar PMD measurements to start when the device has the PMD service.
    pmd_time_utc
        PMD frame times are the sensor's clock, ns since 2000-01-01; the Polar app and SDK set
        it to UTC (True). False for a sensor whose clock was never set: its times are then
        mapped to UTC through a clock fit on frame arrivals (offset and drift).
    hr_gap_s
        Heart Rate Measurements further apart than this (in device time) are a reported gap.
    """

    subject_id: str
    device_id: str
    address: str | None = None
    name: str | None = None
    backend: type[BaseBleakClient] | None = None
    scanner_backend: type[BaseBleakScanner] | None = None
    backend_kwargs: Mapping[str, Any] = field(default_factory=dict)
    channels: frozenset[Channel] = frozenset(SENSOR_CHANNELS)
    scan_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_attempts: int = 2
    command_timeout_s: float = 5.0
    clock_interval_s: float = 5.0
    max_batch_s: float = 1.0
    flush_after_s: float = 2.0
    resume: bool = True
    pmd_measurements: frozenset[MeasurementType] = PMD_MEASUREMENTS
    pmd_time_utc: bool = True
    hr_gap_s: float = 2.5

    def __post_init__(self) -> None:
        if self.address is None and self.name is None:
            raise ValueError("DeviceLinkConfig: give address= or name=")
        if not self.hr_gap_s > 0:
            raise ValueError(f"hr_gap_s must be > 0, got {self.hr_gap_s}")
        if unknown := [m for m in self.pmd_measurements if not isinstance(m, MeasurementType)]:
            raise ValueError(f"pmd_measurements: {unknown} are not PMD measurement types; "
                             f"options: {[m.name for m in PMD_MEASUREMENTS]}")
        bad = [c for c in self.channels if c not in SENSOR_CHANNELS]
        if bad:
            raise ValueError(
                f"channels: {bad} are not sensor channels; options: "
                f"{[c.value for c in SENSOR_CHANNELS]}"
            )


@dataclass
class DeviceLinkStats:
    """Counters of one device link.

    Attributes
    ----------
    connects, link_losses, connect_failures
        Sessions started, unexpected disconnects, failed connect rounds.
    notifications
        Notifications received per kind (``data``, ``hr``, ``control``).
    decode_errors
        Notifications that failed to decode (dropped, counted, logged).
    decoded_samples
        Samples per channel in successfully decoded notifications (``hr``: one per
        notification, ``rr``: one per interval), duplicates included.
    resume_partial, resume_unsupported
        RESUME_FROM answers that could not fill the whole gap.
    spooled_batches, spool_refused_batches
        Batches put into / refused by the spool (refusals are logged).
    bad_input
        Rejected or suspicious input per reason (:data:`BAD_INPUT_REASONS`), each logged with
        the device id.
    repairs
        ``RESUME_FROM`` rounds asked while connected (after a rejected frame or a seq gap).
    clock_resets
        Device clock restarts detected (reboot: ticks or PMD time going backwards).
    ppi_rejected
        PMD PPI records dropped for their blocker / skin-contact flags.
    pmd_started
        PMD measurements running in the current session.
    """

    connects: int = 0
    link_losses: int = 0
    connect_failures: int = 0
    notifications: dict[str, int] = field(default_factory=dict)
    decode_errors: int = 0
    decoded_samples: dict[str, int] = field(default_factory=dict)
    resume_partial: int = 0
    resume_unsupported: int = 0
    spooled_batches: int = 0
    spool_refused_batches: int = 0
    bad_input: dict[str, int] = field(default_factory=dict)
    repairs: int = 0
    clock_resets: int = 0
    ppi_rejected: int = 0
    pmd_started: set[str] = field(default_factory=set)

    def _add(self, table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n


class DeviceLink:
    """Keep one wearable connected and its data flowing into the spool.

    Parameters
    ----------
    config
        The device, its subject and the bleak backend.
    spool
        Where assembled batches go.
    on_spooled
        Called after batches were spooled (e.g. ``Uplink.notify``).

    Example
    -------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp, Spool(pathlib.Path(tmp) / "s.db") as sp:
    ...     link = DeviceLink(DeviceLinkConfig(subject_id="s", device_id="d", name="x"), sp)
    ...     link.connected.is_set()
    False
    """

    def __init__(
        self,
        config: DeviceLinkConfig,
        spool: Spool,
        *,
        on_spooled: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.on_spooled = on_spooled
        self.clock = DeviceClock()
        # PMD frame times: a clock of their own. Frames of different measurements interleave
        # (a PPI frame's last beat is older than the PPG sample before it), so only a step
        # back of more than 10 s is a restart of the sensor clock.
        self.pmd_clock = DeviceClock(backwards_tolerance_us=10_000_000)
        self.assembler = BatchAssembler(
            subject_id=config.subject_id, device_id=config.device_id,
            max_batch_s=config.max_batch_s,
        )
        if config.resume:
            # A restarted bridge (after a crash or kill) continues where its spool ends: the
            # device re-sends the frames after the stored seqs, and HR samples already stored
            # are not stored again.
            self.assembler.restore({Channel(ch): v
                                    for ch, v in spool.cursors(config.device_id).items()})
        self.stats = DeviceLinkStats()
        self.connected = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
        self._responses: asyncio.Queue[Response] = asyncio.Queue()
        self._command_lock = asyncio.Lock()
        self._held: list[tuple[SensorFrame, int]] | None = None  # consumer side
        self._holding = False  # session side: a HOLD was queued and no RELEASE yet
        self._anchor: tuple[float, int, bool] | None = None  # device µs, host ns, rtc
        self._last_rx_ns = 0
        self._kinds = {DATA_CHAR_UUID: "data", HR_MEASUREMENT_UUID: "hr",
                       CONTROL_CHAR_UUID: "control", PMD_DATA_UUID: "pmd",
                       PMD_CONTROL_POINT_UUID: "pmd_control"}
        self._pmd_responses: asyncio.Queue[PmdControlResponse] = asyncio.Queue()
        self._pmd_rate: dict[MeasurementType, float] = {}  # chosen before START
        self._pmd_factor: dict[MeasurementType, float] = {}  # from the START answer
        self._pmd_last_ns: dict[MeasurementType, int] = {}  # sensor time of the last sample
        self._ppi_active = False
        self._frame_end_us: dict[Channel, float] = {}
        self._repair = asyncio.Event()  # set by the consumer: hold, RESUME_FROM, release
        self._repair_asks = 0
        self._session = 0
        self._sensor = False  # the device has the wearemo sensor service
        # HRS notifications that came before the first device-time reference (a PMD device's
        # first frame): mapped once it arrives, not stamped with the host's clock
        self._expect_anchor = False
        self._hr_pending: list[tuple[bytes, int]] = []
        self._hr_last: tuple[int, int, int] | None = None  # host ns, UTC ns, session

    # -- public --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and keep reconnecting until ``stop`` is set; then drain and flush.

        Example
        -------
        See :mod:`firmware_bridge.runner`.
        """
        consumer = asyncio.create_task(self._consume(), name=f"consume-{self.config.device_id}")
        try:
            delay = self.config.reconnect_initial_s
            while not stop.is_set():
                started = await self._one_session(stop)
                if stop.is_set():
                    break
                delay = self.config.reconnect_initial_s if started else min(
                    self.config.reconnect_max_s, delay * 2
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await self._queue.join()
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            self._expect_anchor = False  # no reference came: the host's clock is all there is
            self._flush_hr_pending()
            self._spool_put(self._release_held() + self.assembler.flush())

    async def wait_quiet(self, *, quiet_s: float, timeout_s: float) -> bool:
        """Wait until no notification arrived for ``quiet_s`` and all were processed.

        Returns False if that did not happen within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            idle_s = (time.time_ns() - self._last_rx_ns) / 1e9
            if idle_s >= quiet_s and self._queue.empty():
                await self._queue.join()
                return True
            await asyncio.sleep(min(quiet_s / 2, 0.05))
        return False

    # -- connection ----------------------------------------------------------------------------

    async def _find(self) -> BLEDevice | None:
        cfg = self.config
        kwargs: dict[str, Any] = dict(cfg.backend_kwargs)
        if cfg.scanner_backend is not None:
            kwargs["backend"] = cfg.scanner_backend
        if cfg.address is not None:
            return await BleakScanner.find_device_by_address(
                cfg.address, timeout=cfg.scan_timeout_s, **kwargs
            )
        assert cfg.name is not None
        return await BleakScanner.find_device_by_name(
            cfg.name, timeout=cfg.scan_timeout_s, **kwargs
        )

    async def _one_session(self, stop: asyncio.Event) -> bool:
        """One find → connect → stream → disconnect round; True if streaming started."""
        cfg = self.config
        lost = asyncio.Event()
        client: BleakClient | None = None
        self._holding = False
        try:
            # Scanning and connecting give way at once when the link is stopped.
            connecting = asyncio.ensure_future(self._connect(lost))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, BleakError, TimeoutError):
                    await connecting
                return False
            client = connecting.result()
            self.stats.connects += 1
            self._session += 1
            await self._start_streaming(client)
            self.connected.set()
            logger.info("%s: streaming (MTU %d)", cfg.device_id, client.mtu_size)
            await self._stream(client, stop, lost)
            return True
        except (BleakError, TimeoutError, OSError, GattDecodeError) as error:
            self.stats.connect_failures += 1
            logger.warning("%s: session failed: %s", cfg.device_id, error)
            return False
        finally:
            self.connected.clear()
            if lost.is_set():
                self.stats.link_losses += 1
            if client is not None:
                # Always await the old client before a fresh one (BlueZ duplicates otherwise).
                with contextlib.suppress(Exception):
                    await client.disconnect()
            if self._holding:  # a session that died while resuming: assemble what came
                self._holding = False
                self._queue.put_nowait((_RELEASE, b"", 0))

    async def _connect(self, lost: asyncio.Event) -> BleakClient:
        cfg = self.config
        device = await self._find()
        if device is None:
            raise BleakError(f"{cfg.address or cfg.name} not found")
        return await establish_connection(
            BleakClient, device, cfg.name or device.address,
            disconnected_callback=lambda _c: lost.set(),
            max_attempts=cfg.connect_attempts, use_services_cache=False,
            timeout=cfg.connect_timeout_s, backend=cfg.backend, **dict(cfg.backend_kwargs),
        )

    def _callback(self, char: BleakGATTCharacteristic, data: bytearray) -> None:
        # Only enqueue: decoding and everything else happens in the consumer task.
        now = time.time_ns()
        self._last_rx_ns = now
        self._queue.put_nowait((char.uuid, bytes(data), now))

    async def _start_streaming(self, client: BleakClient) -> None:
        cfg = self.config
        services = client.services
        data = services.get_characteristic(DATA_CHAR_UUID)
        control = services.get_characteristic(CONTROL_CHAR_UUID)
        hr = services.get_characteristic(HR_MEASUREMENT_UUID)
        pmd_control = services.get_characteristic(PMD_CONTROL_POINT_UUID)
        pmd_data = services.get_characteristic(PMD_DATA_UUID)
        for service, chars in (("wearemo sensor", {"data": data, "control": control}),
                               ("Polar PMD", {"control point": pmd_control, "data": pmd_data})):
            missing = [k for k, v in chars.items() if v is None]
            if len(missing) == 1:
                self._bad("missing_characteristic",
                          f"{service} service without its {missing[0]} characteristic: unused")
        usable = (data is not None and control is not None) or hr is not None or (
            pmd_control is not None and pmd_data is not None)
        if not usable:
            self._bad("unknown_device", "neither the wearemo sensor, the Heart Rate nor the "
                      "Polar PMD service")
            raise BleakError(f"{cfg.device_id}: neither the wearemo sensor, the HR nor the "
                             "PMD service")
        self.stats.pmd_started.clear()
        self._ppi_active = False
        self._sensor = data is not None and control is not None
        self._expect_anchor = self._sensor or (
            pmd_control is not None and pmd_data is not None and cfg.pmd_time_utc)
        if pmd_control is not None and pmd_data is not None and cfg.pmd_measurements:
            # Both services on one device: the wearemo service (which can re-send) carries the
            # channels it has; PMD adds the rest (PPI), so nothing is stored twice.
            skip = {m for m, ch in _PMD_CHANNEL.items() if self._sensor and ch in cfg.channels}
            await self._start_pmd(client, pmd_control, pmd_data, skip=skip)
        if data is not None and control is not None:
            await client.start_notify(control, self._callback)
            await self._command(client, control, ReadClockCommand())
            resume = {
                ch: seq + 1
                for ch in cfg.channels
                if cfg.resume and (seq := self.assembler.last_seq(ch)) is not None
            }
            if resume:
                self._holding = True
                self._queue.put_nowait((_HOLD, b"", 0))
            await client.start_notify(data, self._callback)
            for ch, seq in sorted(resume.items()):
                answer = await self._command(client, control, ResumeFromCommand(ch, seq))
                if isinstance(answer, CommandResult) and answer.result is ResultCode.PARTIAL:
                    self.stats.resume_partial += 1
                elif isinstance(answer, CommandResult) and answer.result is not ResultCode.SUCCESS:
                    self.stats.resume_unsupported += 1
            if cfg.channels:
                await self._command(client, control, StartCommand(cfg.channels))
            if resume:
                self._holding = False
                self._queue.put_nowait((_RELEASE, b"", 0))
        if hr is not None:
            await client.start_notify(hr, self._callback)

    async def _stream(self, client: BleakClient, stop: asyncio.Event, lost: asyncio.Event) -> None:
        control = client.services.get_characteristic(CONTROL_CHAR_UUID)
        has_data = client.services.get_characteristic(DATA_CHAR_UUID) is not None
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
        next_clock = time.monotonic() + self.config.clock_interval_s
        repair: asyncio.Future[Any] | None = None
        try:
            while not (stop.is_set() or lost.is_set()):
                repair = asyncio.ensure_future(self._repair.wait())
                await asyncio.wait([*waiters, repair],
                                   timeout=max(0.0, next_clock - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
                repair.cancel()
                if stop.is_set() or lost.is_set():
                    continue
                if control is None or not has_data:  # HRS / PMD only: nothing to ask
                    self._repair.clear()
                    next_clock = time.monotonic() + self.config.clock_interval_s
                    continue
                if self._repair.is_set():
                    await self._resume_all(client, control)
                if time.monotonic() >= next_clock:
                    next_clock = time.monotonic() + self.config.clock_interval_s
                    await self._command(client, control, ReadClockCommand())
        finally:
            for w in waiters:
                w.cancel()
            if repair is not None:
                repair.cancel()

    async def _resume_all(self, client: BleakClient, control: BleakGATTCharacteristic) -> None:
        """While connected: the consumer holds frames since a rejected frame or a seq gap; ask
        every channel to re-send from its first missing seq, then assemble in seq order."""
        self.stats.repairs += 1
        self._holding = True
        asked = self._repair_asks
        for ch in sorted(self.config.channels):
            seq = self.assembler.last_seq(ch)
            if seq is None:
                continue
            answer = await self._command(client, control, ResumeFromCommand(ch, seq + 1))
            if isinstance(answer, CommandResult) and answer.result is ResultCode.PARTIAL:
                self.stats.resume_partial += 1
        # Done only if nothing new went wrong meanwhile; else the frames stay held (a RELEASE
        # is ignored while a repair is pending) and the next round asks again.
        if self._repair_asks == asked:
            self._repair.clear()
        self._holding = False
        self._queue.put_nowait((_RELEASE, b"", 0))

    async def _start_pmd(self, client: BleakClient, control: BleakGATTCharacteristic,
                         data: BleakGATTCharacteristic, *,
                         skip: set[MeasurementType]) -> None:
        """Subscribe to PMD and start the configured measurements the sensor offers."""
        cfg = self.config
        offered = set(cfg.pmd_measurements) - skip
        feature = bytes(await client.read_gatt_char(control))
        if len(feature) >= 2 and feature[0] == 0x0F:  # feature read: a bit per measurement
            bits = int.from_bytes(feature[1:], "little")
            offered = {m for m in offered if bits >> int(m) & 1}
        await client.start_notify(control, self._callback)
        await client.start_notify(data, self._callback)
        for m in sorted(offered):
            chosen: dict[PmdSetting, float] = {}
            if m is not MeasurementType.PPI:
                answer = await self._pmd_command(client, control, bytes(
                    [PmdOpcode.GET_MEASUREMENT_SETTINGS, int(m)]))
                if not answer.ok:
                    self._bad("pmd_refused", f"settings of {m.name}: status {answer.status}")
                    continue
                settings = decode_pmd_settings(answer.parameters)
                # The highest of each (rate, resolution, range); the factor is not chosen.
                chosen = {k: max(v) for k, v in settings.items()
                          if v and k is not PmdSetting.FACTOR}
                if settings.get(PmdSetting.FACTOR):
                    self._pmd_factor[m] = float(settings[PmdSetting.FACTOR][0])
                if PmdSetting.SAMPLE_RATE in chosen:
                    self._pmd_rate[m] = float(chosen[PmdSetting.SAMPLE_RATE])
            answer = await self._pmd_command(client, control, encode_pmd_start(m, chosen))
            if not answer.ok and answer.status != _PMD_ALREADY_IN_STATE:
                self._bad("pmd_refused", f"start of {m.name}: status {answer.status}")
                continue
            self.stats.pmd_started.add(m.name.lower())
            if m is MeasurementType.PPI:
                self._ppi_active = True

    async def _pmd_command(self, client: BleakClient, control: BleakGATTCharacteristic,
                           payload: bytes) -> PmdControlResponse:
        async with self._command_lock:
            while not self._pmd_responses.empty():
                self._pmd_responses.get_nowait()
            await client.write_gatt_char(control, payload, response=True)
            deadline = time.monotonic() + self.config.command_timeout_s
            while True:  # skip answers to other requests
                try:
                    answer = await asyncio.wait_for(self._pmd_responses.get(),
                                                    max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise BleakError(f"no PMD answer to {payload.hex()}") from None
                if answer.opcode == payload[0] and answer.measurement == payload[1]:
                    return answer

    async def _command(
        self, client: BleakClient, control: BleakGATTCharacteristic, command: Command
    ) -> Response:
        async with self._command_lock:
            while not self._responses.empty():  # stale answer of a timed-out command
                self._responses.get_nowait()
            await client.write_gatt_char(control, encode_command(command), response=True)
            try:
                return await asyncio.wait_for(self._responses.get(), self.config.command_timeout_s)
            except TimeoutError:
                raise BleakError(f"no answer to {type(command).__name__}") from None

    # -- consumer ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        poll_s = min(0.5, self.config.flush_after_s / 2)
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), poll_s)
            except TimeoutError:
                self._spool_put(self.assembler.flush_stale(
                    host_time_ns=time.time_ns(), max_age_s=self.config.flush_after_s))
                continue
            try:
                self._handle(*item)
            except Exception:  # never let one bad item stop the stream
                logger.exception("%s: failed to handle a notification", self.config.device_id)
            finally:
                self._queue.task_done()

    def _handle(self, uuid: str, data: bytes, host_ns: int) -> None:
        if uuid == _HOLD:
            if self._held is None:  # a second HOLD (session retried) keeps what is held
                self._held = []
            return
        if uuid == _RELEASE:
            if not self._repair.is_set():  # a pending repair's own RELEASE comes later
                self._spool_put(self._release_held())
            return
        kind = self._kinds.get(uuid, uuid)
        self.stats._add(self.stats.notifications, kind)
        try:
            if kind == "data":
                self._on_frame(decode_frame(data), host_ns)
            elif kind == "hr":
                self._on_heart_rate(data, host_ns)
            elif kind == "control":
                self._on_response(decode_response(data), host_ns)
            elif kind == "pmd":
                self._on_pmd_frame(decode_pmd_frame(data), host_ns)
            elif kind == "pmd_control":
                self._on_pmd_response(decode_pmd_control_response(data))
        except GattDecodeError as error:
            self.stats.decode_errors += 1
            self._bad(self._reject_reason(kind, data), f"{kind} notification dropped: {error}")
            if kind == "data":
                self._want_repair()  # the ring buffer still has it: ask for it again

    def _reject_reason(self, kind: str, data: bytes) -> str:
        if kind == "data":
            declared = declared_frame_length(data)
            if declared is None and len(data) < 28:
                return "truncated_frame"
            if declared is not None and len(data) != declared:
                return "truncated_frame" if len(data) < declared else "oversize_frame"
        elif kind == "pmd" and len(data) < 10:
            return "truncated_frame"
        return "corrupt_frame"

    def _bad(self, reason: str, detail: str) -> None:
        """Count and log one piece of bad input (never raises)."""
        self.stats._add(self.stats.bad_input, reason)
        logger.warning("%s: bad input (%s): %s", self.config.device_id, reason, detail)

    def _want_repair(self) -> None:
        """Hold frames from now on and let the session ask for a re-send (``RESUME_FROM``)."""
        if not self.config.resume:
            return
        if self._held is None:
            self._held = []
        self._repair_asks += 1
        self._repair.set()

    def _on_response(self, response: Response, host_ns: int) -> None:
        if isinstance(response, ClockReading):
            epoch = self.clock.epoch
            self.clock.observe(response.device_time_us, host_ns, rtc=response.rtc)
            if self.clock.epoch != epoch:
                # Rebooted (ticks restarted) or the RTC was set back / lost: old references
                # must not map the new epoch's times.
                self.stats.clock_resets += 1
                self._anchor = None
                self._frame_end_us.clear()
                self._bad("clock_backwards", f"device clock went back to "
                          f"{response.device_time_us} µs ({'RTC' if response.rtc else 'ticks'})")
            self._update_anchor(float(response.device_time_us), host_ns, response.rtc)
        self._responses.put_nowait(response)

    def _on_frame(self, frame: SensorFrame, host_ns: int) -> None:
        self.stats._add(self.stats.decoded_samples, frame.channel.value, frame.n_samples)
        last_us = frame.device_time_us + (frame.n_samples - 1) * 1e6 / frame.rate_hz
        last_seq = self.assembler.last_seq(frame.channel)
        if self._held is None and last_seq is not None and frame.seq > last_seq + 1 and \
                self.config.resume and self.connected.is_set():
            self._want_repair()  # frames missing on a live link: ask again before going on
        if self._held is not None:
            self._held.append((frame, host_ns))
            return
        # The device sends a frame once its last sample is taken: a fresh time reference.
        self._update_anchor(last_us, host_ns, frame.rtc)
        self._assemble(frame, last_us, host_ns)

    def _assemble(self, frame: SensorFrame, last_us: float, host_ns: int) -> list[SampleBatch]:
        """Check a frame's seq and time against its channel's previous frame, then assemble it
        (spooled here; the batches are also returned)."""
        channel = frame.channel
        stats = self.assembler.stats.of(channel)
        restarts = stats.restarts
        end_us = self._frame_end_us.get(channel)
        last_seq = self.assembler.last_seq(channel)
        start_ns = self._frame_start_ns(frame, last_us, host_ns)
        if self.assembler.is_duplicate(frame, start_ns=start_ns):
            return self.assembler.add_frame(frame, start_ns=start_ns, host_time_ns=host_ns)
        if end_us is not None and frame.device_time_us < end_us - 0.5e6 / frame.rate_hz:
            # Earlier than data already taken, with no clock reset seen: storing it would put
            # a wrong (overlapping) time on it. A real reboot shows in READ_CLOCK first.
            reason = "seq_backwards" if last_seq is not None and frame.seq <= last_seq \
                else "clock_jump"
            self._bad(reason, f"{channel.value} seq {frame.seq} (after {last_seq}) starts at "
                      f"{frame.device_time_us} µs, before the previous frame's end "
                      f"{end_us:.0f} µs: dropped")
            return []
        out = self.assembler.add_frame(frame, start_ns=start_ns, host_time_ns=host_ns)
        if stats.restarts != restarts:
            self._bad("seq_backwards", f"{channel.value} seq {frame.seq} after {last_seq}: a "
                      "new run (device restarted)")
        elif last_seq == frame.seq - 1 and end_us is not None and \
                frame.device_time_us > end_us + _CLOCK_JUMP_US:
            self._bad("clock_jump", f"{channel.value} seq {frame.seq} starts at "
                      f"{frame.device_time_us} µs, {(frame.device_time_us - end_us) / 1e6:.1f}"
                      " s after its previous frame ended")
        self._frame_end_us[channel] = max(end_us or 0.0, last_us + 1e6 / frame.rate_hz)
        self._spool_put(out)
        return out

    def _frame_start_ns(self, frame: SensorFrame, last_us: float, host_ns: int) -> int:
        if frame.rtc:
            return frame.device_time_us * 1000  # RTC device time is UTC
        try:
            return self.clock.to_utc_ns(frame.device_time_us)
        except LookupError:  # no clock reading yet: the arrival is the best reference
            self.clock.observe(round(last_us), host_ns, rtc=False)
            return self.clock.to_utc_ns(frame.device_time_us)

    def _release_held(self) -> list[SampleBatch]:
        held, self._held = self._held, None
        out: list[SampleBatch] = []
        for frame, host_ns in sorted(held or [], key=lambda fh: (fh[0].channel, fh[0].seq)):
            last_us = frame.device_time_us + (frame.n_samples - 1) * 1e6 / frame.rate_hz
            self._assemble(frame, last_us, host_ns)
        return out

    def _on_heart_rate(self, data: bytes, host_ns: int) -> None:
        m = decode_heart_rate_measurement(data)
        if self._expect_anchor and self._anchor is None and len(self._hr_pending) < 256:
            self._hr_pending.append((data, host_ns))
            return
        if self._ppi_active and m.rr_1024:
            m = replace(m, rr_1024=())  # PMD PPI carries the beats, timed by the sensor
        self.stats._add(self.stats.decoded_samples, Channel.HR.value)
        if m.rr_1024:
            self.stats._add(self.stats.decoded_samples, Channel.RR.value, len(m.rr_1024))
        time_ns = self._host_to_utc_ns(host_ns)
        self._note_hr_gap(host_ns, time_ns)
        self._spool_put(self.assembler.add_heart_rate(m, time_ns=time_ns, host_time_ns=host_ns))

    def _note_hr_gap(self, host_ns: int, time_ns: int) -> None:
        """HRS cannot re-send: report a stretch without notifications as a gap.

        Across a reconnect the device-time distance counts; within a session the arrival gap,
        in device time (a replay faster than real time runs the device clock faster), because
        mapped HRS times may jump while the clock reference catches up with a frame backlog.
        """
        last, self._hr_last = self._hr_last, (host_ns, time_ns, self._session)
        if last is None:
            return
        last_host, last_time, session = last
        gap_ns = self.config.hr_gap_s * 1e9
        fit = self.clock.fit
        device_per_host = 1.0 / fit.slope if fit is not None and fit.drift_estimated else 1.0
        if session != self._session and time_ns - last_time > gap_ns:
            self.assembler.note_gap(Channel.HR, (time_ns - last_time) / 1e9)
        elif session == self._session and (host_ns - last_host) * device_per_host > gap_ns:
            # its length: the device-time distance, unless the arrival gap says more
            seconds = max(time_ns - last_time, (host_ns - last_host) * device_per_host) / 1e9
            self.assembler.note_gap(Channel.HR, seconds)

    def _on_pmd_response(self, answer: PmdControlResponse) -> None:
        if answer.opcode == PmdOpcode.REQUEST_MEASUREMENT_START and answer.ok:
            # The factor of the samples that follow (handled here, before any of them).
            with contextlib.suppress(GattDecodeError, ValueError):
                factor = decode_pmd_settings(answer.parameters).get(PmdSetting.FACTOR)
                if factor:
                    self._pmd_factor[MeasurementType(answer.measurement)] = float(factor[0])
        self._pmd_responses.put_nowait(answer)

    def _pmd_utc_ns(self, sensor_ns: int, host_ns: int) -> int:
        """UTC of a PMD sensor time (ns since 2000, or since boot for an unset clock)."""
        if self.config.pmd_time_utc:
            return POLAR_EPOCH_UNIX_NS + sensor_ns
        return self.pmd_clock.to_utc_ns(sensor_ns // 1000) + sensor_ns % 1000

    def _on_pmd_frame(self, frame: PmdFrame, host_ns: int) -> None:
        m = frame.measurement
        utc = self.config.pmd_time_utc
        previous = self._pmd_last_ns.get(m)
        epoch = self.pmd_clock.epoch
        if frame.timestamp_ns or m is not MeasurementType.PPI:
            self.pmd_clock.observe(frame.timestamp_ns // 1000, host_ns, rtc=utc)
        if self.pmd_clock.epoch != epoch:
            self.stats.clock_resets += 1
            self._bad("clock_backwards", f"PMD {m.name} time went back from {previous} to "
                      f"{frame.timestamp_ns} ns (sensor restarted?)")
            previous = None
            self._pmd_last_ns.clear()
        elif previous is not None and frame.timestamp_ns <= previous:
            self._bad("clock_jump", f"PMD {m.name} frame at {frame.timestamp_ns} ns, not after "
                      f"the previous one at {previous} ns: dropped")
            return
        if m is MeasurementType.PPI:
            self._on_ppi(frame, host_ns)
            return
        channel = _PMD_CHANNEL.get(m)
        if channel is None or frame.n_samples == 0:
            return  # ECG, gyro, magnetometer: no wearemo channel
        n = frame.n_samples
        rate = self._pmd_rate.get(m)
        if rate is None and previous is not None and frame.timestamp_ns > previous:
            rate = round(n * 1e9 / (frame.timestamp_ns - previous), 2)
        if rate is None:
            self._bad("pmd_refused", f"{m.name} frame before its sample rate is known: dropped")
            return
        period_ns = 1e9 / rate
        if previous is not None and frame.timestamp_ns - (n - 1) * period_ns > \
                previous + 1.5 * period_ns:
            # PMD cannot re-send: a gap is reported, never filled in.
            self.assembler.note_gap(channel, (frame.timestamp_ns - n * period_ns - previous) / 1e9)
        self._pmd_last_ns[m] = frame.timestamp_ns
        if utc and not self._sensor:
            # The sensor's clock is the device time HRS notifications are mapped onto.
            self._update_anchor((POLAR_EPOCH_UNIX_NS + frame.timestamp_ns) / 1000, host_ns, True)
        factor = self._pmd_factor.get(m, 1.0)
        raw = frame.samples.astype(np.float64)
        values = raw[:, 0] * factor if channel is Channel.PPG else raw[:, :3] * factor / 1000
        self.stats._add(self.stats.decoded_samples, channel.value, n)
        first_ns = frame.timestamp_ns - round((n - 1) * period_ns)
        last_seq = self.assembler.last_seq(channel)
        sensor = SensorFrame(channel, 0 if last_seq is None else last_seq + 1,
                             ((POLAR_EPOCH_UNIX_NS if utc else 0) + first_ns) // 1000,
                             utc, rate, values)
        self._spool_put(self.assembler.add_frame(
            sensor, start_ns=self._pmd_utc_ns(first_ns, host_ns), host_time_ns=host_ns))

    def _on_ppi(self, frame: PmdFrame, host_ns: int) -> None:
        records = frame.ppi
        if not records:
            return
        if frame.timestamp_ns:
            end_ns = self._pmd_utc_ns(frame.timestamp_ns, host_ns)
            self._pmd_last_ns[MeasurementType.PPI] = frame.timestamp_ns
        else:  # older firmware sends PPI without a time: the arrival, on the device clock
            end_ns = self._host_to_utc_ns(host_ns)
        # The newest beat ends at the frame time, each earlier one an interval before.
        later = np.concatenate([np.cumsum([r.ppi_ms for r in records][::-1])[::-1][1:], [0]])
        times, values = [], []
        for record, back_ms in zip(records, later, strict=True):
            if record.blocker or (record.skin_contact_supported and not record.skin_contact) \
                    or record.ppi_ms == 0:
                self.stats.ppi_rejected += 1
                continue
            times.append(end_ns - int(back_ms) * 1_000_000)
            values.append(float(record.ppi_ms))
        self.stats._add(self.stats.decoded_samples, Channel.RR.value, len(values))
        self._spool_put(self.assembler.add_events(Channel.RR, times, values,
                                                  host_time_ns=host_ns))

    def _project_us(self, host_ns: int) -> float | None:
        """Device time (µs) at a host instant, projected from the current anchor."""
        if self._anchor is None:
            return None
        anchor_us, anchor_host_ns, _rtc = self._anchor
        fit = self.clock.fit
        # host = slope · device  ⇒  device advances 1/slope µs per host µs (a replay at speed X
        # has slope 1/X once the clock has estimated it).
        per_host = 1.0 / fit.slope if fit is not None and fit.drift_estimated else 1.0
        return anchor_us + (host_ns - anchor_host_ns) / 1000 * per_host

    def _flush_hr_pending(self) -> None:
        pending, self._hr_pending = self._hr_pending, []
        for data, host_ns in pending:
            self._on_heart_rate(data, host_ns)

    def _update_anchor(self, device_us: float, host_ns: int, rtc: bool) -> None:
        """Keep the tightest recent reference for mapping host time onto device time.

        A frame's last sample time (or a CLOCK reading) is a lower bound of the device time at
        its arrival: a frame can leave late but never early. So the reference projecting the
        latest device time wins; one older than 1 s is replaced (rate errors accumulate).
        """
        if self._anchor is not None and self._anchor[2] == rtc:
            projected = self._project_us(host_ns)
            fresh = host_ns - self._anchor[1] < _ANCHOR_MAX_AGE_NS
            if projected is not None and fresh and device_us < projected:
                return
        self._anchor = (device_us, host_ns, rtc)
        if self._hr_pending:
            self._flush_hr_pending()

    def _host_to_utc_ns(self, host_ns: int) -> int:
        """Device-clock time of a host instant (HRS notifications carry no device time)."""
        device_us = self._project_us(host_ns)
        if device_us is None or self._anchor is None:
            return host_ns
        if self._anchor[2]:  # RTC
            return round(device_us * 1000)
        try:
            return self.clock.to_utc_ns(round(device_us))
        except LookupError:
            return host_ns

    def _spool_put(self, batches: list[SampleBatch]) -> None:
        if not batches:
            return
        device = self.config.device_id
        try:
            self.spool.put(batches, cursors={
                (device, ch.value): v for ch, v in self.assembler.cursors().items()})
        except SpoolFullError as error:
            self.stats.spool_refused_batches += len(batches)
            logger.error("%s: %s", self.config.device_id, error)
            return
        self.stats.spooled_batches += len(batches)
        if self.on_spooled is not None:
            self.on_spooled()
