"""Signal sources of the virtual wearable: the E4 reader on the real excerpt, and the simulation's
ground truth checked with NeuroKit2's own detectors."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.virtual_wearable import RecordingSource, SimulatedSource, VirtualWearable
from wearemo.samples import Channel

EXCERPT = (Path(__file__).parents[2]
           / "firmware_bridge/virtual_wearable/data/stress-predict-S02-excerpt")


def test_reads_the_real_excerpt() -> None:
    src = RecordingSource(EXCERPT)
    assert src.start_unix == 1644227824.0
    expect = {Channel.PPG: (64.0, 65280), Channel.EDA: (4.0, 4080), Channel.TEMP: (4.0, 4080),
              Channel.ACC: (32.0, 32640)}
    for ch, (rate, n) in expect.items():
        assert (src.signals[ch].rate_hz, src.signals[ch].n_samples) == (rate, n)
        assert src.signals[ch].start_offset_s == 0.0
    # first rows of the files, ACC converted from 1/64 g
    assert src.signals[Channel.PPG].values[:2].tolist() == [-0.7, -2.22]
    assert src.signals[Channel.ACC].values[0].tolist() == [-66 / 64, -11 / 64, 0.0]
    assert src.signals[Channel.EDA].values[0] == pytest.approx(0.207855)
    assert src.hr is not None and src.hr.values[:2].tolist() == [79.0, 79.45]
    assert src.beats is not None and len(src.beats) == 122
    assert src.beats.end_s[0] == 354.0 and src.beats.ibi_ms[0] == 687.5
    # 1020 s: the excerpt ends where labels.csv's last phase ends
    assert src.start_unix + src.duration_s == pytest.approx(1644228844.0, abs=1.0)


def _write(folder: Path, name: str, text: str, *, gz: bool = False) -> None:
    folder.mkdir(exist_ok=True)
    if gz:
        (folder / f"{name}.csv.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (folder / f"{name}.csv").write_text(text)


def test_any_subset_plain_or_gz_and_per_file_start(tmp_path: Path) -> None:
    _write(tmp_path, "EDA", "100.0\n4.0\n1.0\n1.5\n2.0\n")
    _write(tmp_path, "TEMP", "102.0\n2.0\n33.0\n33.5\n", gz=True)
    _write(tmp_path, "IBI", "100.0, IBI\n3.0,0.75\n3.8,0.8\n")
    src = RecordingSource(tmp_path)
    assert set(src.signals) == {Channel.EDA, Channel.TEMP}
    assert src.start_unix == 100.0
    assert src.signals[Channel.TEMP].start_offset_s == 2.0
    assert src.signals[Channel.TEMP].values.tolist() == [33.0, 33.5]
    assert src.hr is None
    assert src.beats is not None and src.beats.ibi_ms.tolist() == [750.0, 800.0]
    assert src.duration_s == 3.8


def test_empty_ibi_has_no_beats(tmp_path: Path) -> None:
    _write(tmp_path, "IBI", "100.0, IBI\n")
    _write(tmp_path, "HR", "100.0\n1.0\n70\n")
    src = RecordingSource(tmp_path)
    assert src.beats is not None and len(src.beats) == 0


@pytest.mark.parametrize(("name", "text", "message"), [
    ("EDA", "100.0\n0.0\n1.0\n", "EDA.csv: sampling rate must be positive"),
    ("EDA", "100.0\n4.0\n1.0\nabc\n", "EDA.csv: malformed row"),
    ("EDA", "100.0\n4.0\n1.0\nnan\n", "EDA.csv: non-finite value in data row 1"),
    ("ACC", "1.0, 1.0\n32.0, 32.0\n1,2\n", "ACC.csv: expected 3 column"),
    ("BVP", "start\n", "BVP.csv: needs a start-time row and a rate row"),
    ("IBI", "100.0, IBI\n3.0,0.75\n2.0,0.8\n", "IBI.csv: beat times must strictly increase"),
    ("IBI", "100.0, IBI\n3.0,0.0\n", "IBI.csv: intervals must be positive"),
])
def test_malformed_files_name_the_file(tmp_path: Path, name: str, text: str,
                                       message: str) -> None:
    _write(tmp_path, name, text)
    with pytest.raises(ValueError, match=message):
        RecordingSource(tmp_path)


def test_folder_without_e4_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no E4 file"):
        RecordingSource(tmp_path)


def test_simulation_is_seeded() -> None:
    a = SimulatedSource(seed=5, duration_s=20)
    b = SimulatedSource(seed=5, duration_s=20)
    c = SimulatedSource(seed=6, duration_s=20)
    for ch in a.signals:
        np.testing.assert_array_equal(a.signals[ch].values, b.signals[ch].values)
    assert not np.array_equal(a.signals[Channel.PPG].values, c.signals[Channel.PPG].values)
    assert a.beats is not None and b.beats is not None
    np.testing.assert_array_equal(a.beats.ibi_ms, b.beats.ibi_ms)


@pytest.mark.parametrize(("seed", "hr_bpm", "scr_number"), [(0, 60.0, 1), (11, 72.0, 4),
                                                              (3, 90.0, 2)])
def test_simulation_ground_truth(seed: int, hr_bpm: float, scr_number: int) -> None:
    import neurokit2 as nk

    src = SimulatedSource(seed=seed, duration_s=60, heart_rate_bpm=hr_bpm, scr_number=scr_number)
    beats = src.beats
    assert beats is not None
    # mean rate of the true beats is the requested one (frequency modulation averages out)
    assert abs(60_000 / beats.ibi_ms.mean() - hr_bpm) < 2.0
    # the beats are the simulator's pulse onsets: NeuroKit2 finds one systolic peak 0.1-0.25 s
    # after every onset (the simulator puts it at 0.175 periods)
    ppg = src.signals[Channel.PPG].values
    peaks_s = nk.ppg_findpeaks(nk.ppg_clean(ppg, sampling_rate=64),
                               sampling_rate=64)["PPG_Peaks"] / 64
    lag = np.array([peaks_s[peaks_s > t][0] - t for t in beats.end_s if np.any(peaks_s > t)])
    assert len(lag) >= len(beats) - 1
    assert np.all((lag > 0.1) & (lag < 0.25))
    # EDA has exactly the requested number of SCRs, by NeuroKit2's own detector
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = nk.eda_process(src.signals[Channel.EDA].values, sampling_rate=4)
    assert len(info["SCR_Peaks"]) == scr_number
    # resting temperature and accelerometer
    assert abs(src.signals[Channel.TEMP].values.mean() - 33.5) < 0.01
    np.testing.assert_allclose(src.signals[Channel.ACC].values.mean(axis=0), [0, 0, 1], atol=0.01)
    # device HR = 60000 / last RR, 1 Hz from t = 1 s
    assert src.hr is not None and src.hr.start_offset_s == 1.0
    assert np.all(np.abs(src.hr.values - hr_bpm) < 0.25 * hr_bpm)


def test_wearable_rejects_bad_options() -> None:
    src = SimulatedSource(seed=0, duration_s=5)
    with pytest.raises(ValueError, match="speed must be positive"):
        VirtualWearable(src, name="x", speed=0)
    with pytest.raises(ValueError, match=r"clock must be one of \['rtc', 'ticks'\]"):
        VirtualWearable(src, name="x", clock="gps")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duration_s must be at least 5"):
        SimulatedSource(seed=0, duration_s=1)
