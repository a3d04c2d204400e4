"""E4-folder loader: the shipped excerpt, subsets, other rates, malformed files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from wearemo.datasets import LabelSegment, Recording, find_recordings, load_recording
from wearemo.samples import MAX_BATCH_SAMPLES, Channel

EXCERPT = (Path(__file__).resolve().parents[2] / "firmware_bridge" / "virtual_wearable" / "data"
           / "stress-predict-S02-excerpt")
T0 = 1_700_000_000


def _write(path: Path, text: str) -> None:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def test_excerpt_loads_all_channels_in_canonical_units() -> None:
    rec = load_recording(EXCERPT, subject_id="S02")
    assert set(rec.channels) == set(Channel)
    ppg, acc, rr = rec.channels[Channel.PPG], rec.channels[Channel.ACC], rec.channels[Channel.RR]
    assert ppg.rate_hz == 64.0 and ppg.n_samples == 65280
    # 17 min at 64 Hz, sample i at start + i/64 s exactly.
    assert ppg.times_ns[1] - ppg.times_ns[0] == 15_625_000
    assert acc.values.shape == (32640, 3)
    # ACC is in g after /64: a resting wrist has |a| ≈ 1 g.
    assert abs(np.median(np.linalg.norm(acc.values, axis=1)) - 1.0) < 0.1
    # IBI: first row after the header is t_rel 354 s, 0.6875 s, stamped at the closing beat.
    assert rr.values[0] == pytest.approx(687.5)
    assert rr.times_ns[0] == (1644227824 + 354) * 10**9
    assert rec.channels[Channel.EDA].rate_hz == 4.0
    assert [s.task for s in rec.labels] == ["rest", "stroop", "rest"]


def test_labels_lookup_and_window_label() -> None:
    rec = load_recording(EXCERPT)
    assert rec.subject_id == "stress-predict-S02-excerpt"
    stroop_start = 1644228196 * 10**9
    assert rec.label_at(stroop_start).task == "stroop"
    assert rec.label_at(stroop_start - 1).task == "rest"
    # 40 s of rest + 20 s of stroop: rest covers 2/3.
    w = rec.window_label(stroop_start - 40 * 10**9, stroop_start + 20 * 10**9)
    assert w is not None and w.task == "rest"
    assert rec.window_label(stroop_start - 10 * 10**9, stroop_start + 10 * 10**9,
                            min_fraction=0.6) is None
    assert rec.label_at(0) is None


def test_iter_batches_is_time_ordered_and_lossless() -> None:
    rec = load_recording(EXCERPT).between(1644227824 * 10**9, 1644227824 * 10**9 + 60 * 10**9)
    batches = list(rec.iter_batches(chunk_s=5.0))
    starts = [b.start_ns for b in batches]
    assert starts == sorted(starts)
    for ch, data in rec.channels.items():
        got = [b for b in batches if b.channel is ch]
        times = np.concatenate([b.times_ns() for b in got])
        vals = np.concatenate([b.values_array() for b in got])
        assert np.array_equal(times, data.times_ns)
        assert np.array_equal(vals, data.values)
        assert all(b.n_samples <= MAX_BATCH_SAMPLES for b in got)


def test_subset_other_rates_gzip(tmp_path: Path) -> None:
    folder = tmp_path / "p7"
    folder.mkdir()
    eda_rows = "".join(f"{0.5 + i / 100}\n" for i in range(80))
    _write(folder / "EDA.csv.gz", f"{T0}.0\n8.0\n" + eda_rows)
    _write(folder / "HR.csv", f"{T0 + 2}\n0.5\n70\n72\n71\n")
    rec = load_recording(folder)
    assert set(rec.channels) == {Channel.EDA, Channel.HR}
    eda = rec.channels[Channel.EDA]
    assert eda.rate_hz == 8.0 and eda.n_samples == 80
    assert eda.times_ns[-1] - eda.times_ns[0] == 79 * 125_000_000
    hr_times = rec.channels[Channel.HR].times_ns.tolist()
    assert hr_times == [(T0 + 2 + 2 * i) * 10**9 for i in range(3)]
    assert rec.labels == []
    only = load_recording(folder, channels=["hr"])
    assert set(only.channels) == {Channel.HR}
    assert find_recordings(tmp_path) == [folder]
    assert find_recordings(folder) == [folder]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("EDA.csv", f"{T0}\n4\n0.1\nabc\n0.3\n", r"EDA\.csv row 4"),
        ("EDA.csv", f"{T0}\n4\n0.1\n\n0.3\n", r"EDA\.csv row 4"),
        ("EDA.csv", f"{T0}\n-4\n0.1\n", r"EDA\.csv row 2: sampling rate"),
        ("EDA.csv", "yesterday\n4\n0.1\n", r"EDA\.csv row 1: start time"),
        ("ACC.csv", f"{T0},{T0},{T0}\n32,32,32\n1,2,63\n1,2\n", r"ACC\.csv row 4"),
        ("IBI.csv", f"{T0}, IBI\n1.0,0.8\n0.9,0.8\n", r"IBI\.csv row 3: beat time"),
        ("IBI.csv", f"{T0}, IBI\n1.0,0.8\n2.0,-0.8\n", r"IBI\.csv row 3: interval"),
    ],
)
def test_malformed_files_name_file_and_row(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        load_recording(tmp_path)


def test_bad_labels_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no channel data"):
        load_recording(tmp_path)
    (tmp_path / "TEMP.csv").write_text(f"{T0}\n4\n33\n")
    (tmp_path / "labels.csv").write_text("start_unix,end_unix,label,task\n10,5,stress,x\n")
    with pytest.raises(ValueError, match=r"labels\.csv row 2"):
        load_recording(tmp_path)
    with pytest.raises(ValueError, match="subject_id"):
        load_recording(tmp_path, subject_id="Jane Doe")


def test_window_label_picks_majority() -> None:
    segs = [LabelSegment(0, 30, "a", "x"), LabelSegment(30, 100, "b", "y")]
    rec = Recording("s", Path("."), {}, segs)
    assert rec.window_label(0, 100).label == "b"
    with pytest.raises(ValueError):
        rec.window_label(5, 5)


# -- bad input: every message names the folder, the file, the row and the token as written ----

@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        # pandas reads these as missing values; the message must quote what the file holds
        ("EDA.csv", f"{T0}\n4\n0.1\nNaN\n0.3\n", "EDA.csv row 4: 'NaN' is not a finite number"),
        ("EDA.csv", f"{T0}\n4\n0.1\nn/a\n0.3\n", "EDA.csv row 4: 'n/a' is not a number"),
        ("EDA.csv", f"{T0}\n4\n0.1\n1.2.3\n0.3\n", "EDA.csv row 4: '1.2.3' is not a number"),
        ("EDA.csv", f"{T0}\n4\n0.1\ninf\n0.3\n", "EDA.csv row 4: 'inf' is not a finite number"),
        ("ACC.csv", f"{T0},{T0},{T0}\n32,32,32\n1,2,63\n1,oops,63\n1,2,63\n",
         "ACC.csv row 4, column 2: 'oops' is not a number"),
        ("ACC.csv", f"{T0},{T0},{T0}\n32,32,32\n1,2,63\n1,,63\n1,2,63\n",
         "ACC.csv row 4, column 2: empty field"),
        ("ACC.csv", f"{T0},{T0},{T0}\n32,32,32\n1,2,63\n1,2\n1,2,63\n",
         "ACC.csv row 4: 2 fields, expected 3"),
        ("ACC.csv", f"{T0},{T0},{T0}\n32,32,32\n1,2,63\n1,2,3,4\n1,2,63\n",
         "ACC.csv row 4: 4 fields, expected 3"),
        ("IBI.csv", f"{T0}, IBI\n1.0,0.8\nNA,0.8\n", "IBI.csv row 3, column 1: 'NA' is not a"),
    ],
)
def test_bad_token_message_names_folder_file_row_and_token(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    folder = tmp_path / "P9"
    folder.mkdir()
    (folder / name).write_text(text)
    with pytest.raises(ValueError) as err:
        load_recording(folder)
    msg = str(err.value)
    assert expected in msg, msg
    assert str(folder / name) in msg and "\n" not in msg


def test_trailing_blank_lines_are_not_rows(tmp_path: Path) -> None:
    (tmp_path / "EDA.csv").write_text(f"{T0}\n4\n0.1\n0.2\n\n\n")
    rec = load_recording(tmp_path)
    assert rec.channels[Channel.EDA].values.tolist() == [0.1, 0.2]
    assert rec.warnings == []


def test_file_cut_mid_line_keeps_valid_rows_and_warns(tmp_path: Path) -> None:
    folder = tmp_path / "P3"
    folder.mkdir()
    # ACC cut inside its 5th row (2 of 3 numbers), IBI inside a number ("0." of "0.8"), EDA
    # after what parses as a number (it may be "0.3" of "0.3125": dropped too), TEMP whole.
    (folder / "ACC.csv").write_text(f"{T0},{T0},{T0}\n32,32,32\n1,2,63\n3,4,62\n5,-")
    (folder / "IBI.csv").write_text(f"{T0}, IBI\n1.0,0.8\n1.8,0.8\n2.6,0.")
    (folder / "EDA.csv").write_text(f"{T0}\n4\n0.1\n0.2\n0.3")
    (folder / "TEMP.csv").write_text(f"{T0}\n4\n33.1\n33.2\n")
    rec = load_recording(folder)
    assert rec.channels[Channel.ACC].values.tolist() == [[1 / 64, 2 / 64, 63 / 64],
                                                         [3 / 64, 4 / 64, 62 / 64]]
    assert rec.channels[Channel.RR].values.tolist() == [800.0, 800.0]
    assert rec.channels[Channel.EDA].values.tolist() == [0.1, 0.2]
    assert rec.channels[Channel.TEMP].n_samples == 2
    text = "\n".join(rec.warnings)
    assert len(rec.warnings) == 3, text
    acc = next(w for w in rec.warnings if "ACC.csv" in w)
    assert f"{folder / 'ACC.csv'} row 5" in acc and "'5,-'" in acc and "dropped" in acc
    ibi = next(w for w in rec.warnings if "IBI.csv" in w)
    assert "row 4" in ibi and "'2.6,0.'" in ibi and "dropped" in ibi
    eda = next(w for w in rec.warnings if "EDA.csv" in w)
    assert "row 5" in eda and "'0.3'" in eda and "dropped" in eda and "kept the 2" in eda


def test_gzip_cut_short_keeps_what_it_holds(tmp_path: Path) -> None:
    folder = tmp_path / "P4"
    folder.mkdir()
    rows = "".join(f"{0.5 + i / 1000:.3f}\n" for i in range(4000))
    full = gzip.compress(f"{T0}\n4\n{rows}".encode())
    (folder / "EDA.csv.gz").write_bytes(full[: len(full) * 2 // 3])  # a copy that stopped
    rec = load_recording(folder)
    eda = rec.channels[Channel.EDA]
    assert 1000 < eda.n_samples < 4000
    expected = [0.5 + i / 1000 for i in range(eda.n_samples)]
    assert np.allclose(eda.values, expected, rtol=0, atol=1e-12)  # every kept row is whole
    assert any("EDA.csv.gz" in w and "ends early" in w for w in rec.warnings), rec.warnings
    (folder / "EDA.csv.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(ValueError, match=r"EDA\.csv\.gz: not a readable gzip file"):
        load_recording(folder)
    (folder / "EDA.csv.gz").unlink()
    (folder / "EDA.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(ValueError, match=r"EDA\.csv: not a text file"):
        load_recording(folder)


def test_no_recordings_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no recording folders"):
        find_recordings(tmp_path)  # empty
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "eda.CSV").write_text("1\n2\n")
    with pytest.raises(ValueError, match="no recording folders") as err:
        find_recordings(tmp_path)
    assert str(tmp_path) in str(err.value)
    # a dataset whose recordings are two levels down: the message points at the level below
    (tmp_path / "aerobic" / "S01").mkdir(parents=True)
    (tmp_path / "aerobic" / "S01" / "EDA.csv").write_text(f"{T0}\n4\n0.1\n")
    with pytest.raises(ValueError, match=r"aerobic") as err:
        find_recordings(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not a folder"):
        find_recordings(tmp_path / "notes.txt")


def test_labels_cut_mid_line_drop_the_partial_row(tmp_path: Path) -> None:
    (tmp_path / "TEMP.csv").write_text(f"{T0}\n4\n33\n")
    (tmp_path / "labels.csv").write_text(
        f"start_unix,end_unix,label,task\n{T0},{T0 + 60},non_stress,rest\n{T0 + 60},{T0 + 1}")
    rec = load_recording(tmp_path)
    assert [s.task for s in rec.labels] == ["rest"]
    assert len(rec.warnings) == 1 and "labels.csv row 3" in rec.warnings[0], rec.warnings
    (tmp_path / "labels.csv").write_text(
        f"start_unix,end_unix,label,task\n{T0},NA,non_stress,rest\n{T0 + 60},{T0 + 90},stress,x\n")
    with pytest.raises(ValueError, match=r"labels\.csv row 2: end_unix is not a number: 'NA'"):
        load_recording(tmp_path)
