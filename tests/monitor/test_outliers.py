"""outlier.onnx on window rows: the outlier rate rises on out-of-range traffic, not on holdout traffic."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlci.monitor.outliers import OutlierDetector, OutlierReport, outlier_reference, outlier_test
from mlci.monitor.service import with_evidence
from mlci.monitor.window import build_window

from .conftest import Project, predict_records, shifted


def rate_of(bc: Project, frame: pd.DataFrame) -> tuple[float, OutlierReport]:
    """The monitor's view of ``frame``: the profile's threshold and reference (its held-out rate)."""
    features = bc.manifest["schema"]["features"]
    window = build_window(predict_records(bc.artifact, frame, batch=5), features, "classification")
    profile = with_evidence(json.loads((bc.artifact / "profile.json").read_text()), bc.manifest)  # as the service does
    reference = outlier_reference(profile)
    detector = OutlierDetector(bc.artifact / "outlier.onnx", features, reference.threshold)
    flags, scores = detector.score(window.columns, batch=64)  # several batches: joined in order
    assert len(flags) == len(scores) == len(frame)
    return reference.rate, outlier_test(flags, reference.rate, reference=reference.source, scores=scores)


def test_holdout_traffic_keeps_the_held_out_outlier_rate(bc: Project) -> None:
    """The holdout rows are the ones the reference rate was measured on: the same rate, exactly."""
    held_out_rate, report = rate_of(bc, bc.holdout)
    assert report.status == "ok", report.message
    assert report.rate == pytest.approx(held_out_rate, abs=1e-9) and report.reference == "held-out rows"


def test_out_of_range_traffic_raises_the_outlier_rate(bc: Project) -> None:
    columns = [c for c in bc.holdout.columns][:15]
    held_out_rate, report = rate_of(bc, shifted(bc.holdout, columns, scale=3.0, shift_sd=4.0))
    assert report.status == "outliers", report.message
    assert report.rate > held_out_rate + 0.3 and report.p_value is not None and report.p_value < 1e-6
    assert report.score_median is not None


def test_binomial_test_needs_significance_and_a_real_rise() -> None:
    flags = np.zeros(100, dtype=bool)
    flags[:30] = True
    assert outlier_test(flags, 0.1).status == "outliers"  # 30 % vs 10 %: p ≈ 2e-8, +20 points
    flags[:] = False
    flags[:13] = True
    assert outlier_test(flags, 0.1).status == "ok"  # 13 % of 100 vs 10 %: p ≈ 0.2
    big = np.zeros(100_000, dtype=bool)
    big[:18_000] = True
    report = outlier_test(big, 0.1)
    assert (
        report.p_value is not None and report.p_value < 1e-9 and report.status == "ok"
    )  # +8 points: below the 10-point floor
    assert outlier_test(big, 0.1, min_increase=0.05).status == "outliers"


def test_small_window_gets_no_verdict() -> None:
    report = outlier_test(np.ones(20, dtype=bool), 0.1)
    assert (
        report.status == "insufficient" and report.message == "need ≥ 100 rows for an outlier verdict, got 20"
    )
    assert report.p_value is None


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_extreme_training_rates_do_not_crash(rate: float) -> None:
    assert outlier_test(np.zeros(200, dtype=bool), rate).status == "ok"
