"""Data and prediction drift: chi-square tests against the artifact's profile, corrected, with effect sizes.

Every feature gets a distribution test on the profile's bins (numeric: the interior quantile edges;
categorical: the profiled categories plus "other", where unseen categories land) and a missing-rate
test. Predictions get the same: label fractions and probability bins (classification) or the value
bins (regression).

Numeric values are binned exactly as the profile was built (:func:`mlci.model.stats.bin_counts`):
rounded to float32, the type the model reads, and a value equal to an edge goes above it. The profile's
edges lie between distinct training values and are stored exactly, so a point mass (values in tenths,
counts, ratings) cannot change bins between training and production. Profiles from before that
(``schema_version`` 1) stored edges rounded to 9 significant digits, which moved point masses sitting on
an edge to the neighbouring bin and flagged drift on unchanged traffic; they still load, their edges are
snapped back to float32 (9 digits identify a float32 exactly) and the verdict says so.

Why a test of homogeneity and not goodness of fit: the profile's fractions are themselves estimates
from ``rows`` training rows. Treating them as exact (``scipy.stats.chisquare``) inflates the statistic
by about ``1 + n/rows``, so a window of 5,000 rows against a 400-row profile would flag drift on
traffic drawn from the training distribution itself. ``scipy.stats.chi2_contingency`` on
[window counts; profile fractions x profile rows] accounts for both samples. A profile without a
row count falls back to goodness of fit.

Sparse bins are pooled (adjacent bins for numeric features, the rarest categories into "other") until
every expected count is at least ``min_expected``. Drift needs both a corrected p-value below
``alpha`` (Benjamini-Hochberg across every test of the window, or Holm) *and* an effect (PSI, or the
absolute change of the missing rate) at least the threshold, so huge windows do not flag trivial
shifts; Jensen-Shannon distance is reported alongside. Below ``min_rows`` rows there is no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mlci.model.stats import EXACT_EDGES_VERSION, bin_counts, binned_values
from mlci.monitor.errors import MonitorError

__all__ = [
    "DriftReport",
    "DriftSettings",
    "OLD_PROFILE_NOTE",
    "TestResult",
    "adjust_p_values",
    "compare_counts",
    "detect_drift",
    "rounded_edges",
]

_EPS = 1e-4  # PSI smoothing for empty bins
OLD_PROFILE_NOTE = (
    "profile.json is schema_version 1 (bin edges rounded to 9 digits by an older mlci): edges snapped back to "
    "float32; rebuild the artifact (mlci run) to store exact edges"
)


@dataclass(frozen=True)
class DriftSettings:
    """Thresholds of the drift checks."""

    alpha: float = 0.05
    min_rows: int = 100
    psi_threshold: float = 0.1
    missing_threshold: float = 0.05
    min_expected: float = 5.0
    correction: str = "bh"

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise MonitorError(f"alpha is {self.alpha}; expected a probability strictly between 0 and 1.")
        if self.correction not in ("bh", "by", "holm", "none"):
            raise MonitorError(
                f"correction is {self.correction!r}; expected one of 'bh', 'by', 'holm', 'none'."
            )
        if self.min_rows < 1:
            raise MonitorError(f"min_rows is {self.min_rows}; expected at least 1.")


@dataclass
class TestResult:
    """One test: its statistic, raw and corrected p-value, effect sizes and verdict."""

    name: str
    kind: str
    rows: int
    statistic: float | None
    p_value: float | None
    psi: float | None = None
    js: float | None = None
    effect: float | None = None
    bins: int = 0
    p_adjusted: float | None = None
    drifted: bool = False
    note: str = ""
    __test__ = False  # not a pytest class


@dataclass
class DriftReport:
    """The verdict on one window: ``status`` is ``ok``, ``drift`` or ``insufficient``."""

    status: str
    rows: int
    min_rows: int
    message: str
    tests: list[TestResult] = field(default_factory=list)
    drifted_features: list[str] = field(default_factory=list)
    prediction_drift: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON form (floats rounded for reading)."""
        return asdict(self)


def _pool(weights: np.ndarray, threshold: float, ordered: bool) -> list[list[int]]:
    """Groups of bin indices whose weight (smallest expected count) reaches ``threshold``."""
    if ordered:
        groups: list[list[int]] = []
        current: list[int] = []
        acc = 0.0
        for i, w in enumerate(weights):
            current.append(i)
            acc += w
            if acc >= threshold:
                groups.append(current)
                current, acc = [], 0.0
        if current:
            if groups:
                groups[-1].extend(current)
            else:
                groups.append(current)
        return groups
    order = np.argsort(-weights, kind="stable")
    kept = [[int(i)] for i in order if weights[i] >= threshold]
    rest = [int(i) for i in order if weights[i] < threshold]
    if rest:
        if sum(weights[rest]) >= threshold or not kept:
            kept.append(sorted(rest))
        else:
            kept[-1].extend(rest)
    return kept


def _psi(observed: np.ndarray, expected: np.ndarray) -> float:
    o = np.clip(observed, _EPS, None)
    e = np.clip(expected, _EPS, None)
    o, e = o / o.sum(), e / e.sum()
    return float(np.sum((o - e) * np.log(o / e)))


def compare_counts(
    observed: np.ndarray,
    reference: np.ndarray,
    reference_rows: float | None,
    *,
    ordered: bool,
    min_expected: float = 5.0,
) -> tuple[float | None, float | None, float, float, int]:
    """(statistic, p-value, PSI, JS distance, bins used) for window counts vs reference fractions.

    With ``reference_rows`` a chi-square test of homogeneity on both samples; without, goodness of fit.
    The p-value is None when pooling leaves fewer than two bins (nothing to compare).
    """
    observed = np.asarray(observed, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref / ref.sum() if ref.sum() > 0 else ref
    n = observed.sum()
    if reference_rows:
        ref_counts = ref * reference_rows
        weights = (observed + ref_counts) * min(n, reference_rows) / (n + reference_rows)
    else:
        ref_counts = ref * n
        weights = ref_counts
    groups = _pool(weights, min_expected, ordered)
    obs_g = np.array([observed[g].sum() for g in groups])
    ref_g = np.array([ref_counts[g].sum() for g in groups])
    psi = _psi(obs_g / max(n, 1), ref_g / max(ref_g.sum(), 1e-12))
    with np.errstate(invalid="ignore"):  # equal distributions: the square root of a rounding error below 0
        js = float(jensenshannon(obs_g + 1e-12, ref_g + 1e-12, base=2))
    js = 0.0 if np.isnan(js) else js
    if len(groups) < 2 or n == 0:
        return None, None, psi, js, len(groups)
    if reference_rows:
        table = np.vstack([obs_g, ref_g])
        result = stats.chi2_contingency(table, correction=False)
        return float(result.statistic), float(result.pvalue), psi, js, len(groups)
    result = stats.chisquare(obs_g, f_exp=ref_g)
    return float(result.statistic), float(result.pvalue), psi, js, len(groups)


def _missing_test(
    name: str, kind: str, missing: int, n: int, ref_rate: float, ref_rows: float | None
) -> TestResult:
    rate = missing / n if n else 0.0
    if ref_rows:
        ref_missing = round(ref_rate * ref_rows)
        table = [[missing, n - missing], [ref_missing, round(ref_rows) - ref_missing]]
        p = float(stats.fisher_exact(table).pvalue)
    else:
        p = float(stats.binomtest(missing, n, ref_rate).pvalue) if 0 < ref_rate < 1 or missing else 1.0
    return TestResult(
        name,
        kind,
        n,
        None,
        p,
        effect=abs(rate - ref_rate),
        bins=2,
        note=f"missing rate {rate:.4f} vs {ref_rate:.4f}",
    )


def rounded_edges(profile: Mapping[str, Any]) -> bool:
    """Whether the profile predates exact edges (``schema_version`` 1: edges rounded to 9 significant digits)."""
    return int(profile.get("schema_version", 1)) < EXACT_EDGES_VERSION


def _numeric_counts(values: np.ndarray, profile: Mapping[str, Any], snap: bool) -> np.ndarray:
    """Window counts in the profile's bins, with the values rounded to float32 as at training.

    ``snap``: the edges were rounded to 9 significant digits, which identify a float32 exactly, so an edge
    cut at a training value (a point mass) comes back as that value when rounded to float32."""
    edges = np.asarray(profile["edges"], dtype=np.float64)
    if snap:
        edges = binned_values(edges)
    return bin_counts(values, edges)


def _categorical_counts(values: np.ndarray, profile: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    cats = list(profile["frequencies"])
    uniq, counts = np.unique(values.astype(str), return_counts=True)
    seen = dict(zip(uniq.tolist(), counts.tolist(), strict=True))
    observed = [seen.pop(c, 0) for c in cats]
    observed.append(sum(seen.values()))  # unseen categories are "other"
    reference = [*profile["frequencies"].values(), profile.get("other", 0.0)]
    return np.asarray(observed, dtype=np.float64), np.asarray(reference, dtype=np.float64)


def _distribution(
    name: str,
    kind: str,
    counts: np.ndarray,
    reference: np.ndarray,
    ref_rows: float | None,
    ordered: bool,
    settings: DriftSettings,
) -> TestResult:
    n = int(counts.sum())
    if n < settings.min_rows:
        return TestResult(
            name, kind, n, None, None, note=f"need ≥ {settings.min_rows} present values, got {n}"
        )
    stat, p, psi, js, bins = compare_counts(
        counts, reference, ref_rows, ordered=ordered, min_expected=settings.min_expected
    )
    note = "" if p is not None else "fewer than two bins after pooling sparse ones"
    return TestResult(name, kind, n, stat, p, psi=psi, js=js, effect=psi, bins=bins, note=note)


def _feature_tests(
    name: str,
    column: np.ndarray,
    profile: Mapping[str, Any],
    ref_rows: float | None,
    s: DriftSettings,
    snap: bool,
) -> list[TestResult]:
    ref_missing = float(profile.get("missing_rate", 0.0))
    present_rows = ref_rows * (1 - ref_missing) if ref_rows else None
    if profile["kind"] == "numeric":
        missing_mask = np.isnan(column)
        present = column[~missing_mask]
        tests = [_missing_test(name, "missing", int(missing_mask.sum()), len(column), ref_missing, ref_rows)]
        if profile.get("fractions"):
            counts = _numeric_counts(present, profile, snap)
            tests.append(
                _distribution(
                    name, "distribution", counts, np.asarray(profile["fractions"]), present_rows, True, s
                )
            )
        return tests
    missing_mask = column == ""
    tests = [_missing_test(name, "missing", int(missing_mask.sum()), len(column), ref_missing, ref_rows)]
    counts, reference = _categorical_counts(column[~missing_mask], profile)
    tests.append(_distribution(name, "distribution", counts, reference, present_rows, False, s))
    return tests


def _prediction_tests(
    profile: Mapping[str, Any],
    labels: np.ndarray | None,
    probabilities: np.ndarray | None,
    values: np.ndarray | None,
    ref_rows: float | None,
    s: DriftSettings,
    snap: bool,
) -> list[TestResult]:
    tests: list[TestResult] = []
    if profile.get("kind") == "classification":
        classes = list(profile["label_fractions"])
        if labels is not None:
            observed = np.array(
                [(labels == c).sum() for c in classes] + [int((~np.isin(labels, classes)).sum())],
                dtype=np.float64,
            )
            reference = np.array([*profile["label_fractions"].values(), 0.0])
            tests.append(
                _distribution("prediction:label", "prediction", observed, reference, ref_rows, False, s)
            )
        if probabilities is not None and probabilities.ndim == 2 and probabilities.shape[1] == len(classes):
            edges = np.asarray(profile["probability_edges"], dtype=np.float64)
            # With two classes one column determines the other: test it once.
            chosen = classes[1:] if len(classes) == 2 else classes
            for c in chosen:
                counts = bin_counts(probabilities[:, classes.index(c)], edges)  # fixed edges: never snapped
                reference = np.asarray(profile["probability_fractions"][c])
                tests.append(
                    _distribution(f"prediction:p({c})", "prediction", counts, reference, ref_rows, True, s)
                )
    elif values is not None and profile.get("fractions"):
        counts = _numeric_counts(values[~np.isnan(values)], profile, snap)
        tests.append(
            _distribution(
                "prediction:value", "prediction", counts, np.asarray(profile["fractions"]), ref_rows, True, s
            )
        )
    return tests


def adjust_p_values(p_values: Sequence[float], method: str) -> np.ndarray:
    """Multiple-testing correction: 'bh'/'by' via scipy.stats.false_discovery_control, 'holm', or 'none'."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0 or method == "none":
        return p
    if method in ("bh", "by"):
        return np.asarray(stats.false_discovery_control(p, method=method))
    order = np.argsort(p)
    m = p.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])  # Holm's step-down, kept monotone
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def detect_drift(
    profile: Mapping[str, Any],
    columns: Mapping[str, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    values: np.ndarray | None = None,
    settings: DriftSettings | None = None,
) -> DriftReport:
    """Test every profiled feature and the predictions of one window; see the module docstring."""
    settings = settings if settings is not None else DriftSettings()
    features = profile.get("features", {})
    missing = sorted(set(features) - set(columns))
    if missing:
        raise MonitorError(
            f"The window has no column for {', '.join(missing)}; the profile expects {', '.join(features)}."
        )
    rows = len(next(iter(columns.values()))) if columns else 0
    if rows < settings.min_rows:
        return DriftReport(
            "insufficient",
            rows,
            settings.min_rows,
            f"need ≥ {settings.min_rows} rows for a drift verdict, got {rows}",
        )
    ref_rows = profile.get("rows")
    snap = rounded_edges(profile)
    tests: list[TestResult] = []
    for name, feature_profile in features.items():
        tests.extend(
            _feature_tests(name, np.asarray(columns[name]), feature_profile, ref_rows, settings, snap)
        )
    # The rows the prediction reference was built from (profile 3 says so; before, baseline_metrics did).
    prediction_rows = profile.get("prediction", {}).get("rows", profile.get("baseline_metrics", {}).get("rows"))
    tests.extend(
        _prediction_tests(
            profile.get("prediction", {}), labels, probabilities, values, prediction_rows, settings, snap
        )
    )
    tested = [t for t in tests if t.p_value is not None]
    for t, adjusted in zip(
        tested, adjust_p_values([t.p_value for t in tested], settings.correction), strict=True
    ):  # type: ignore[misc]
        t.p_adjusted = float(adjusted)
        threshold = settings.missing_threshold if t.kind == "missing" else settings.psi_threshold
        t.drifted = bool(adjusted < settings.alpha and (t.effect or 0.0) >= threshold)
    drifted = sorted({t.name for t in tests if t.drifted and t.kind != "prediction"})
    prediction_drift = any(t.drifted for t in tests if t.kind == "prediction")
    status = "drift" if drifted or prediction_drift else "ok"
    what = ", ".join(drifted) or "none"
    message = (
        f"{len(tested)} tests on {rows} rows ({settings.correction} correction); drifted features: {what}"
        + ("; prediction distribution drifted" if prediction_drift else "")
        + (f"; {OLD_PROFILE_NOTE}" if snap else "")
    )
    return DriftReport(status, rows, settings.min_rows, message, tests, drifted, prediction_drift)
