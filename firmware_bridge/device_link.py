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
4. until stopped or the link drops: ``READ_CLOCK`` every ``clock_interval_s``.

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
from dataclasses import dataclass, field
from typing import Any

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
    decode_frame,
    decode_response,
    encode_command,
)
from firmware_bridge.spool import Spool, SpoolFullError
from wearemo.samples import Channel, SampleBatch

__all__ = ["SENSOR_CHANNELS", "DeviceLink", "DeviceLinkConfig", "DeviceLinkStats"]

logger = logging.getLogger(__name__)

#: Channels carried by the wearemo sensor service.
SENSOR_CHANNELS = (Channel.PPG, Channel.EDA, Channel.TEMP, Channel.ACC)

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
        After a reconnect, ask for the missed frames with ``RESUME_FROM``.
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

    def __post_init__(self) -> None:
        if self.address is None and self.name is None:
            raise ValueError("DeviceLinkConfig: give address= or name=")
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
                       CONTROL_CHAR_UUID: "control"}

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
        if data is None and hr is None:
            raise BleakError(f"{cfg.device_id}: neither the wearemo sensor nor the HR service")
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
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
        try:
            while not (stop.is_set() or lost.is_set()):
                await asyncio.wait(waiters, timeout=self.config.clock_interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                if control is not None and not (stop.is_set() or lost.is_set()):
                    await self._command(client, control, ReadClockCommand())
        finally:
            for w in waiters:
                w.cancel()

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
        except GattDecodeError as error:
            self.stats.decode_errors += 1
            logger.warning("%s: %s notification dropped: %s", self.config.device_id, kind, error)

    def _on_response(self, response: Response, host_ns: int) -> None:
        if isinstance(response, ClockReading):
            self.clock.observe(response.device_time_us, host_ns, rtc=response.rtc)
            self._update_anchor(float(response.device_time_us), host_ns, response.rtc)
        self._responses.put_nowait(response)

    def _on_frame(self, frame: SensorFrame, host_ns: int) -> None:
        self.stats._add(self.stats.decoded_samples, frame.channel.value, frame.n_samples)
        last_us = frame.device_time_us + (frame.n_samples - 1) * 1e6 / frame.rate_hz
        if self._held is not None:
            self._held.append((frame, host_ns))
            return
        # The device sends a frame once its last sample is taken: a fresh time reference.
        self._update_anchor(last_us, host_ns, frame.rtc)
        self._spool_put(self.assembler.add_frame(
            frame, start_ns=self._frame_start_ns(frame, last_us, host_ns), host_time_ns=host_ns))

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
            out += self.assembler.add_frame(
                frame, start_ns=self._frame_start_ns(frame, last_us, host_ns),
                host_time_ns=host_ns)
        return out

    def _on_heart_rate(self, data: bytes, host_ns: int) -> None:
        m = decode_heart_rate_measurement(data)
        self.stats._add(self.stats.decoded_samples, Channel.HR.value)
        if m.rr_1024:
            self.stats._add(self.stats.decoded_samples, Channel.RR.value, len(m.rr_1024))
        self._spool_put(self.assembler.add_heart_rate(
            m, time_ns=self._host_to_utc_ns(host_ns), host_time_ns=host_ns))

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
