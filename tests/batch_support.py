"""Helpers of the batch-tool tests: E4 recording folders cut from the shipped real excerpt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wearemo.batch import DEFAULT_EXCERPT
from wearemo.datasets import E4_FILES, Recording, load_recording
from wearemo.samples import Channel

EXCERPT_START_S = 1644227824  # first sample of the excerpt (unix s)


def write_e4(rec: Recording, folder: Path, *, shift_s: int = 0) -> Path:
    """Write ``rec`` as a plain-CSV E4 folder (with ``labels.csv``), times moved by ``shift_s``.

    Values are written with 17 significant digits, so the folder loads back to the same
    numbers (ACC back in the file's 1/64 g, IBI in seconds).
    """
    folder.mkdir(parents=True)
    shift_ns = shift_s * 10**9
    for ch, data in rec.channels.items():
        start_s = (int(data.times_ns[0]) + shift_ns) / 1e9
        if ch is Channel.RR:
            t_rel = (data.times_ns - data.times_ns[0]) / 1e9
            rows = [f"{t:.9f},{v / 1000:.17g}" for t, v in zip(t_rel, data.values, strict=True)]
            head = f"{start_s:.6f}, IBI"
        elif ch is Channel.ACC:
            rows = [",".join(f"{x * 64:.17g}" for x in row) for row in data.values]
            head = "\n".join(", ".join([f"{x:.6f}"] * 3) for x in (start_s, data.rate_hz))
        else:
            rows = [f"{v:.17g}" for v in data.values]
            head = f"{start_s:.6f}\n{data.rate_hz:.6f}"
        (folder / f"{E4_FILES[ch]}.csv").write_text(head + "\n" + "\n".join(rows) + "\n")
    if rec.labels:
        lines = ["start_unix,end_unix,label,task"]
        lines += [f"{(s.start_ns + shift_ns) / 1e9:.6f},{(s.end_ns + shift_ns) / 1e9:.6f},"
                  f"{s.label},{s.task}" for s in rec.labels]
        (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def excerpt_slice(folder: Path, start_s: float = 0, seconds: float | None = None, *,
                  shift_s: int = 0) -> Path:
    """``seconds`` of the real excerpt from ``start_s`` after its start, as an E4 folder."""
    rec = load_recording(DEFAULT_EXCERPT)
    if seconds is not None:
        t0 = int((EXCERPT_START_S + start_s) * 1e9)
        rec = rec.between(t0, t0 + int(seconds * 1e9))
    return write_e4(rec, folder, shift_s=shift_s)


def replace_row(path: Path, row: int, text: str) -> None:
    """Replace 1-based ``row`` of a CSV file with ``text``."""
    lines = path.read_text().split("\n")
    lines[row - 1] = text
    path.write_text("\n".join(lines))


def cut_mid_line(path: Path, keep_chars: int) -> str:
    """Cut a file ``keep_chars`` characters into its last line; returns the partial line."""
    lines = path.read_text().rstrip("\n").split("\n")
    lines[-1] = lines[-1][:keep_chars]
    path.write_text("\n".join(lines))
    return lines[-1]


def same_channels(a: Recording, b: Recording) -> bool:
    """Same channels with the same sample times and values."""
    return a.channels.keys() == b.channels.keys() and all(
        np.array_equal(a.channels[c].times_ns, b.channels[c].times_ns)
        and np.array_equal(a.channels[c].values, b.channels[c].values) for c in a.channels)
