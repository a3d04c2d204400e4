"""Polar PMD end to end: a Polar-like virtual wearable (PMD + HRS, no wearemo service) over
bumble, the unchanged DeviceLink over bleak, the spool and uplink, and a real HTTP ingest API
on loopback (``bridge_ingest_server``: the wearemo ingest contract, 409 for a batch that starts
before its channel's last stored sample).

Ground truth is the wearable's source: every PMD sample the sensor sent is stored once, at the
source's time (PMD frame times are ns since 2000; the sensor clock is UTC here), with the
source's value (within the raw integer quantisation); PPI beats become ``rr`` at their beat
times, without the beats flagged as without skin contact, and the HRS RR intervals are not
stored a second time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from bridge_ingest_server import IngestServer
from bumble.link import LocalLink

from firmware_bridge.bumble_backend import (
    BleakClientBumble,
    BleakScannerBumble,
    BumbleTransport,
    bumble_central_close,
)
from firmware_bridge.device_link import DeviceLink, DeviceLinkConfig
from firmware_bridge.spool import Spool
from firmware_bridge.uplink import Uplink
from firmware_bridge.virtual_wearable import SimulatedSource, VirtualWearable
from wearemo.samples import Channel, SampleBatch

pytestmark = [pytest.mark.ble, pytest.mark.e2e, pytest.mark.timeout(120)]

START_UNIX = 1_700_000_000.0
SOURCE = SimulatedSource(seed=5, duration_s=24)
SUBJECT = "polar-01"


def _times_values(batches: list[SampleBatch], channel: Channel) -> tuple[np.ndarray, np.ndarray]:
    mine = [b for b in batches if b.channel is channel]
    times = np.concatenate([b.times_ns() for b in mine])
    values = np.concatenate([b.values_array() for b in mine])
    order = np.argsort(times, kind="stable")
    return times[order], values[order]


async def test_polar_like_wearable_to_the_api(tmp_path: Path) -> None:
    radio = LocalLink()
    transport = BumbleTransport(link=radio)
    wearable = VirtualWearable(SOURCE, name="Polar Sense VW01", speed=12,
                               rtc_start_unix=START_UNIX, sensor_service=False, pmd=True)
    await wearable.attach(radio)
    server = IngestServer()
    server.start()
    with Spool(tmp_path / "spool.db") as spool:
        uplink = Uplink(spool, api_url=server.url)
        link = DeviceLink(DeviceLinkConfig(
            subject_id=SUBJECT, device_id="polar-vw01", name=wearable.name,
            backend=BleakClientBumble, scanner_backend=BleakScannerBumble,
            backend_kwargs={"bumble": transport}, scan_timeout_s=5, connect_timeout_s=5,
            reconnect_initial_s=0.05), spool, on_spooled=uplink.notify)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(link.run(stop)), asyncio.create_task(uplink.run(stop))]
        try:
            await wearable.start()
            await asyncio.wait_for(link.connected.wait(), 10)
            assert link.stats.pmd_started == {"ppg", "acc", "ppi"}
            await asyncio.sleep(4 / wearable.speed)
            wearable.skin_contact = False  # the strap slips: PPI flagged, no contact
            await asyncio.sleep(3 / wearable.speed)
            wearable.skin_contact = True
            await asyncio.sleep(2 / wearable.speed)
            assert await wearable.drop_link()  # PMD stops; the link restarts it
            await asyncio.sleep(0.05)
            await asyncio.wait_for(link.connected.wait(), 10)
            await asyncio.wait_for(wearable.wait_finished(), 60)
            assert await link.wait_quiet(quiet_s=0.3, timeout_s=10)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await wearable.stop()
            await bumble_central_close(transport)
        assert await uplink.drain(timeout_s=30), (spool.depth, spool.dead_depth,
                                                  uplink.stats)
        assert spool.dead_depth == 0
    server.stop()
    stored = list(server.stored.values())
    assert all(n == 1 for n in server.sample_multiplicity().values())

    assert link.stats.connects == 2 and link.stats.pmd_started == {"ppg", "acc", "ppi"}
    t0_ns = round(START_UNIX * 1e9)
    sent = wearable.pmd_sent_counts
    for channel, atol in ((Channel.PPG, 2.0 ** -10), (Channel.ACC, 1e-3)):
        sig = SOURCE.signals[channel]
        times, values = _times_values(stored, channel)
        assert len(times) == sent[channel.value] > 0, channel  # all of it, once
        assert np.all(np.diff(times) > 0), channel
        index = np.rint(((times - t0_ns) / 1e9 - sig.start_offset_s) * sig.rate_hz).astype(int)
        truth = t0_ns + np.round((sig.start_offset_s + index / sig.rate_hz) * 1e9)
        assert np.max(np.abs(times - truth)) <= 1_000, channel  # PMD times are exact here
        np.testing.assert_allclose(values, sig.values[index], rtol=0, atol=atol)
        # the disconnect is a gap by protocol (PMD cannot re-send), reported, not filled in
        assert link.assembler.stats.of(channel).gaps >= 1, channel
    beats = SOURCE.beats
    assert beats is not None
    rr_times, rr_values = _times_values(stored, Channel.RR)
    assert sent["ppi_no_contact"] > 0
    assert link.stats.ppi_rejected == sent["ppi_no_contact"]
    assert len(rr_times) == sent["ppi"] - sent["ppi_no_contact"]  # HRS RR not stored again
    beat = np.abs(rr_times[:, None] - (t0_ns + beats.end_s[None, :] * 1e9)).argmin(axis=1)
    assert len(np.unique(beat)) == len(beat)
    assert np.max(np.abs(rr_times - (t0_ns + beats.end_s[beat] * 1e9))) <= 5e6  # 5 ms
    np.testing.assert_allclose(rr_values, np.rint(beats.ibi_ms[beat]))
    hr_times, _ = _times_values(stored, Channel.HR)
    assert 0 < len(hr_times) <= wearable.sent_counts["hr"] and np.all(np.diff(hr_times) > 0)
    # HRS has no device time: mapped onto the sensor clock through the PMD frames' times
    hr = SOURCE.hr
    assert hr is not None
    truth = START_UNIX + hr.start_offset_s + np.arange(hr.n_samples) / hr.rate_hz
    assert np.max(np.abs(hr_times[:, None] / 1e9 - truth[None, :]).min(axis=1)) < 1.0
    assert link.stats.bad_input == {}


async def test_sensor_service_and_pmd_on_one_device_store_nothing_twice(tmp_path: Path) -> None:
    """PPG and ACC come from the wearemo service (it can re-send); PMD adds PPI only."""
    radio = LocalLink()
    transport = BumbleTransport(link=radio)
    wearable = VirtualWearable(SOURCE, name="vw-both", speed=12, rtc_start_unix=START_UNIX,
                               pmd=True)
    await wearable.attach(radio)
    server = IngestServer()
    server.start()
    with Spool(tmp_path / "spool.db") as spool:
        uplink = Uplink(spool, api_url=server.url)
        link = DeviceLink(DeviceLinkConfig(
            subject_id=SUBJECT, device_id="vw-both", name=wearable.name,
            backend=BleakClientBumble, scanner_backend=BleakScannerBumble,
            backend_kwargs={"bumble": transport}, scan_timeout_s=5, connect_timeout_s=5),
            spool, on_spooled=uplink.notify)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(link.run(stop)), asyncio.create_task(uplink.run(stop))]
        try:
            await wearable.start()
            await asyncio.wait_for(wearable.wait_finished(), 60)
            assert await link.wait_quiet(quiet_s=0.3, timeout_s=10)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await wearable.stop()
            await bumble_central_close(transport)
        assert await uplink.drain(timeout_s=30)
    server.stop()
    assert link.stats.pmd_started == {"ppi"}
    assert wearable.pmd_sent_counts["ppg"] == wearable.pmd_sent_counts["acc"] == 0
    assert all(n == 1 for n in server.sample_multiplicity().values())
    stored = server.samples()
    for channel in (Channel.PPG, Channel.ACC):
        assert stored[(SUBJECT, channel.value)] == SOURCE.signals[channel].n_samples
    assert stored[(SUBJECT, "rr")] == wearable.pmd_sent_counts["ppi"]  # HRS RR not stored


def test_pmd_bad_input_is_counted(tmp_path: Path) -> None:
    """The link's consumer on crafted PMD notifications (no radio needed for this part)."""
    from firmware_bridge.gatt.polar_pmd import PMD_DATA_UUID, MeasurementType, encode_pmd_frame

    with Spool(tmp_path / "spool.db") as spool:
        link = DeviceLink(DeviceLinkConfig(subject_id="s", device_id="d", name="x"), spool)
        link._pmd_rate[MeasurementType.ACC] = 50.0  # as chosen at START
        t = 700_000_000 * 10**9  # sensor time, ns since 2000
        acc = np.zeros((5, 3), dtype=np.int64)

        def notify(ts: int, payload: bytes | None = None) -> None:
            raw = encode_pmd_frame(MeasurementType.ACC, ts, acc) if payload is None else payload
            link._handle(PMD_DATA_UUID, raw, 0)

        notify(t)
        notify(t + 100_000_000)
        notify(t + 100_000_000)  # not after the previous frame: dropped
        notify(t + 400_000_000)  # 0.2 s missing: a gap, reported
        notify(t - 3_600 * 10**9)  # an hour back: the sensor clock restarted
        notify(0, b"\x02\x00\x00")  # truncated header
        notify(0, b"\x09" + bytes(12))  # unknown measurement type
        assert link.stats.bad_input == {"clock_jump": 1, "clock_backwards": 1,
                                        "truncated_frame": 1, "corrupt_frame": 1}
        assert link.stats.clock_resets == 1 and link.stats.decode_errors == 2
        gaps = link.assembler.stats.of(Channel.ACC)
        assert gaps.gaps == 1 and gaps.gap_s == pytest.approx(0.2)
        batches = spool.peek(100) + link.assembler.flush()
        times = np.sort(np.concatenate([b.times_ns() for b in batches]))
        # kept: the 3 good frames and the restarted sensor's one (logged and counted, at the
        # sensor's own time); the repeated frame and the broken ones are not
        assert len(times) == 20 and len(np.unique(times)) == 20
