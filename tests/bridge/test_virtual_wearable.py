"""The virtual wearable over bumble's real BLE stack, driven by a plain bumble GATT central.

Each test puts the wearable and a central on one in-process ``LocalLink`` (two virtual
controllers), connects, exchanges the MTU, subscribes and checks what arrives against the
source: a real E4 recording slice or a seeded simulation.
"""

from __future__ import annotations

import asyncio
import gzip
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from bumble import att
from bumble.controller import Controller
from bumble.core import UUID
from bumble.device import Connection, Device, DeviceConfiguration, Peer
from bumble.gatt_client import CharacteristicProxy
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from firmware_bridge.gatt import (
    BODY_SENSOR_LOCATION_UUID,
    HR_CONTROL_POINT_UUID,
    HR_MEASUREMENT_UUID,
    BodySensorLocation,
    HeartRateMeasurement,
    decode_body_sensor_location,
    decode_heart_rate_measurement,
)
from firmware_bridge.gatt.wearemo_sensor import (
    CHANNEL_CODES,
    CONTROL_CHAR_UUID,
    DATA_CHAR_UUID,
    DEFAULT_SAMPLE_FORMATS,
    INFO_CHAR_UUID,
    ClockReading,
    CommandResult,
    ReadClockCommand,
    ResultCode,
    ResumeFromCommand,
    SensorFrame,
    StartCommand,
    StopCommand,
    decode_frame,
    decode_info,
    decode_response,
    encode_command,
    max_samples_per_frame,
)
from firmware_bridge.virtual_wearable import (
    FRAME_SECONDS,
    RecordingSource,
    SignalSource,
    SimulatedSource,
    VirtualWearable,
)
from wearemo.samples import Channel

pytestmark = [pytest.mark.ble, pytest.mark.timeout(60)]

EXCERPT = (Path(__file__).parents[2]
           / "firmware_bridge/virtual_wearable/data/stress-predict-S02-excerpt")
ALL = frozenset(CHANNEL_CODES)


@dataclass
class Central:
    """A plain bumble GATT client collecting every notification."""

    device: Device
    connection: Connection
    peer: Peer
    mtu: int
    raw_data: list[bytes] = field(default_factory=list)
    hr: list[HeartRateMeasurement] = field(default_factory=list)
    responses: asyncio.Queue[object] = field(default_factory=asyncio.Queue)

    def frames(self) -> dict[Channel, list[SensorFrame]]:
        out: dict[Channel, list[SensorFrame]] = defaultdict(list)
        for raw in self.raw_data:
            f = decode_frame(raw)
            out[f.channel].append(f)
        return out

    def char(self, uuid: str) -> CharacteristicProxy[bytes]:
        (c,) = self.peer.get_characteristics_by_uuid(UUID(uuid))
        return c

    async def subscribe(self, *, data: bool = True, hr: bool = True) -> None:
        await self.peer.subscribe(self.char(CONTROL_CHAR_UUID),
                                  lambda v: self.responses.put_nowait(decode_response(v)))
        if data:
            await self.peer.subscribe(self.char(DATA_CHAR_UUID), self.raw_data.append)
        if hr:
            await self.peer.subscribe(self.char(HR_MEASUREMENT_UUID),
                                      lambda v: self.hr.append(decode_heart_rate_measurement(v)))

    async def command(self, cmd: object) -> object:
        await self.peer.write_value(self.char(CONTROL_CHAR_UUID), encode_command(cmd),  # type: ignore[arg-type]
                                    with_response=True)
        async with asyncio.timeout(5):
            return await self.responses.get()

    async def write_raw(self, value: bytes) -> object:
        await self.peer.write_value(self.char(CONTROL_CHAR_UUID), value, with_response=True)
        async with asyncio.timeout(5):
            return await self.responses.get()


async def connect_central(link: LocalLink, vw: VirtualWearable, *,
                          mtu: int | None = 247) -> Central:
    address = "F0:F1:F2:F3:F4:F5"
    ctrl = Controller("central", link=link, public_address=address)
    device = Device(config=DeviceConfiguration(name="central", address=Address(address)),
                    host=Host(ctrl, AsyncPipeSink(ctrl)))
    await device.power_on()
    async with asyncio.timeout(5):  # bumble's own connect timeout never fires (BLE-TESTING.md)
        connection = await device.connect(Address(vw.address))
    peer = Peer(connection)
    got = await peer.request_mtu(mtu) if mtu is not None else att.ATT_DEFAULT_MTU
    await peer.discover_services()
    await peer.discover_characteristics()
    for s in peer.services:
        for c in s.characteristics:
            await peer.discover_descriptors(c)
    return Central(device, connection, peer, got)


@pytest.fixture
async def rig() -> AsyncIterator[list[VirtualWearable]]:
    """Holds wearables to stop at the end (even when the test fails)."""
    made: list[VirtualWearable] = []
    yield made
    for vw in made:
        await vw.stop()


async def start_wearable(rig: list[VirtualWearable], source: SignalSource, **kwargs: object,
                         ) -> tuple[LocalLink, VirtualWearable]:
    link = LocalLink()
    vw = VirtualWearable(source, name="vw-test", **kwargs)  # type: ignore[arg-type]
    rig.append(vw)
    await vw.attach(link)
    return link, vw


def _slice_e4(dst: Path, t0: int, seconds: int) -> None:
    """Cut [t0, t0 + seconds) out of the real excerpt, as an E4 folder (plain CSV)."""
    dst.mkdir()
    for stem in ("BVP", "EDA", "TEMP", "ACC", "HR"):
        lines = gzip.decompress((EXCERPT / f"{stem}.csv.gz").read_bytes()).decode().splitlines()
        rate = float(lines[1].split(",")[0])
        start = float(lines[0].split(",")[0]) + t0
        ncols = len(lines[0].split(","))
        rows = lines[2 + int(t0 * rate): 2 + int((t0 + seconds) * rate)]
        head = ", ".join([f"{start:.6f}"] * ncols) + "\n" + ", ".join([f"{rate:.6f}"] * ncols)
        (dst / f"{stem}.csv").write_text(head + "\n" + "\n".join(rows) + "\n")
    lines = gzip.decompress((EXCERPT / "IBI.csv.gz").read_bytes()).decode().splitlines()
    start = float(lines[0].split(",")[0]) + t0
    beats = [tuple(map(float, r.split(","))) for r in lines[1:]]
    kept = [f"{t - t0:.6f},{ibi:.6f}" for t, ibi in beats if t0 <= t < t0 + seconds]
    (dst / "IBI.csv").write_text(f"{start:.6f}, IBI\n" + "\n".join(kept) + "\n")


def _concat(frames: list[SensorFrame]) -> np.ndarray:
    return np.concatenate([f.values for f in frames])


async def test_replay_of_real_recording_arrives_whole_and_exact(tmp_path: Path,
                                                                rig: list[VirtualWearable]) -> None:
    folder = tmp_path / "slice"
    _slice_e4(folder, t0=450, seconds=60)  # IBI.csv holds 34 beats in this minute
    source = RecordingSource(folder)
    link, vw = await start_wearable(rig, source, speed=40)
    central = await connect_central(link, vw, mtu=247)
    assert central.mtu == 247
    await central.subscribe()
    info = decode_info(await central.peer.read_value(central.char(INFO_CHAR_UUID)))
    assert info.channels == ALL and info.protocol_version == 1
    location = await central.peer.read_value(central.char(BODY_SENSOR_LOCATION_UUID))
    assert decode_body_sensor_location(location) is BodySensorLocation.WRIST
    await vw.start()
    assert await central.command(StartCommand(ALL)) == CommandResult(0x01, ResultCode.SUCCESS)
    async with asyncio.timeout(10):
        await vw.wait_finished()
    await asyncio.sleep(0.05)

    assert all(20 < len(raw) <= central.mtu - 3 for raw in central.raw_data)
    frames = central.frames()
    start_us = round(source.start_unix * 1e6)
    for channel, sig in source.signals.items():
        got = frames[channel]
        assert [f.seq for f in got] == list(range(len(got)))  # no gap, no duplicate
        assert all(f.rtc for f in got)
        # each frame carries its channel's nominal duration (RTC time = recording time)
        nominal = round(FRAME_SECONDS[channel] * sig.rate_hz)
        assert [f.device_time_us for f in got] == [
            start_us + round(k * nominal / sig.rate_hz * 1e6) for k in range(len(got))]
        values = _concat(got)
        assert values.shape == sig.values.shape  # every sample arrived
        half_step = DEFAULT_SAMPLE_FORMATS[channel][1] / 2
        np.testing.assert_allclose(values, sig.values, rtol=0, atol=half_step)
        assert vw.sent_counts[channel.value] == sig.n_samples
    # the first PPG frame is the recording's first BVP samples (BVP.csv row 2 + 450 * 64 on)
    first = frames[Channel.PPG][0]
    assert first.n_samples == 16 and first.device_time_us == start_us
    np.testing.assert_allclose(first.values, source.signals[Channel.PPG].values[:16], atol=2**-11)
    # ACC in 1/64 g survives exactly
    np.testing.assert_array_equal(_concat(frames[Channel.ACC]), source.signals[Channel.ACC].values)

    # HRS: one notification per HR.csv row, RR = IBI.csv intervals exactly (E4 IBI is 1/64 s)
    assert source.hr is not None and source.beats is not None
    assert [m.hr_bpm for m in central.hr] == [round(v) for v in source.hr.values]
    rr = [r for m in central.hr for r in m.rr_1024]
    assert len(rr) == len(source.beats) > 10
    assert rr == [round(ms * 1.024) for ms in source.beats.ibi_ms]
    np.testing.assert_allclose([r * 1000 / 1024 for r in rr], source.beats.ibi_ms, atol=1e-9)
    assert vw.sent_counts["hr"] == len(central.hr) == source.hr.n_samples
    assert vw.sent_counts["rr"] == len(rr)


async def test_simulation_ground_truth_over_ble(rig: list[VirtualWearable]) -> None:
    source = SimulatedSource(seed=7, duration_s=30, heart_rate_bpm=72, scr_number=3)
    link, vw = await start_wearable(rig, source, speed=40, clock="ticks")
    central = await connect_central(link, vw)
    await central.subscribe()
    await vw.start()
    assert await central.command(StartCommand(ALL)) == CommandResult(0x01, ResultCode.SUCCESS)
    async with asyncio.timeout(10):
        await vw.wait_finished()
    await asyncio.sleep(0.05)

    rr_ms = np.array([r for m in central.hr for r in m.rr_ms])
    assert source.beats is not None
    assert len(rr_ms) == len(source.beats)
    np.testing.assert_allclose(rr_ms, source.beats.ibi_ms, atol=1000 / 1024 / 2)  # 1/1024 s grid
    assert abs(60_000 / rr_ms.mean() - 72) < 2  # bpm
    frames = central.frames()
    assert not any(f.rtc for fs in frames.values() for f in fs)
    assert frames[Channel.PPG][0].device_time_us == 0  # ticks since boot
    for channel, sig in source.signals.items():
        np.testing.assert_allclose(_concat(frames[channel]), sig.values, rtol=0,
                                   atol=DEFAULT_SAMPLE_FORMATS[channel][1] / 2)
    received = {c.value: sum(f.n_samples for f in frames[c]) for c in source.signals}
    received |= {"hr": len(central.hr), "rr": len(rr_ms)}
    assert received == vw.sent_counts


async def test_default_mtu_streams_only_after_mtu_exchange(rig: list[VirtualWearable]) -> None:
    source = SimulatedSource(seed=1, duration_s=12)
    link, vw = await start_wearable(rig, source, speed=40)
    central = await connect_central(link, vw, mtu=None)
    assert central.connection.att_mtu == 23
    await central.subscribe()
    await vw.start()
    await central.command(StartCommand(ALL))
    await asyncio.sleep(0.1)  # 4 s of device time
    assert central.raw_data == []  # a frame cannot fit 20 bytes: device keeps buffering
    assert central.hr and all(len(m.rr_1024) <= 9 for m in central.hr)  # HRS fits 20 bytes
    mtu = await central.peer.request_mtu(60)
    assert mtu == 60
    async with asyncio.timeout(10):
        await vw.wait_finished()
    await asyncio.sleep(0.05)
    assert all(len(raw) <= 57 for raw in central.raw_data)
    frames = central.frames()
    ppg = frames[Channel.PPG]
    assert max(f.n_samples for f in ppg) == max_samples_per_frame(Channel.PPG, 60) == 9
    np.testing.assert_allclose(_concat(ppg), source.signals[Channel.PPG].values, atol=2**-11)
    assert [f.seq for f in ppg] == list(range(len(ppg)))


async def test_nothing_streams_before_start_or_subscription(rig: list[VirtualWearable]) -> None:
    source = SimulatedSource(seed=2, duration_s=10)
    link, vw = await start_wearable(rig, source, speed=40)
    central = await connect_central(link, vw)
    await central.subscribe(data=False, hr=False)
    await vw.start()
    await asyncio.sleep(0.08)
    assert vw.sent_counts == dict.fromkeys(vw.sent_counts, 0)
    # START without a data subscription: still nothing (GATT would drop it); samples wait
    await central.command(StartCommand(frozenset({Channel.EDA})))
    await asyncio.sleep(0.05)
    assert central.raw_data == [] and vw.sent_counts["eda"] == 0
    await central.peer.subscribe(central.char(DATA_CHAR_UUID), central.raw_data.append)
    async with asyncio.timeout(10):
        await vw.wait_finished()
    await asyncio.sleep(0.05)
    eda = central.frames()[Channel.EDA]
    assert [f.seq for f in eda] == list(range(len(eda)))  # backlog from sample 0, no loss
    np.testing.assert_allclose(_concat(eda), source.signals[Channel.EDA].values, atol=2**-20)
    assert set(central.frames()) == {Channel.EDA}  # only the started channel


async def test_control_point_commands(rig: list[VirtualWearable]) -> None:
    source = SimulatedSource(seed=3, duration_s=20)
    link, vw = await start_wearable(rig, source, speed=20, rtc_start_unix=1_700_000_000.0,
                                    ring_frames=8)
    central = await connect_central(link, vw)
    await central.subscribe()
    await vw.start()
    loop = asyncio.get_running_loop()
    t_wall = loop.time()
    clock = await central.command(ReadClockCommand())
    assert isinstance(clock, ClockReading) and clock.rtc
    expected_us = 1_700_000_000_000_000 + (loop.time() - t_wall) * 20e6
    assert abs(clock.device_time_us - expected_us) < 0.2e6  # within 10 ms wall at speed 20

    # malformed and unknown commands get a RESULT, never silence
    assert await central.write_raw(bytes.fromhex("01 10")) == \
        CommandResult(0x01, ResultCode.INVALID_PARAMETER)
    assert await central.write_raw(bytes.fromhex("7f")) == \
        CommandResult(0x7F, ResultCode.UNSUPPORTED_OPCODE)

    await central.command(StartCommand(frozenset({Channel.PPG, Channel.ACC})))
    await asyncio.sleep(0.15)  # 3 s of device time: 12 PPG frames
    assert await central.command(StopCommand(frozenset({Channel.ACC}))) == \
        CommandResult(0x02, ResultCode.SUCCESS)
    n_acc = vw.sent_counts["acc"]
    await asyncio.sleep(0.1)
    assert vw.sent_counts["acc"] == n_acc  # stopped

    # RESUME_FROM: the ring holds the last 8 PPG frames; asking from 0 is partial
    await central.command(StopCommand(frozenset({Channel.PPG})))
    before = list(central.raw_data)
    ppg_sent = [f for f in central.frames()[Channel.PPG]]
    last_seq = ppg_sent[-1].seq
    assert last_seq >= 8
    result = await central.command(ResumeFromCommand(Channel.PPG, last_seq - 2))
    assert result == CommandResult(0x04, ResultCode.SUCCESS)
    resent = central.raw_data[len(before):]
    assert resent == [raw for raw in before if decode_frame(raw).channel is Channel.PPG][-3:]
    result = await central.command(ResumeFromCommand(Channel.PPG, 0))
    assert result == CommandResult(0x04, ResultCode.PARTIAL)
    assert [decode_frame(r).seq for r in central.raw_data[len(before) + 3:]] == \
        list(range(last_seq - 7, last_seq + 1))


async def test_hr_control_point_and_disconnect_resets_start(rig: list[VirtualWearable]) -> None:
    source = SimulatedSource(seed=4, duration_s=60)
    link, vw = await start_wearable(rig, source, speed=20)
    central = await connect_central(link, vw)
    await central.subscribe()
    await central.peer.write_value(central.char(HR_CONTROL_POINT_UUID), b"\x01",
                                   with_response=True)
    with pytest.raises(att.ATT_Error) as err:
        await central.peer.write_value(central.char(HR_CONTROL_POINT_UUID), b"\x05",
                                       with_response=True)
    assert err.value.error_code == 0x80
    await vw.start()
    await central.command(StartCommand(ALL))
    await asyncio.sleep(0.1)
    assert vw.sent_counts["ppg"] > 0
    async with asyncio.timeout(5):
        await central.connection.disconnect()
    await asyncio.sleep(0.05)
    sent = dict(vw.sent_counts)
    await asyncio.sleep(0.1)
    assert vw.sent_counts == sent  # nothing goes out while disconnected


async def test_out_of_range_values_fall_back_to_float32(tmp_path: Path,
                                                        rig: list[VirtualWearable]) -> None:
    """A PPG excursion beyond int24 at 2^-10 (+-8192 au) is sent as float32, not lost."""
    values = [0.5, 20000.25, -9000.5, 1.0] * 16
    (tmp_path / "BVP.csv").write_text("1000.0\n64.0\n" + "\n".join(map(str, values)) + "\n")
    source = RecordingSource(tmp_path)
    link, vw = await start_wearable(rig, source, speed=20)
    central = await connect_central(link, vw)
    await central.subscribe(hr=False)
    await vw.start()
    await central.command(StartCommand(frozenset({Channel.PPG})))
    async with asyncio.timeout(10):
        await vw.wait_finished()
    await asyncio.sleep(0.05)
    frames = central.frames()[Channel.PPG]
    assert all(raw[2] == 4 for raw in central.raw_data)  # sample format byte: float32
    np.testing.assert_array_equal(_concat(frames), values)  # exact in float32
    assert frames[0].device_time_us == 1000 * 10**6
