"""Signal sources for the virtual wearable: a recorded Empatica E4 folder, or a simulation.

Both expose the same shape: per-channel regularly sampled arrays (:class:`RegularSignal`, in
the canonical units of ``wearemo.samples.CHANNEL_UNITS``), an optional device heart-rate series
and the beats (:class:`BeatSeries`) whose intervals the wearable sends as 0x2A37 RR intervals.
Times are seconds relative to the source start.

This reader is deliberately small and self-contained: ``firmware_bridge`` must not import
``wearemo.datasets``.

Example
-------
>>> src = SimulatedSource(seed=1, duration_s=20, heart_rate_bpm=60)
>>> sorted(c.value for c in src.signals), src.signals[Channel.PPG].rate_hz
(['acc', 'eda', 'ppg', 'temp'], 64.0)
>>> 55 < 60_000 / float(src.beats.ibi_ms.mean()) < 65
True
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wearemo.samples import CHANNEL_AXES, Channel

__all__ = ["BeatSeries", "RecordingSource", "RegularSignal", "SignalSource", "SimulatedSource"]


@dataclass(frozen=True, eq=False)
class RegularSignal:
    """A regularly sampled channel: sample ``i`` is at ``start_offset_s + i / rate_hz``.

    ``values`` has shape ``(n,)``, or ``(n, 3)`` for acc, in the channel's canonical unit.
    """

    values: np.ndarray = field(repr=False)
    rate_hz: float
    start_offset_s: float = 0.0

    @property
    def n_samples(self) -> int:
        """Number of samples."""
        return int(self.values.shape[0])

    @property
    def end_s(self) -> float:
        """Time just after the last sample (start + n / rate)."""
        return self.start_offset_s + self.n_samples / self.rate_hz

    def sample_time_s(self, i: int) -> float:
        """Time of sample ``i`` in seconds from the source start."""
        return self.start_offset_s + i / self.rate_hz


@dataclass(frozen=True, eq=False)
class BeatSeries:
    """Inter-beat intervals, each stamped at the beat that closes it (seconds from start)."""

    end_s: np.ndarray = field(repr=False)
    ibi_ms: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.end_s.shape[0])


@dataclass(eq=False)
class SignalSource:
    """What a virtual wearable replays (base of the recorded and simulated sources).

    Attributes
    ----------
    signals
        Raw channels (``ppg``, ``eda``, ``temp``, ``acc``; any subset) in canonical units.
    hr
        Device heart rate (bpm), or None.
    beats
        Beat intervals for 0x2A37 RR, or None.
    start_unix
        Unix time of the source start, or None for a simulation (the wearable uses "now").
    """

    signals: dict[Channel, RegularSignal]
    hr: RegularSignal | None = None
    beats: BeatSeries | None = None
    start_unix: float | None = None

    @property
    def duration_s(self) -> float:
        """End of the last sample or beat, seconds from the start."""
        ends = [s.end_s for s in self.signals.values()]
        if self.hr is not None:
            ends.append(self.hr.end_s)
        if self.beats is not None and len(self.beats):
            ends.append(float(self.beats.end_s[-1]))
        return max(ends, default=0.0)

    def cut(self, duration_s: float) -> SignalSource:
        """A copy holding only the samples and beats before ``duration_s`` (source time).

        A replay cut this way ends by itself, after exactly the samples it holds, where a
        wall-clock stop would depend on how far ahead the wearable had sent.

        Example
        -------
        >>> src = SimulatedSource(seed=1, duration_s=20).cut(10.5)
        >>> src.signals[Channel.PPG].n_samples, src.signals[Channel.EDA].n_samples
        (672, 42)
        """

        def keep(sig: RegularSignal) -> RegularSignal:
            n = int(np.clip(np.ceil((duration_s - sig.start_offset_s) * sig.rate_hz - 1e-9),
                            0, sig.n_samples))
            return RegularSignal(sig.values[:n], sig.rate_hz, sig.start_offset_s)

        beats = None
        if self.beats is not None:
            m = self.beats.end_s < duration_s
            beats = BeatSeries(self.beats.end_s[m], self.beats.ibi_ms[m])
        return SignalSource(
            signals={ch: keep(sig) for ch, sig in self.signals.items()},
            hr=None if self.hr is None else keep(self.hr),
            beats=beats,
            start_unix=self.start_unix,
        )


_E4_FILES: dict[Channel, str] = {
    Channel.PPG: "BVP", Channel.EDA: "EDA", Channel.TEMP: "TEMP", Channel.ACC: "ACC",
}


def _read_text(folder: Path, stem: str) -> tuple[Path, str] | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        path = folder / name
        if path.exists():
            raw = path.read_bytes()
            if name.endswith(".gz"):
                raw = gzip.decompress(raw)
            return path, raw.decode("utf-8")
    return None


def _parse_numbers(path: Path, text: str, ncols: int) -> np.ndarray:
    if not text.strip():
        return np.zeros((0, ncols))
    try:
        arr = np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path.name}: malformed row ({e})") from None
    if arr.size == 0:
        return np.zeros((0, ncols))
    if arr.shape[1] != ncols:
        raise ValueError(f"{path.name}: expected {ncols} column(s), got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        row = int(np.argmin(np.all(np.isfinite(arr), axis=1)))
        raise ValueError(f"{path.name}: non-finite value in data row {row}")
    return arr


def _read_regular(path: Path, text: str, ncols: int) -> tuple[float, float, np.ndarray]:
    lines = text.split("\n", 2)
    if len(lines) < 2 or not lines[1].strip():
        raise ValueError(f"{path.name}: needs a start-time row and a rate row")
    try:
        start = float(lines[0].split(",")[0])
        rate = float(lines[1].split(",")[0])
    except ValueError:
        raise ValueError(f"{path.name}: first two rows must be the start time and rate") from None
    if not (np.isfinite(rate) and rate > 0):
        raise ValueError(f"{path.name}: sampling rate must be positive, got {rate}")
    return start, rate, _parse_numbers(path, lines[2] if len(lines) > 2 else "", ncols)


class RecordingSource(SignalSource):
    """An Empatica E4 folder: ``BVP/EDA/TEMP/ACC/HR/IBI.csv`` (or ``.csv.gz``), any subset.

    E4 layout: row 0 the start (unix s), row 1 the rate (Hz), then samples; ACC in 1/64 g
    (converted to g); IBI: row ``start, IBI`` then ``t_rel_s, ibi_s`` rows. Files may start
    at different times; ``start_unix`` is the earliest and each channel keeps its offset.

    Parameters
    ----------
    path
        The folder.

    Raises
    ------
    FileNotFoundError
        No recognised file in the folder.
    ValueError
        A malformed file (names the file).

    Example
    -------
    >>> from pathlib import Path
    >>> src = RecordingSource(Path(__file__).parent / "data" / "stress-predict-S02-excerpt")
    >>> acc = src.signals[Channel.ACC]
    >>> src.start_unix, src.signals[Channel.PPG].rate_hz, acc.values[0].tolist()
    (1644227824.0, 64.0, [-1.03125, -0.171875, 0.0])
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        starts: dict[str, float] = {}
        raw: dict[Channel, tuple[float, float, np.ndarray]] = {}
        for channel, stem in [*_E4_FILES.items(), (Channel.HR, "HR")]:
            found = _read_text(path, stem)
            if found is None:
                continue
            file_path, text = found
            start, rate, arr = _read_regular(file_path, text, CHANNEL_AXES[channel])
            if channel is Channel.ACC:
                arr = arr / 64.0  # E4 accelerometer counts are 1/64 g
            raw[channel] = (start, rate, arr if channel is Channel.ACC else arr[:, 0])
            starts[stem] = start
        ibi = _read_text(path, "IBI")
        ibi_rows: np.ndarray | None = None
        if ibi is not None:
            file_path, text = ibi
            head, _, rest = text.partition("\n")
            try:
                starts["IBI"] = float(head.split(",")[0])
            except ValueError:
                raise ValueError(f"{file_path.name}: first row must be 'start, IBI'") from None
            ibi_rows = _parse_numbers(file_path, rest, 2)
            if np.any(np.diff(ibi_rows[:, 0]) <= 0):
                raise ValueError(f"{file_path.name}: beat times must strictly increase")
            if np.any(ibi_rows[:, 1] <= 0):
                raise ValueError(f"{file_path.name}: intervals must be positive")
        if not starts:
            raise FileNotFoundError(f"{path}: no E4 file (BVP, EDA, TEMP, ACC, HR, IBI .csv[.gz])")
        start_unix = min(starts.values())
        signals: dict[Channel, RegularSignal] = {
            ch: RegularSignal(arr, rate, start - start_unix)
            for ch, (start, rate, arr) in raw.items() if ch is not Channel.HR
        }
        hr = None
        if Channel.HR in raw:
            start, rate, arr = raw[Channel.HR]
            hr = RegularSignal(arr, rate, start - start_unix)
        beats = None
        if ibi_rows is not None:
            shift = starts["IBI"] - start_unix
            beats = BeatSeries(ibi_rows[:, 0] + shift, ibi_rows[:, 1] * 1000.0)
        super().__init__(signals=signals, hr=hr, beats=beats, start_unix=start_unix)
        self.path = path


class SimulatedSource(SignalSource):
    """A seeded NeuroKit2 simulation with known ground truth.

    PPG 64 Hz (``nk.ppg_simulate``), EDA 4 Hz with exactly ``scr_number`` skin-conductance
    responses (``nk.eda_simulate``), constant skin temperature with small noise (4 Hz), a
    resting accelerometer (0, 0, 1) g with small noise (32 Hz). The beats are the simulator's
    own pulse onsets (recomputed with the same random stream), so their intervals are the true
    RR intervals; the 1 Hz heart rate is ``60000 / last RR``.

    Parameters
    ----------
    seed
        Random seed (same seed → same signals).
    duration_s
        Length in seconds.
    heart_rate_bpm
        Mean heart rate.
    scr_number
        Number of SCRs in the EDA.
    temp_c
        Mean skin temperature.
    ibi_randomness
        NeuroKit2's beat-to-beat randomness (0..0.99).

    Example
    -------
    >>> SimulatedSource(seed=3, duration_s=10).signals[Channel.EDA].n_samples
    40
    """

    def __init__(self, *, seed: int, duration_s: float, heart_rate_bpm: float = 70.0,
                 scr_number: int = 2, temp_c: float = 33.5, ibi_randomness: float = 0.1) -> None:
        import neurokit2 as nk  # heavy import, only needed for simulation
        from neurokit2.misc import check_random_state
        from neurokit2.ppg.ppg_simulate import _frequency_modulation, _random_x_offset

        if duration_s < 5:
            raise ValueError(f"duration_s must be at least 5 s, got {duration_s}")
        ppg_rate, slow_rate, acc_rate = 64, 4, 32
        frequency_modulation = 0.2
        ppg = nk.ppg_simulate(
            duration=duration_s, sampling_rate=ppg_rate, heart_rate=heart_rate_bpm,
            frequency_modulation=frequency_modulation, ibi_randomness=ibi_randomness,
            motion_amplitude=0.0, powerline_amplitude=0.0, burst_number=0, random_state=seed,
        )
        # Replay the simulator's first random draws to recover its pulse onsets (true beats);
        # tests/bridge/test_virtual_wearable_sources.py checks they match the waveform's peaks.
        rng = check_random_state(seed)
        period = 60.0 / heart_rate_bpm
        n_period = int(np.floor(duration_s / period))
        periods = np.ones(n_period) * period
        onsets = np.cumsum(periods)
        onsets -= onsets[0]
        periods, onsets = _frequency_modulation(periods, onsets, 0.05, frequency_modulation)
        onsets = _random_x_offset(onsets, ibi_randomness, rng)
        onsets = onsets[onsets < duration_s]
        beats = BeatSeries(onsets[1:], np.diff(onsets) * 1000.0)

        n_slow = round(duration_s * slow_rate)
        eda = nk.eda_simulate(duration=duration_s, length=n_slow, sampling_rate=slow_rate,
                              scr_number=scr_number, noise=0.005, drift=-0.002,
                              random_state=seed)
        gen = np.random.default_rng(seed)
        temp = temp_c + gen.normal(0.0, 0.01, n_slow)
        n_acc = round(duration_s * acc_rate)
        acc = np.tile([0.0, 0.0, 1.0], (n_acc, 1)) + gen.normal(0.0, 0.01, (n_acc, 3))

        hr_times = np.arange(1.0, duration_s)
        idx = np.searchsorted(beats.end_s, hr_times, side="right") - 1
        last_rr = beats.ibi_ms[np.clip(idx, 0, len(beats) - 1)]
        hr = RegularSignal(60_000.0 / last_rr, 1.0, 1.0)
        super().__init__(
            signals={
                Channel.PPG: RegularSignal(np.asarray(ppg, dtype=np.float64), float(ppg_rate)),
                Channel.EDA: RegularSignal(np.asarray(eda, dtype=np.float64)[:n_slow],
                                           float(slow_rate)),
                Channel.TEMP: RegularSignal(temp, float(slow_rate)),
                Channel.ACC: RegularSignal(acc, float(acc_rate)),
            },
            hr=hr, beats=beats, start_unix=None,
        )
        self.seed = seed
        self.heart_rate_bpm = heart_rate_bpm
        self.scr_number = scr_number
