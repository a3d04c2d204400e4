"""The virtual wearable: a BLE peripheral on bumble's real stack replaying a signal source.

It exposes the standard Heart Rate Service (0x180D), the wearemo sensor service
(``firmware_bridge/PROTOCOL.md``), Device Information (0x180A) and Battery (0x180F), supports
ATT MTU up to 517, and sizes every frame to the MTU the central negotiated.

Behaviour (as a firmware would):

* The device "boots" at :meth:`VirtualWearable.start`: its clock starts at the recording's
  start time (replay), at "now" (simulation), or at 0 ticks (``clock="ticks"``) and runs
  ``speed`` times faster than wall time. Samples appear when the device clock reaches them.
* Sensor samples wait in the device's buffer (``buffer_s`` of device time per channel; older
  unsent samples are dropped and counted in ``dropped_counts``) until the central has
  subscribed to ``data`` and written START; then frames go out as they fill: 0.25 s of PPG and
  ACC, 1 s of EDA and TEMP (:data:`FRAME_SECONDS`), fewer samples if the MTU is smaller. The
  last ``ring_frames`` sent frames per channel are kept for RESUME_FROM.
* One 0x2A37 notification per heart-rate sample, carrying the RR intervals of the beats that
  ended since the previous one (split over several notifications if the MTU is too small).
  Standard HRS semantics: nothing is buffered while the central is not subscribed.
* A disconnect clears the START state (the central starts channels again after reconnecting).
* Optionally (``pmd=True``) Polar's PMD service: PPG, ACC and PPI measured only between START
  and STOP (and stopped by a disconnect), delta-compressed frames, settings and features on the
  control point; ``sensor_service=False`` leaves out the wearemo service (a Polar-like device).
* Fault injection (:meth:`VirtualWearable.inject`, used by ``--chaos``): drop the link, go
  silent, reboot with a clock reset, corrupt a frame on the air (``docs/bridge.md``).

Example
-------
>>> import asyncio
>>> from bumble.link import LocalLink
>>> from firmware_bridge.virtual_wearable import SimulatedSource
>>> async def main():
...     vw = VirtualWearable(SimulatedSource(seed=0, duration_s=5), name="vw", speed=50)
...     await vw.attach(LocalLink())
...     await vw.start()
...     await vw.wait_finished()
...     await vw.stop()
...     return vw.sent_counts["ppg"]   # nobody connected: nothing sent
>>> asyncio.run(main())
0
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from collections import deque
from typing import Any, Literal

import numpy as np
from bumble import att
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device, DeviceConfiguration
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.profiles.battery_service import BatteryService
from bumble.profiles.device_information_service import DeviceInformationService
from bumble.transport.common import AsyncPipeSink

from firmware_bridge.gatt.errors import GattDecodeError
from firmware_bridge.gatt.heart_rate import (
    BodySensorLocation,
    HeartRateMeasurement,
    decode_hr_control_point,
    encode_body_sensor_location,
    encode_heart_rate_measurement,
    max_rr_per_measurement,
)
from firmware_bridge.gatt.polar_pmd import (
    PMD_CONTROL_POINT_UUID,
    PMD_DATA_UUID,
    PMD_SERVICE_UUID,
    POLAR_EPOCH_UNIX_NS,
    MeasurementType,
    PmdOpcode,
    PmdSetting,
    decode_pmd_settings,
    encode_pmd_frame,
    encode_pmd_settings,
)
from firmware_bridge.gatt.wearemo_sensor import (
    CHANNEL_CODES,
    CONTROL_CHAR_UUID,
    DATA_CHAR_UUID,
    INFO_CHAR_UUID,
    PROTOCOL_VERSION,
    SERVICE_UUID,
    ClockReading,
    CommandResult,
    DeviceInfo,
    Opcode,
    ReadClockCommand,
    ResultCode,
    ResumeFromCommand,
    SampleFormat,
    SensorFrame,
    StartCommand,
    StopCommand,
    decode_command,
    encode_frame,
    encode_info,
    encode_response,
    max_samples_per_frame,
)
from firmware_bridge.virtual_wearable.sources import SignalSource
from wearemo.samples import Channel

__all__ = ["FAULT_KINDS", "FIRMWARE_VERSION", "FRAME_SECONDS", "PMD_FACTORS", "VirtualWearable"]

logger = logging.getLogger(__name__)

#: Device time covered by one data frame, per channel (fewer samples if the MTU is small).
FRAME_SECONDS: dict[Channel, float] = {
    Channel.PPG: 0.25, Channel.EDA: 1.0, Channel.TEMP: 1.0, Channel.ACC: 0.25,
}
FIRMWARE_VERSION = "vw-0.1.0"
_HRS_UUID = UUID.from_16_bits(0x180D, "Heart Rate")
_HR_MEASUREMENT_UUID = UUID.from_16_bits(0x2A37, "Heart Rate Measurement")
_BODY_SENSOR_LOCATION_UUID = UUID.from_16_bits(0x2A38, "Body Sensor Location")
_HR_CONTROL_POINT_UUID = UUID.from_16_bits(0x2A39, "Heart Rate Control Point")
_HR_CONTROL_POINT_NOT_SUPPORTED = 0x80  # ATT application error defined by HRS
_MAX_IDLE_S = 0.05  # longest wall-clock sleep of the streaming loop
#: Fault kinds of :meth:`VirtualWearable.inject` (and of ``--chaos``).
FAULT_KINDS = ("drop", "silent", "reboot", "corrupt")
#: PMD conversion factors the virtual sensor announces (canonical = raw × factor; ACC raw is
#: in mG, so g = raw × factor / 1000).
PMD_FACTORS: dict[MeasurementType, float] = {MeasurementType.PPG: 2.0 ** -10,
                                             MeasurementType.ACC: 1.0}
_PMD_CHANNEL = {MeasurementType.PPG: Channel.PPG, MeasurementType.ACC: Channel.ACC}
# PMD control-point answer codes (Polar Measurement Data Specification)
_PMD_SUCCESS, _PMD_INVALID_OPCODE, _PMD_NOT_SUPPORTED, _PMD_INVALID_PARAMETER = 0, 1, 3, 5
_PMD_ALREADY_IN_STATE, _PMD_INVALID_SAMPLE_RATE = 6, 8


def _address_from_name(name: str) -> str:
    """A stable random static address (two top bits set) derived from the device name."""
    b = bytearray(hashlib.sha256(name.encode()).digest()[:6])
    b[0] |= 0xC0
    return ":".join(f"{x:02X}" for x in b)


class VirtualWearable:
    """A bumble BLE peripheral replaying a :class:`SignalSource`.

    Parameters
    ----------
    source
        :class:`RecordingSource` (replay) or :class:`SimulatedSource`.
    name
        Advertised local name.
    address
        Random static address ``"C0:..."``; default derived from ``name``.
    speed
        Device clock and playback rate relative to wall time (20 → 20 s of data per second).
    rtc_start_unix
        Device RTC at boot; default the recording's start (replay) or now (simulation).
    clock
        ``"rtc"``: frames carry unix µs; ``"ticks"``: µs since boot.
    buffer_s
        Device time of unsent samples kept per channel before the oldest are dropped.
    ring_frames
        Sent frames kept per channel for RESUME_FROM.
    advertising_interval_ms
        Advertising interval (bumble's default of 1 s makes connects slow).
    body_sensor_location
        Value of 0x2A38.
    sensor_service
        Expose the wearemo sensor service (False: a Polar-like device, HRS + PMD only).
    pmd
        Expose Polar's PMD service: PPG (4 channels: the source's PPG three times and an
        ambient 0; delta-compressed), ACC (mG, delta-compressed frame type 1) and PPI (from the
        source's beats), each streaming only between its START and STOP, as a Polar sensor.

    Attributes
    ----------
    sent_counts
        Samples notified per channel value: ``ppg, eda, temp, acc`` (acc triples count once),
        ``hr`` (0x2A37 notifications), ``rr`` (RR intervals); each sample once (a frame damaged
        on the air by :meth:`corrupt_next` counts, its re-send does not).
    resent_counts
        Samples notified again for RESUME_FROM, per channel.
    dropped_counts
        Samples dropped from the device buffer (central too slow or absent) or lost in a
        reboot (what was sampled but not yet sent), per channel.
    pmd_sent_counts
        PMD samples notified: ``ppg``, ``acc`` and ``ppi`` records (``ppi_no_contact``: of
        them, sent flagged without skin contact).
    faults
        Faults injected so far, per kind (:data:`FAULT_KINDS`).
    """

    def __init__(self, source: SignalSource, *, name: str, address: str | None = None,
                 speed: float = 1.0, rtc_start_unix: float | None = None,
                 clock: Literal["rtc", "ticks"] = "rtc", buffer_s: float = 120.0,
                 ring_frames: int = 512, advertising_interval_ms: float = 20.0,
                 body_sensor_location: BodySensorLocation = BodySensorLocation.WRIST,
                 sensor_service: bool = True, pmd: bool = False) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if clock not in ("rtc", "ticks"):
            raise ValueError(f"clock must be one of ['rtc', 'ticks'], got {clock!r}")
        if unknown := set(source.signals) - set(CHANNEL_CODES):
            raise ValueError(f"source has channels without a sensor frame: {sorted(unknown)}")
        self.source = source
        self.name = name
        self.address = address or _address_from_name(name)
        self.speed = float(speed)
        self.rtc = clock == "rtc"
        self.rtc_start_unix = rtc_start_unix
        self.buffer_s = buffer_s
        self.advertising_interval_ms = advertising_interval_ms
        self.body_sensor_location = BodySensorLocation(body_sensor_location)
        self.battery_percent = 100
        self.sent_counts: dict[str, int] = {k: 0 for k in ("ppg", "eda", "temp", "acc", "hr", "rr")}
        self.dropped_counts: dict[str, int] = {c.value: 0 for c in source.signals}
        self.resent_counts: dict[str, int] = {c.value: 0 for c in source.signals}
        self.sensor_service = sensor_service
        self.pmd = pmd
        if pmd and not (set(_PMD_CHANNEL.values()) & set(source.signals) or source.beats):
            raise ValueError("pmd=True needs a source with ppg, acc or beats")
        if pmd and any(source.signals[c].rate_hz != round(source.signals[c].rate_hz)
                       for c in _PMD_CHANNEL.values() if c in source.signals):
            raise ValueError("pmd=True needs whole-hertz ppg/acc rates (PMD settings are uint16)")
        self.pmd_sent_counts: dict[str, int] = {"ppg": 0, "acc": 0, "ppi": 0,
                                                "ppi_no_contact": 0}
        self.faults: dict[str, int] = {k: 0 for k in FAULT_KINDS}
        self.skin_contact = True
        self._pmd_started: set[MeasurementType] = set()
        self._pmd_cursor: dict[MeasurementType, int] = {}
        self._pmd_beat_next = 0
        self._silent_until_s = -1.0  # source time until which nothing is notified
        self._corrupt: list[tuple[Channel | None, Literal["flip", "truncate"]]] = []
        self.device: Device | None = None
        self._controller: Controller | None = None
        self._link: LocalLink | None = None
        self._transport: Any = None
        self._connection: Connection | None = None
        self._subscribed: set[int] = set()  # attribute handles with notifications enabled
        self._started: set[Channel] = set()
        self._cursor = {c: 0 for c in source.signals}
        self._seq = {c: 0 for c in source.signals}
        self._ring: dict[Channel, deque[tuple[int, bytes, int]]] = {
            c: deque(maxlen=ring_frames) for c in source.signals
        }
        self._hr_next = 0
        self._beat_next = 0
        self._t0_us: int | None = None
        self._boot_s = 0.0  # source time of the last (re)boot
        self._wall0 = 0.0
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._send_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def attach(self, link: LocalLink) -> None:
        """Create a virtual controller on ``link``, power on and advertise.

        Example
        -------
        See the module docstring.
        """
        self._controller = Controller(f"{self.name}-controller", link=link,
                                      public_address=self.address)
        self._link = link
        await self._power_on(Host(self._controller, AsyncPipeSink(self._controller)))

    async def attach_transport(self, spec: str) -> None:
        """Attach to an HCI transport instead, e.g. ``"tcp-client:127.0.0.1:9001"``.

        Example
        -------
        ``await vw.attach_transport("tcp-client:127.0.0.1:9001")`` with
        ``python -m bumble.apps.controllers tcp-server:127.0.0.1:9001 tcp-server:...:9002``.
        """
        from bumble.transport import open_transport

        self._transport = await open_transport(spec)
        await self._power_on(Host(self._transport.source, self._transport.sink))

    async def _power_on(self, host: Host) -> None:
        config = DeviceConfiguration(name=self.name, address=Address(self.address),
                                     advertising_interval_min=self.advertising_interval_ms,
                                     advertising_interval_max=self.advertising_interval_ms)
        device = Device(config=config, host=host)
        device.gatt_server.max_mtu = 517
        device.add_services(self._services())
        device.on(device.EVENT_CONNECTION, self._on_connection)
        device.gatt_server.on(device.gatt_server.EVENT_CHARACTERISTIC_SUBSCRIPTION,
                              self._on_subscription)
        self.device = device
        await device.power_on()
        adv = AdvertisingData([
            (AdvertisingData.FLAGS, bytes([0x06])),  # LE general discoverable, no BR/EDR
            (AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
             _HRS_UUID.to_bytes()),
            (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()[:20]),
        ])
        uuids = ([UUID(SERVICE_UUID)] if self.sensor_service else []) + (
            [UUID(PMD_SERVICE_UUID)] if self.pmd else [])
        scan_rsp = AdvertisingData([
            (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
             b"".join(u.to_bytes() for u in uuids)),
        ] if uuids else [])
        await device.start_advertising(
            auto_restart=True, advertising_data=bytes(adv), scan_response_data=bytes(scan_rsp),
            advertising_interval_min=self.advertising_interval_ms,
            advertising_interval_max=self.advertising_interval_ms,
        )

    async def start(self) -> None:
        """Boot the device clock and begin playback (streams only after the central's START)."""
        if self.device is None:
            raise RuntimeError("attach() the wearable before start()")
        if self._task is not None:
            raise RuntimeError("already started")
        if self.rtc:
            start = self.rtc_start_unix
            if start is None:
                start = self.source.start_unix
            if start is None:
                start = time.time()
            self._t0_us = round(start * 1e6)
        else:
            self._t0_us = 0
        self._wall0 = asyncio.get_running_loop().time()
        self.boots = [(0.0, time.time_ns())]
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-stream")

    async def wait_finished(self) -> None:
        """Wait until the whole source has played and every started channel is flushed."""
        await self._finished.wait()

    async def stop(self) -> None:
        """Stop playback, disconnect, stop advertising and leave the link."""
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = None
        if self.device is not None:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await self._connection.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.device.stop_advertising()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.device.power_off()
        if self._link is not None and self._controller is not None:
            with contextlib.suppress(KeyError):
                self._link.remove_controller(self._controller)
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    @property
    def is_connected(self) -> bool:
        """Whether a central is connected."""
        return self._connection is not None

    @property
    def started_channels(self) -> frozenset[Channel]:
        """Channels the connected central has STARTed."""
        return frozenset(self._started)

    async def notify_raw(self, target: Literal["data", "hr", "control"], payload: bytes) -> None:
        """Notify arbitrary bytes on a characteristic (fault injection; not in ``sent_counts``).

        Dropped like any notification when the central is not subscribed.

        Example
        -------
        ``await vw.notify_raw("data", b"\\x01\\x02")`` sends a truncated frame.
        """
        chars = {"data": self._data_char, "hr": self._hr_char, "control": self._control_char}
        if target not in chars:
            raise ValueError(f"target must be one of {sorted(chars)}, got {target!r}")
        if self._can_notify(chars[target]):
            await self._notify(chars[target], bytes(payload))

    async def drop_link(self) -> bool:
        """Drop the connection from the peripheral side, as when the wearer walks out of range
        (fault injection). Returns False when no central was connected.

        Example
        -------
        ``await vw.drop_link()``
        """
        connection = self._connection
        if connection is None:
            return False
        await connection.disconnect()
        return True

    # ---------------------------------------------------------------- faults
    async def inject(self, kind: str, *, silent_s: float = 2.0) -> bool:
        """Inject one fault of :data:`FAULT_KINDS` (what ``--chaos`` does at random moments).

        ``drop``: :meth:`drop_link`; ``silent``: :meth:`go_silent` for ``silent_s`` of device
        time; ``reboot``: :meth:`reboot`; ``corrupt``: :meth:`corrupt_next`. Returns False when
        the fault could not happen (``drop`` with no central connected).

        Example
        -------
        ``await vw.inject("silent", silent_s=5)``
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {list(FAULT_KINDS)}, got {kind!r}")
        if kind == "drop":
            done = await self.drop_link()
        elif kind == "silent":
            self.go_silent(silent_s)
            done = True
        elif kind == "reboot":
            await self.reboot()
            done = True
        else:
            self.corrupt_next()
            done = True
        self.faults[kind] += int(done)
        return done

    def go_silent(self, seconds: float) -> None:
        """Keep the link up but notify nothing for ``seconds`` of device time (a stalled
        firmware). Sensor-service samples wait in the device buffer and go out afterwards;
        heart-rate and PMD samples of the silent period are never sent (nothing buffers them).

        Example
        -------
        ``vw.go_silent(3.0)``
        """
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        self._silent_until_s = max(self._silent_until_s, self._elapsed_s() + seconds)

    def corrupt_next(self, channel: Channel | None = None,
                     how: Literal["flip", "truncate"] = "flip") -> None:
        """Damage the next sensor frame (of ``channel``, or of any channel) on the air: one
        byte flipped (the CRC fails) or the last 5 bytes cut. The ring buffer keeps the intact
        frame, so ``RESUME_FROM`` re-sends it.

        Example
        -------
        ``vw.corrupt_next(Channel.EDA, "truncate")``
        """
        if how not in ("flip", "truncate"):
            raise ValueError(f"how must be one of ['flip', 'truncate'], got {how!r}")
        self._corrupt.append((None if channel is None else Channel(channel), how))

    async def reboot(self) -> None:
        """Reboot: the link drops and RAM is lost — unsent samples (counted in
        ``dropped_counts``), the resume ring, sequence numbers (restart at 0) and every STARTed
        stream; the clock restarts at 0 ticks (an RTC comes back unset). Sampling goes on, and
        the new samples wait in the buffer for the next START.

        Example
        -------
        ``await vw.reboot()``
        """
        async with self._send_lock:
            now_s = self._elapsed_s()
            for channel in self.source.signals:
                available = self._available(channel, now_s)
                self.dropped_counts[channel.value] += available - self._cursor[channel]
                self._cursor[channel] = available
                self._seq[channel] = 0
                self._ring[channel].clear()
            if self.source.hr is not None:
                hr = self.source.hr
                while self._hr_next < hr.n_samples and hr.sample_time_s(self._hr_next) <= now_s:
                    self._hr_next += 1
            self._started.clear()
            self._pmd_started.clear()
            self._corrupt.clear()
            self._silent_until_s = -1.0
            self.rtc = False
            self._t0_us = -round(now_s * 1e6)  # ticks count from this moment
            self._boot_s = now_s
            self.boots.append((now_s, time.time_ns()))
            connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()
        self._wake.set()

    def _silent(self, now_s: float) -> bool:
        return now_s < self._silent_until_s

    # ------------------------------------------------------------------- clock
    def device_time_us(self) -> int:
        """Current device time, µs (RTC unix time or ticks since boot)."""
        if self._t0_us is None:
            return 0 if not self.rtc else round(time.time() * 1e6)
        elapsed = asyncio.get_running_loop().time() - self._wall0
        return self._t0_us + int(elapsed * self.speed * 1e6)

    def _elapsed_s(self) -> float:
        """Source seconds played so far."""
        return (asyncio.get_running_loop().time() - self._wall0) * self.speed

    # ---------------------------------------------------------------- services
    def _services(self) -> list[Service]:
        self._hr_char: Characteristic[bytes] = Characteristic(
            _HR_MEASUREMENT_UUID, Characteristic.Properties.NOTIFY, Characteristic.READABLE,
            b"")
        hrs = Service(_HRS_UUID, [
            self._hr_char,
            Characteristic(_BODY_SENSOR_LOCATION_UUID, Characteristic.Properties.READ,
                           Characteristic.READABLE,
                           encode_body_sensor_location(self.body_sensor_location)),
            Characteristic(_HR_CONTROL_POINT_UUID, Characteristic.Properties.WRITE,
                           Characteristic.WRITEABLE,
                           CharacteristicValue(write=self._on_hr_control_write)),
        ])
        self._data_char: Characteristic[bytes] = Characteristic(
            DATA_CHAR_UUID, Characteristic.Properties.NOTIFY, Characteristic.READABLE, b"")
        self._control_char: Characteristic[bytes] = Characteristic(
            CONTROL_CHAR_UUID,
            Characteristic.Properties.WRITE | Characteristic.Properties.NOTIFY,
            Characteristic.WRITEABLE | Characteristic.READABLE,
            CharacteristicValue[bytes](read=lambda _c: b"", write=self._on_control_write))
        info: Characteristic[bytes] = Characteristic(
            INFO_CHAR_UUID, Characteristic.Properties.READ, Characteristic.READABLE,
            CharacteristicValue[bytes](read=lambda _c: encode_info(DeviceInfo(
                PROTOCOL_VERSION, frozenset(self.source.signals), self.battery_percent,
                FIRMWARE_VERSION))))
        sensor = Service(SERVICE_UUID, [self._data_char, self._control_char, info])
        dis = DeviceInformationService(manufacturer_name="wearemo",
                                       model_number="virtual-wearable",
                                       firmware_revision=FIRMWARE_VERSION)
        battery = BatteryService(read_battery_level=lambda _c: self.battery_percent)
        self._pmd_data_char: Characteristic[bytes] = Characteristic(
            PMD_DATA_UUID, Characteristic.Properties.NOTIFY, Characteristic.READABLE, b"")
        self._pmd_control_char: Characteristic[bytes] = Characteristic(
            PMD_CONTROL_POINT_UUID,
            Characteristic.Properties.READ | Characteristic.Properties.WRITE
            | Characteristic.Properties.INDICATE,
            Characteristic.READABLE | Characteristic.WRITEABLE,
            CharacteristicValue[bytes](read=lambda _c: self._pmd_features(),
                                       write=self._on_pmd_control_write))
        pmd = Service(PMD_SERVICE_UUID, [self._pmd_control_char, self._pmd_data_char])
        return [hrs, *([sensor] if self.sensor_service else []), *([pmd] if self.pmd else []),
                dis, battery]

    def _on_connection(self, connection: Connection) -> None:
        self._connection = connection
        self._subscribed.clear()
        connection.on(connection.EVENT_DISCONNECTION, lambda *_: self._on_disconnection())
        connection.on(connection.EVENT_CONNECTION_ATT_MTU_UPDATE, self._wake.set)

    def _on_disconnection(self) -> None:
        self._connection = None
        self._subscribed.clear()
        self._started.clear()
        self._pmd_started.clear()  # a Polar sensor stops measuring when the link drops
        self._wake.set()

    def _on_subscription(self, _bearer: Any, characteristic: Characteristic,
                         notify_enabled: bool, indicate_enabled: bool) -> None:
        if notify_enabled or indicate_enabled:
            self._subscribed.add(characteristic.handle)
        else:
            self._subscribed.discard(characteristic.handle)
        self._wake.set()

    def _on_hr_control_write(self, _connection: Connection, value: bytes) -> None:
        try:
            decode_hr_control_point(value)  # only RESET_ENERGY_EXPENDED; we send no energy
        except GattDecodeError:
            raise att.ATT_Error(_HR_CONTROL_POINT_NOT_SUPPORTED) from None

    def _on_control_write(self, connection: Connection, value: bytes) -> None:
        # Answer after the write response: the command's work and notifications run in a task.
        task = asyncio.get_running_loop().create_task(self._handle_command(connection, value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_command(self, connection: Connection, value: bytes) -> None:
        op = value[0] if value else 0
        try:
            cmd = decode_command(value)
        except GattDecodeError as e:
            known = op in (Opcode.START, Opcode.STOP, Opcode.READ_CLOCK, Opcode.RESUME_FROM)
            logger.info("%s: rejected control write %s: %s", self.name, value.hex(), e)
            code = ResultCode.INVALID_PARAMETER if known else ResultCode.UNSUPPORTED_OPCODE
            await self._respond(connection, CommandResult(op, code))
            return
        if isinstance(cmd, ReadClockCommand):
            await self._respond(connection, ClockReading(self.device_time_us(), self.rtc))
            return
        result = ResultCode.SUCCESS
        if isinstance(cmd, StartCommand | StopCommand):
            channels = cmd.channels & set(self.source.signals)
            if not channels:
                result = ResultCode.INVALID_PARAMETER
            elif isinstance(cmd, StartCommand):
                self._started |= channels
            else:
                self._started -= channels
        elif isinstance(cmd, ResumeFromCommand):
            result = await self._resend(cmd.channel, cmd.seq)
        await self._respond(connection, CommandResult(op, result))
        self._wake.set()

    # ------------------------------------------------------------------ PMD
    def _pmd_types(self) -> list[MeasurementType]:
        if not self.pmd:
            return []
        kinds = [m for m, c in _PMD_CHANNEL.items() if c in self.source.signals]
        return kinds + ([MeasurementType.PPI] if self.source.beats is not None else [])

    def _pmd_features(self) -> bytes:
        """Control-point read: 0x0F, then a bit per supported measurement type."""
        bits = sum(1 << int(m) for m in self._pmd_types())
        return bytes([0x0F, bits & 0xFF, bits >> 8])

    def _pmd_settings(self, m: MeasurementType) -> dict[PmdSetting, list[float]]:
        if m is MeasurementType.PPI:
            return {}
        rate = round(self.source.signals[_PMD_CHANNEL[m]].rate_hz)
        if m is MeasurementType.PPG:
            return {PmdSetting.SAMPLE_RATE: [rate], PmdSetting.RESOLUTION: [22],
                    PmdSetting.CHANNELS: [4]}
        return {PmdSetting.SAMPLE_RATE: [rate], PmdSetting.RESOLUTION: [16],
                PmdSetting.RANGE: [8], PmdSetting.CHANNELS: [3]}

    def _on_pmd_control_write(self, connection: Connection, value: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._handle_pmd(connection, bytes(value)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_pmd(self, connection: Connection, value: bytes) -> None:
        op = value[0] if value else 0
        kind = value[1] if len(value) > 1 else 0
        status, params = _PMD_SUCCESS, b""
        supported = {int(m): m for m in self._pmd_types()}
        m = supported.get(kind)
        if op not in (PmdOpcode.GET_MEASUREMENT_SETTINGS, PmdOpcode.REQUEST_MEASUREMENT_START,
                      PmdOpcode.STOP_MEASUREMENT):
            status = _PMD_INVALID_OPCODE
        elif m is None:
            status = _PMD_NOT_SUPPORTED
        elif op == PmdOpcode.GET_MEASUREMENT_SETTINGS:
            params = encode_pmd_settings(self._pmd_settings(m))
        elif op == PmdOpcode.STOP_MEASUREMENT:
            self._pmd_started.discard(m)
        elif m in self._pmd_started:
            status = _PMD_ALREADY_IN_STATE
        else:
            try:
                asked = decode_pmd_settings(value[2:])
            except GattDecodeError:
                asked = None
            offered = self._pmd_settings(m)
            if asked is None:
                status = _PMD_INVALID_PARAMETER
            elif any(v not in offered.get(k, [v]) for k, vs in asked.items() for v in vs):
                status = _PMD_INVALID_SAMPLE_RATE
            else:
                self._pmd_start(m)
                if m in PMD_FACTORS:
                    params = encode_pmd_settings({PmdSetting.FACTOR: [PMD_FACTORS[m]]})
        answer = bytes([0xF0, op, kind, status, 0]) + params
        if self.device is not None and self._pmd_control_char.handle in self._subscribed:
            with contextlib.suppress(Exception):
                await self.device.indicate_subscriber(connection, self._pmd_control_char,
                                                      answer)
        self._wake.set()

    def _pmd_start(self, m: MeasurementType) -> None:
        """A Polar sensor measures from START on: nothing sampled before it is sent."""
        now_s = self._elapsed_s()
        if m is MeasurementType.PPI:
            beats = self.source.beats
            assert beats is not None
            self._pmd_beat_next = int(np.searchsorted(beats.end_s, now_s, side="right"))
        else:
            self._pmd_cursor[m] = self._available(_PMD_CHANNEL[m], now_s)
        self._pmd_started.add(m)

    def _pmd_time_ns(self, t_s: float) -> int:
        """PMD sensor time of source time ``t_s``: ns since 2000 (RTC) or since boot (ticks)."""
        assert self._t0_us is not None
        ns = self._t0_us * 1000 + round(t_s * 1e9)
        return ns - POLAR_EPOCH_UNIX_NS if self.rtc else ns

    async def _pump_pmd(self, now_s: float) -> None:
        silent = self._silent(now_s)
        for m in list(self._pmd_started):
            if m is MeasurementType.PPI:
                await self._pump_ppi(now_s, silent)
                continue
            channel = _PMD_CHANNEL[m]
            sig = self.source.signals[channel]
            available = self._available(channel, now_s)
            per = max(1, round(FRAME_SECONDS[channel] * sig.rate_hz))
            ended = available == sig.n_samples
            while m in self._pmd_started and self._can_notify(self._pmd_data_char):
                i0 = self._pmd_cursor[m]
                backlog = available - i0
                if backlog <= 0 or (backlog < per and not ended):
                    break
                n = min(per, backlog)
                values = np.asarray(sig.values[i0:i0 + n], dtype=np.float64)
                if m is MeasurementType.PPG:
                    raw = np.rint(values / PMD_FACTORS[m]).astype(np.int64)
                    raw = np.stack([raw, raw, raw, np.zeros_like(raw)], axis=1)
                else:
                    raw = np.rint(values * 1000 / PMD_FACTORS[m]).astype(np.int64)
                payload = encode_pmd_frame(m, self._pmd_time_ns(sig.sample_time_s(i0 + n - 1)),
                                           raw, frame_type=1 if m is MeasurementType.ACC else 0,
                                           compressed=True)
                self._pmd_cursor[m] = i0 + n
                if not silent:
                    await self._notify(self._pmd_data_char, payload)
                    self.pmd_sent_counts[channel.value] += n

    async def _pump_ppi(self, now_s: float, silent: bool) -> None:
        beats = self.source.beats
        assert beats is not None
        stop = int(np.searchsorted(beats.end_s, now_s, side="right"))
        start = self._pmd_beat_next
        if stop <= start or not self._can_notify(self._pmd_data_char):
            return
        stop = min(stop, start + 30)  # 30 records: 190 bytes, inside an MTU of 247
        self._pmd_beat_next = stop
        if silent:
            return
        flags = 0b110 if self.skin_contact else 0b100  # contact supported (+ detected)
        records = b"".join(
            struct.pack("<BHHB", min(255, round(60_000 / ibi)), round(ibi), 10, flags)
            for ibi in beats.ibi_ms[start:stop])
        head = bytes([MeasurementType.PPI]) + struct.pack(
            "<Q", self._pmd_time_ns(float(beats.end_s[stop - 1]))) + b"\x00"
        await self._notify(self._pmd_data_char, head + records)
        self.pmd_sent_counts["ppi"] += stop - start
        if not self.skin_contact:
            self.pmd_sent_counts["ppi_no_contact"] += stop - start

    async def _respond(self, connection: Connection,
                       response: ClockReading | CommandResult) -> None:
        if self.device is not None and self._control_char.handle in self._subscribed:
            await self.device.notify_subscriber(connection, self._control_char,
                                                encode_response(response))

    async def _resend(self, channel: Channel, seq: int) -> ResultCode:
        ring = self._ring.get(channel)
        if ring is None:
            return ResultCode.INVALID_PARAMETER
        partial = (bool(ring) and ring[0][0] > seq) or (not ring and self._seq[channel] > seq)
        async with self._send_lock:
            for frame_seq, payload, n in list(ring):
                if frame_seq >= seq and self._can_notify(self._data_char) and \
                        len(payload) <= self._mtu() - 3:
                    await self._notify(self._data_char, payload)
                    self.resent_counts[channel.value] += n
        return ResultCode.PARTIAL if partial else ResultCode.SUCCESS

    # ------------------------------------------------------------------ streaming
    def _mtu(self) -> int:
        return self._connection.att_mtu if self._connection is not None else att.ATT_DEFAULT_MTU

    def _can_notify(self, characteristic: Characteristic) -> bool:
        return self._connection is not None and characteristic.handle in self._subscribed

    async def _notify(self, characteristic: Characteristic, payload: bytes) -> None:
        assert self.device is not None and self._connection is not None
        await self.device.notify_subscriber(self._connection, characteristic, payload)

    async def _run(self) -> None:
        try:
            while True:
                now_s = self._elapsed_s()
                async with self._send_lock:
                    await self._pump_heart_rate(now_s)
                    for channel in self.source.signals:
                        await self._pump_channel(channel, now_s)
                    if self._pmd_started:
                        await self._pump_pmd(now_s)
                if self._is_finished(now_s):
                    self._finished.set()
                self._wake.clear()
                delay = (self._next_event_s(now_s) - self._elapsed_s()) / self.speed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(_MAX_IDLE_S, max(0.0005, delay))):
                        await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s: streaming loop failed", self.name)
            raise

    def _available(self, channel: Channel, now_s: float) -> int:
        sig = self.source.signals[channel]
        n = int(np.floor((now_s - sig.start_offset_s) * sig.rate_hz)) + 1
        return max(0, min(sig.n_samples, n))

    def _frame_samples(self, channel: Channel) -> int:
        nominal = max(1, round(FRAME_SECONDS[channel] * self.source.signals[channel].rate_hz))
        return min(nominal, max_samples_per_frame(channel, self._mtu()))

    async def _pump_channel(self, channel: Channel, now_s: float) -> None:
        sig = self.source.signals[channel]
        available = self._available(channel, now_s)
        cap = max(1, round(self.buffer_s * sig.rate_hz))
        if available - self._cursor[channel] > cap:
            drop = available - self._cursor[channel] - cap
            self._cursor[channel] += drop
            self.dropped_counts[channel.value] += drop
        if (channel not in self._started or not self._can_notify(self._data_char)
                or self._silent(now_s)):
            return
        per = self._frame_samples(channel)
        if per == 0:
            return  # MTU too small for any frame: keep buffering (PROTOCOL.md §2)
        ended = available == sig.n_samples
        while self._can_notify(self._data_char) and channel in self._started:
            i0 = self._cursor[channel]
            backlog = available - i0
            if backlog <= 0 or (backlog < per and not ended):
                break
            n = min(per, backlog)
            frame = SensorFrame(
                channel, self._seq[channel] & 0xFFFF_FFFF,
                self._device_time_of(sig.sample_time_s(i0)), self.rtc, sig.rate_hz,
                sig.values[i0:i0 + n])
            try:
                payload = encode_frame(frame)
            except ValueError:  # out of the default format's range: send float32 instead
                payload = encode_frame(frame, sample_format=SampleFormat.FLOAT32, scale=1.0)
            await self._notify(self._data_char, self._damaged(channel, payload))
            self._ring[channel].append((frame.seq, payload, n))
            self._seq[channel] += 1
            self._cursor[channel] = i0 + n
            self.sent_counts[channel.value] += n

    def _damaged(self, channel: Channel, payload: bytes) -> bytes:
        """The payload as it goes on the air: damaged if a corruption is pending for it."""
        for k, (target, how) in enumerate(self._corrupt):
            if target is None or target is channel:
                del self._corrupt[k]
                if how == "truncate":
                    return payload[:-5]
                mid = len(payload) // 2
                return payload[:mid] + bytes([payload[mid] ^ 0xFF]) + payload[mid + 1:]
        return payload

    def _device_time_of(self, t_s: float) -> int:
        assert self._t0_us is not None
        return self._t0_us + round(t_s * 1e6)

    async def _pump_heart_rate(self, now_s: float) -> None:
        hr, beats = self.source.hr, self.source.beats
        if hr is None:
            return
        while self._hr_next < hr.n_samples and hr.sample_time_s(self._hr_next) <= now_s:
            t = hr.sample_time_s(self._hr_next)
            last = self._hr_next == hr.n_samples - 1
            rr: list[int] = []
            if beats is not None:
                stop = len(beats) if last else int(np.searchsorted(beats.end_s, t, side="right"))
                rr = [round(float(ms) * 1.024) for ms in beats.ibi_ms[self._beat_next:stop]]
                self._beat_next = max(self._beat_next, stop)
            bpm = int(np.clip(np.rint(hr.values[self._hr_next]), 0, 0xFFFF))
            self._hr_next += 1
            if not self._can_notify(self._hr_char) or self._silent(now_s):
                continue  # standard HRS: nothing is buffered for an absent subscriber
            per = max(1, max_rr_per_measurement(self._mtu(), hr_uint16=bpm > 0xFF))
            chunks = [rr[i:i + per] for i in range(0, len(rr), per)] or [[]]
            for chunk in chunks:
                m = HeartRateMeasurement(bpm, "detected", None,
                                         tuple(min(r, 0xFFFF) for r in chunk))
                await self._notify(self._hr_char, encode_heart_rate_measurement(m))
                self.sent_counts["hr"] += 1
                self.sent_counts["rr"] += len(chunk)

    def _is_finished(self, now_s: float) -> bool:
        if now_s < self.source.duration_s:
            return False
        if self.source.hr is not None and self._hr_next < self.source.hr.n_samples:
            return False
        if MeasurementType.PPI in self._pmd_started and self.source.beats is not None and \
                self._pmd_beat_next < len(self.source.beats):
            return False
        return all(self._cursor[c] >= self.source.signals[c].n_samples
                   for c in self._started) and all(
            self._pmd_cursor[m] >= self.source.signals[_PMD_CHANNEL[m]].n_samples
            for m in self._pmd_started if m in _PMD_CHANNEL)

    def _next_event_s(self, now_s: float) -> float:
        times = []
        hr = self.source.hr
        if hr is not None and self._hr_next < hr.n_samples:
            times.append(hr.sample_time_s(self._hr_next))
        for m in self._pmd_started & set(_PMD_CHANNEL):
            sig = self.source.signals[_PMD_CHANNEL[m]]
            per = max(1, round(FRAME_SECONDS[_PMD_CHANNEL[m]] * sig.rate_hz))
            times.append(sig.sample_time_s(min(self._pmd_cursor[m] + per - 1, sig.n_samples - 1)))
        for channel, sig in self.source.signals.items():
            if channel in self._started:
                per = max(1, self._frame_samples(channel))
                i = min(self._cursor[channel] + per - 1, sig.n_samples - 1)
                times.append(sig.sample_time_s(i))
        return max(min(times, default=now_s + _MAX_IDLE_S * self.speed), now_s)
