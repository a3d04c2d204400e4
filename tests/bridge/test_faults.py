"""Fault injection on the virtual wearable (bumble), the real DeviceLink over bleak, the spool,
the uplink and a real HTTP ingest API on loopback: silence, reboot with a clock reset, corrupt
frames, and bad input of every kind the bridge counts.

Ground truth is the wearable's source: afterwards every sample the device still had is stored
exactly once, at its source time (within 5 ms), and the Heart Rate Service's gaps are reported,
never filled in.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from bridge_ingest_server import IngestServer
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Device, DeviceConfiguration
from bumble.gatt import Characteristic, Service
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink
from rich.console import Console

from firmware_bridge.bumble_backend import (
    BleakClientBumble,
    BleakScannerBumble,
    BumbleTransport,
    bumble_central_close,
)
from firmware_bridge.device_link import DeviceLink, DeviceLinkConfig
from firmware_bridge.gatt.wearemo_sensor import (
    DATA_CHAR_UUID,
    SERVICE_UUID,
    SensorFrame,
    encode_frame,
)
from firmware_bridge.spool import Spool
from firmware_bridge.status import StatusSnapshot, status_table
from firmware_bridge.uplink import Uplink
from firmware_bridge.virtual_wearable import SimulatedSource, VirtualWearable
from wearemo.samples import Channel, SampleBatch

pytestmark = [pytest.mark.ble, pytest.mark.timeout(90)]

START_UNIX = 1_700_000_000.0
SENSOR = (Channel.PPG, Channel.EDA, Channel.TEMP, Channel.ACC)


@functools.cache
def _source(duration_s: int) -> SimulatedSource:
    """Seeded simulations are slow to make (NeuroKit2): one per length for the whole module."""
    return SimulatedSource(seed=21, duration_s=duration_s)


@dataclass
class Rig:
    radio: LocalLink
    transport: BumbleTransport
    server: IngestServer
    spool: Spool
    tmp: Path

    def link(self, name: str, **kw: object) -> DeviceLink:
        options: dict[str, object] = {"scan_timeout_s": 5, "connect_timeout_s": 5,
                                      "reconnect_initial_s": 0.05, "clock_interval_s": 0.5,
                                      **kw}
        config = DeviceLinkConfig(
            subject_id="fault-01", device_id="vw-fault", name=name, backend=BleakClientBumble,
            scanner_backend=BleakScannerBumble, backend_kwargs={"bumble": self.transport},
            **options)  # type: ignore[arg-type]
        return DeviceLink(config, self.spool)

    async def run(self, link: DeviceLink, wearable: VirtualWearable, during: object) -> None:
        """Stream until the wearable has played its source, upload everything, stop."""
        uplink = Uplink(self.spool, api_url=self.server.url)
        link.on_spooled = uplink.notify
        stop = asyncio.Event()
        tasks = [asyncio.create_task(link.run(stop)), asyncio.create_task(uplink.run(stop))]
        try:
            await asyncio.wait_for(link.connected.wait(), 10)
            await during  # type: ignore[misc]
            await asyncio.wait_for(wearable.wait_finished(), 60)
            assert await link.wait_quiet(quiet_s=0.3, timeout_s=10)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await wearable.stop()
        assert await uplink.drain(timeout_s=30) and self.spool.dead_depth == 0

    def stored(self) -> list[SampleBatch]:
        assert all(n == 1 for n in self.server.sample_multiplicity().values())  # never twice
        return list(self.server.stored.values())


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    radio = LocalLink()
    transport = BumbleTransport(link=radio)
    server = IngestServer()
    server.start()
    try:
        with Spool(tmp_path / "spool.db") as spool:
            yield Rig(radio, transport, server, spool, tmp_path)
    finally:
        await bumble_central_close(transport)
        server.stop()


def _series(batches: list[SampleBatch], channel: Channel) -> tuple[np.ndarray, np.ndarray]:
    mine = [b for b in batches if b.channel is channel]
    times = np.concatenate([b.times_ns() for b in mine])
    values = np.concatenate([b.values_array() for b in mine])
    order = np.argsort(times, kind="stable")
    return times[order], values[order]


def _check_exact(batches: list[SampleBatch], source: SimulatedSource) -> None:
    """Every sensor sample once, at its source time within 5 ms, with its value."""
    t0 = round(START_UNIX * 1e9)
    for channel in SENSOR:
        sig = source.signals[channel]
        times, values = _series(batches, channel)
        assert len(times) == sig.n_samples, channel
        truth = t0 + np.round((sig.start_offset_s + np.arange(sig.n_samples) / sig.rate_hz)
                              * 1e9)
        assert np.max(np.abs(times - truth)) <= 5_000_000, channel
        span = float(np.ptp(sig.values)) or 1.0
        np.testing.assert_allclose(values, sig.values, rtol=0, atol=1e-3 * span)


def _check_hr_clean(batches: list[SampleBatch]) -> None:
    times, _ = _series(batches, Channel.HR)
    assert len(times) > 0 and np.all(np.diff(times) > 0)


def _check_hr_not_invented(batches: list[SampleBatch], source: SimulatedSource,
                           sent: int) -> None:
    hr = source.hr
    assert hr is not None
    times, values = _series(batches, Channel.HR)
    assert len(times) == sent and np.all(np.diff(times) > 0)
    truth = START_UNIX + hr.start_offset_s + np.arange(hr.n_samples) / hr.rate_hz
    nearest = np.abs(times[:, None] / 1e9 - truth[None, :]).min(axis=1)
    assert np.max(nearest) < 1.0  # each one a sample the source had
    assert set(values.tolist()) <= set(np.clip(np.rint(hr.values), 0, None).tolist())


async def test_silence_loses_no_sensor_sample_and_reports_the_hr_gap(rig: Rig) -> None:
    source = _source(16)
    # speed 2: the bridge sees device time through arrival times, so a silence is told from
    # a loaded machine's delays only when it lasts longer than hr_gap_s (2.5 s) of wall time
    wearable = VirtualWearable(source, name="vw-silent", speed=2, rtc_start_unix=START_UNIX)
    await wearable.attach(rig.radio)
    await wearable.start()
    link = rig.link(wearable.name)

    async def silence() -> None:
        await asyncio.sleep(1.0)
        assert await wearable.inject("silent", silent_s=6.0)  # link up, nothing notified

    await rig.run(link, wearable, silence())
    batches = rig.stored()
    _check_exact(batches, source)  # the sensor frames waited in the device buffer
    hr = link.assembler.stats.of(Channel.HR)
    assert hr.gaps == 1 and 4.0 <= hr.gap_s <= 8.0  # the silence, reported
    _check_hr_not_invented(batches, source, wearable.sent_counts["hr"])
    assert link.stats.link_losses == 0 and link.stats.bad_input == {}


async def test_corrupt_frames_are_rejected_counted_and_resent(rig: Rig) -> None:
    source = _source(16)
    wearable = VirtualWearable(source, name="vw-corrupt", speed=10, rtc_start_unix=START_UNIX)
    await wearable.attach(rig.radio)
    await wearable.start()
    link = rig.link(wearable.name)

    async def corrupt() -> None:
        await asyncio.sleep(0.4)
        wearable.corrupt_next(Channel.EDA, "flip")
        await asyncio.sleep(0.4)
        wearable.corrupt_next(Channel.PPG, "truncate")

    await rig.run(link, wearable, corrupt())
    assert link.stats.decode_errors == 2
    assert link.stats.bad_input == {"corrupt_frame": 1, "truncated_frame": 1}
    assert link.stats.repairs >= 1 and link.stats.link_losses == 0
    assert all(link.assembler.stats.of(c).gaps == 0 for c in SENSOR)  # re-sent, no gap
    _check_exact(rig.stored(), source)


async def test_reboot_re_anchors_the_clock_and_keeps_what_the_device_had(rig: Rig) -> None:
    """Ticks clock at speed 1: the truth of a sample is the host time the device took it."""
    source = _source(8)
    wearable = VirtualWearable(source, name="vw-reboot", speed=1, clock="ticks")
    await wearable.attach(rig.radio)
    await wearable.start()
    link = rig.link(wearable.name)

    async def reboot() -> None:
        await asyncio.sleep(3.0)
        await wearable.inject("reboot")
        for _ in range(300):  # back before the replay ends (a loaded machine may be slow)
            if link.stats.connects == 2 and link.connected.is_set():
                break
            await asyncio.sleep(0.05)

    await rig.run(link, wearable, reboot())
    assert len(wearable.boots) == 2 and link.stats.clock_resets == 1
    assert link.stats.bad_input.get("clock_backwards") == 1
    assert link.stats.bad_input.get("seq_backwards") == len(SENSOR)  # one new run each
    (_, boot0_ns), (reboot_s, boot1_ns) = wearable.boots
    batches = rig.stored()
    for channel in SENSOR:
        sig = source.signals[channel]
        times, values = _series(batches, channel)
        assert np.all(np.diff(times) > 0), channel  # never backwards
        # what the device still had: everything but the samples its reboot lost
        assert len(times) == sig.n_samples - wearable.dropped_counts[channel.value], channel
        # the device resumed sampling right after the reboot: the samples it lost are the
        # last ones before it; everything else was stored, once
        after = min(sig.n_samples, int(np.floor((reboot_s - sig.start_offset_s) * sig.rate_hz))
                    + 1)
        kept = after - wearable.dropped_counts[channel.value]
        index = np.r_[np.arange(kept), np.arange(after, sig.n_samples)]
        truth_s = sig.start_offset_s + index / sig.rate_hz
        truth_ns = np.where(index < kept, boot0_ns + truth_s * 1e9,
                            boot1_ns + (truth_s - reboot_s) * 1e9)
        assert np.max(np.abs(times - truth_ns)) <= 5e6, channel  # within 5 ms
        span = float(np.ptp(sig.values)) or 1.0
        np.testing.assert_allclose(values, sig.values[index], rtol=0, atol=1e-3 * span)
    _check_hr_clean(batches)


def _frame(seq: int, t_us: int) -> bytes:
    return encode_frame(SensorFrame(Channel.ACC, seq, t_us, True, 32.0, np.zeros((8, 3))))


async def test_bad_frames_are_counted_never_stored(rig: Rig) -> None:
    source = _source(8)
    wearable = VirtualWearable(source, name="vw-bad", speed=10, rtc_start_unix=START_UNIX)
    await wearable.attach(rig.radio)
    await wearable.start()
    # ACC is not started: the frames below are the only ACC frames the bridge sees
    link = rig.link(wearable.name, channels=frozenset({Channel.PPG, Channel.EDA}))
    t = int(START_UNIX * 1e6)

    async def inject() -> None:
        await wearable.notify_raw("data", _frame(0, t))
        await wearable.notify_raw("data", _frame(1, t + 250_000))
        await wearable.notify_raw("data", _frame(2, t - 60_000_000))  # clock back 1 min
        await wearable.notify_raw("data", _frame(0, t + 1_000))  # seq back, overlapping
        await wearable.notify_raw("data", _frame(2, t + 500_000) + b"\x00\x00")  # oversize
        await wearable.notify_raw("data", _frame(2, t + 500_000)[:-3])  # truncated
        await wearable.notify_raw("data", _frame(2, t + 500_000))
        await wearable.notify_raw("data", _frame(3, t + 20_000_000))  # jumps 19 s ahead

    await rig.run(link, wearable, inject())
    assert link.stats.bad_input == {"clock_jump": 2, "seq_backwards": 1, "oversize_frame": 1,
                                    "truncated_frame": 1}
    snapshot = StatusSnapshot.take([link], rig.spool, None)
    assert snapshot.devices[0].bad_input == 5  # the --live table's "bad input" column
    console = Console(width=250, record=True)
    console.print(status_table(snapshot, None))
    row = next(line for line in console.export_text().splitlines() if "vw-fault" in line)
    cells = [c.strip() for c in row.strip().strip("│").split("│")]
    assert cells[-3:] == ["5", str(link.stats.repairs), "0"]
    acc, _ = _series(rig.stored(), Channel.ACC)
    expected = [t + k * 31_250 for k in range(24)] + [t + 20_000_000 + k * 31_250
                                                     for k in range(8)]
    assert (acc // 1000).tolist() == expected  # only the good frames, at their own times


async def _peripheral(radio: LocalLink, name: str, services: list[Service]) -> Device:
    address = "D0:00:00:00:00:" + f"{len(name):02X}"
    controller = Controller(f"{name}-controller", link=radio, public_address=address)
    device = Device(config=DeviceConfiguration(name=name, address=Address(address)),
                    host=Host(controller, AsyncPipeSink(controller)))
    device.add_services(services)
    await device.power_on()
    adv = AdvertisingData([(AdvertisingData.FLAGS, bytes([0x06])),
                           (AdvertisingData.COMPLETE_LOCAL_NAME, name.encode())])
    await device.start_advertising(auto_restart=True, advertising_data=bytes(adv),
                                   advertising_interval_min=20, advertising_interval_max=20)
    return device


async def test_unknown_device_and_missing_characteristic_are_counted(rig: Rig) -> None:
    stranger = await _peripheral(rig.radio, "stranger", [])
    half = await _peripheral(rig.radio, "half-sensor", [
        Service(SERVICE_UUID, [Characteristic(DATA_CHAR_UUID, Characteristic.Properties.NOTIFY,
                                              Characteristic.READABLE, b"")])])
    for device, reason in ((stranger, "unknown_device"), (half, "missing_characteristic")):
        link = rig.link(device.name, reconnect_max_s=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(link.run(stop))
        for _ in range(200):
            if link.stats.bad_input.get(reason, 0) >= 2:  # tried again: no crash
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)
        assert link.stats.bad_input.get(reason, 0) >= 2, (reason, link.stats)
        assert link.stats.connect_failures >= 2
        await device.power_off()
    assert UUID(SERVICE_UUID)  # the half sensor had the service, not its control point
