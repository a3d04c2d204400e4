"""Simulated wearable uploads shared by the pipeline and API tests (NeuroKit2 ground truth)."""

from __future__ import annotations

import neurokit2 as nk

from wearemo.samples import SampleBatch

T0 = 1_700_000_000_000_000_000  # a multiple of the 5-s step: windows end at T0 + 60 s, +65 s...
S = 1_000_000_000


def sim_batches(
    subject: str, duration_s: int, *, hr_bpm: float, chunk_s: int = 10, seed: int = 1
) -> list[SampleBatch]:
    """PPG (64 Hz, ``hr_bpm``) and EDA (4 Hz) in ``chunk_s`` batches, interleaved as a wearable
    sends them."""
    ppg = nk.ppg_simulate(duration=duration_s, sampling_rate=64, heart_rate=hr_bpm,
                          random_state=seed)
    eda = nk.eda_simulate(duration=duration_s, sampling_rate=4, scr_number=6,
                          random_state=seed) + 3.0
    out = []
    for k in range(duration_s // chunk_s):
        for channel, rate, sig in (("ppg", 64, ppg), ("eda", 4, eda)):
            n = rate * chunk_s
            out.append(SampleBatch(
                batch_id=f"{subject}:{channel}:{k}", subject_id=subject, device_id="dev1",
                channel=channel, start_ns=T0 + k * chunk_s * S, rate_hz=float(rate),
                values=sig[k * n:(k + 1) * n].tolist()))
    return out
