"""The gate's fast statistics give bit for bit the verdict of the route before them (issue 13's leftover).

Three shortcuts, each exact: the two paired comparisons of one run share the bootstrap weights and the
candidate's resampled metric when they use the same rows; the trivial baseline's constant scores have ROC
AUC 0.5 without a sort; every other score vector is sorted once (not per call) and its AUC summed over the
positives from a cumulative sum of the negatives. The reference is the code as it was: ``reference_auc``
below is the grouped weighted AUC verbatim, and ``gate._Resamples(reuse=False)`` recomputes every vector.
Correctness only: the speed is bench/bench_gate.py's business.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlci.model.gate as gate
import mlci.model.stats as stats
from mlci.config import load_config
from mlci.model.gate import run_gate
from mlci.pipeline import run_pipeline

from .conftest import mixed_frame
from .test_gate_rows import species_frame

TOML = """
[model]
name = "speed"
task = "{task}"
[data]
path = "data.csv"
target = "{target}"
drop = {drop}
[split]
holdout = {holdout}
seed = {seed}
[estimator]
{estimator}
[evaluate]
latency_runs = 10
outlier_estimators = 10
[gate]
require_smoke = false
bootstrap = 200
min_compared_rows = 10
non_inferiority = {policy}
"""
LOGISTIC = 'class = "sklearn.linear_model.LogisticRegression"\nparams = {{ C = {c}, max_iter = 500 }}\nscale = true'
RIDGE = 'class = "sklearn.linear_model.Ridge"\nparams = {{ alpha = {c} }}'
CLASSIFICATION = "{ accuracy = 0.01, roc_auc = 0.01, f1 = 0.01, log_loss = 0.05 }"
TASKS: dict[str, dict[str, Any]] = {
    "binary": dict(task="classification", target="churn", drop='["spend"]', estimator=LOGISTIC,
                   policy=CLASSIFICATION, frame=mixed_frame),
    "multiclass": dict(task="classification", target="species", drop='["id"]', estimator=LOGISTIC,
                       policy=CLASSIFICATION, frame=species_frame),
    "regression": dict(task="regression", target="spend", drop='["churn"]', estimator=RIDGE,
                       policy="{ rmse = 0.1, mae = 0.1, r2 = 0.01 }", frame=mixed_frame),
}  # fmt: skip


def reference_auc(W: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The weighted ROC AUC as model/stats.py computed it before the shortcuts (verbatim)."""
    order = np.argsort(scores, kind="mergesort")
    s, pos = scores[order], positive[order]
    Ws = W[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    neg_w = np.add.reduceat(Ws * ~pos, starts, axis=1)
    pos_w = np.add.reduceat(Ws * pos, starts, axis=1)
    neg_before = np.cumsum(neg_w, axis=1) - neg_w
    numerator = np.sum(pos_w * (neg_before + 0.5 * neg_w), axis=1)
    denominator = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def build(root: Path, spec: dict[str, Any], *, seed: int, holdout: float, c: float) -> tuple[Path, Path]:
    """A project in ``root`` (the task's frame, the given split) built until evaluate: (mlci.toml, artifact)."""
    root.mkdir(parents=True)
    spec["frame"]().to_csv(root / "data.csv", index=False)
    fields = {k: v for k, v in spec.items() if k != "frame"}
    toml = TOML.format(**{**fields, "estimator": spec["estimator"].format(c=c)}, seed=seed, holdout=holdout)
    (root / "mlci.toml").write_text(toml)
    artifact = run_pipeline(load_config(root / "mlci.toml"), until="evaluate").artifact
    assert artifact is not None
    return root / "mlci.toml", artifact


@pytest.fixture(scope="module", params=sorted(TASKS))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per task: a candidate, production on the same split, production on another split (seed, fraction)."""
    spec, base = TASKS[request.param], tmp_path_factory.mktemp(request.param)
    cfg, candidate = build(base / "candidate", spec, seed=3, holdout=0.25, c=0.05)
    _, same = build(base / "same", spec, seed=3, holdout=0.25, c=1.0)
    _, other = build(base / "other", spec, seed=4, holdout=0.5, c=1.0)
    return {"config": cfg, "candidate": candidate, "same": same, "other": other}


def reference_verdict(monkeypatch: pytest.MonkeyPatch, models: dict[str, Path], production: str) -> dict[str, Any]:
    """The verdict on the route before the shortcuts: nothing reused, the grouped AUC for every score vector."""
    uncached = gate._Resamples
    with monkeypatch.context() as m:
        m.setattr(gate, "_Resamples", lambda: uncached(reuse=False))
        m.setattr(stats, "_auc_of", lambda positive, scores: partial(reference_auc, positive=positive, scores=scores))
        return run_gate(load_config(models["config"]), models["candidate"], models[production]).to_json()


@pytest.mark.parametrize("production", ["same", "other"])
def test_the_verdict_is_bit_identical_to_the_uncached_grouped_route(
    models: dict[str, Path], production: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every check's pass/fail, figure, interval, p-value and reason, and every metric, serialised with
    repr-exact floats: production sharing the candidate's split (both comparisons on the same rows, the
    cached route) and production on another split (the comparison on the intersection, recomputed)."""
    fast = run_gate(load_config(models["config"]), models["candidate"], models[production]).to_json()
    reference = reference_verdict(monkeypatch, models, production)
    kinds = [c["kind"] for c in fast["checks"]]
    assert kinds.count("baseline") >= 3 and kinds.count("comparison") >= 3, kinds  # both comparisons ran
    if production == "same":
        assert fast["compared_rows"] == fast["holdout_rows"]
    else:
        assert 10 <= fast["compared_rows"] < fast["holdout_rows"]
    assert json.dumps(fast, sort_keys=True) == json.dumps(reference, sort_keys=True)


def test_the_candidates_resampled_metrics_are_computed_once_when_the_rows_are_shared(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same split: one draw of the weights, three resampled vectors per metric (candidate, baseline,
    production) instead of two draws and four, and three sets of metrics (not four); another split: the
    candidate's vectors and metrics on the compared rows are its own (the cache is keyed on the rows,
    not the row count or an object)."""
    draws: list[int] = []
    resampled: list[int] = []
    figures: list[int] = []
    real_weights, real_metric, real_figures = gate.bootstrap_weights, gate.weighted_metric, gate._metrics

    def counting_weights(n: int, samples: int, seed: int) -> np.ndarray:
        draws.append(n)
        return real_weights(n, samples, seed)

    def counting_metric(*args: Any, **kwargs: Any) -> Any:
        fn = real_metric(*args, **kwargs)

        def counted(W: np.ndarray) -> np.ndarray:
            if W.shape[0] > 1:  # the resamples, not the point estimate
                resampled.append(W.shape[1])
            return fn(W)

        return counted

    def counting_figures(task: str, y: np.ndarray, *args: Any) -> dict[str, Any]:
        figures.append(len(y))
        return real_figures(task, y, *args)

    monkeypatch.setattr(gate, "bootstrap_weights", counting_weights)
    monkeypatch.setattr(gate, "_metrics", counting_figures)
    monkeypatch.setattr(gate, "weighted_metric", counting_metric)
    config = load_config(models["config"])
    metrics = len(set(config.gate.non_inferiority))
    same = run_gate(config, models["candidate"], models["same"])
    assert len(draws) == 1 and len(resampled) == 3 * metrics, (draws, len(resampled), metrics)
    assert figures == [same.holdout_rows] * 3, figures  # candidate, baseline, production
    draws.clear()
    resampled.clear()
    figures.clear()
    other = run_gate(config, models["candidate"], models["other"])
    assert draws == [other.holdout_rows, other.compared_rows], draws
    assert figures == [other.holdout_rows] * 2 + [other.compared_rows] * 2, figures
    assert len(resampled) == 4 * metrics and same.holdout_rows == other.holdout_rows


def test_the_cache_is_keyed_on_the_rows_not_their_number() -> None:
    """Two row selections of the same size are different rows: the second is computed, not served."""
    resamples = gate._Resamples()
    first, second = np.zeros(20, dtype=bool), np.zeros(20, dtype=bool)
    first[:5], second[5:10] = True, True
    a = resamples.candidate("roc_auc", first, 10, 0, lambda: np.array([1.0]))
    b = resamples.candidate("roc_auc", second, 10, 0, lambda: np.array([2.0]))
    again = resamples.candidate("roc_auc", first.copy(), 10, 0, lambda: np.array([3.0]))
    other_seed = resamples.candidate("roc_auc", first, 10, 1, lambda: np.array([4.0]))
    assert (a[0], b[0], again[0], other_seed[0]) == (1.0, 2.0, 1.0, 4.0)
    assert resamples.weights(7, 3, 0) is resamples.weights(7, 3, 0)
    assert np.array_equal(resamples.weights(7, 3, 0), stats.bootstrap_weights(7, 3, 0))


RNG = np.random.default_rng(5)
N = 300
POSITIVE = RNG.random(N) < 0.4


def weight_matrices() -> dict[str, np.ndarray]:
    """Bootstrap counts, ones, real-valued weights, and rows that hold no positive (or no negative)."""
    real = RNG.random((40, N))
    real[0, POSITIVE] = 0.0  # no positive weighted: NaN
    real[1, ~POSITIVE] = 0.0  # no negative weighted: NaN
    counts = stats.bootstrap_weights(N, 60, 2)
    counts[0, POSITIVE] = 0.0
    return {"counts": counts, "ones": np.ones((1, N)), "real": real}


@pytest.mark.parametrize("weights", ["counts", "ones", "real"])
@pytest.mark.parametrize("constant", [0.37, 1.0, np.float32(0.2)])
def test_a_constant_score_has_auc_one_half_bit_for_bit(weights: str, constant: float) -> None:
    W = weight_matrices()[weights]
    scores = np.full(N, constant)
    expected = reference_auc(W, POSITIVE, scores)
    got = stats._weighted_auc(W, POSITIVE, scores)
    assert np.array_equal(got, expected, equal_nan=True), (got[:5], expected[:5])
    assert set(np.unique(got[np.isfinite(got)])) == {0.5}
    if weights != "ones":
        assert np.isnan(got[0])


SCORES = {
    "continuous": RNG.random(N),
    "ties": RNG.random(N).round(1),
    "float32": RNG.random(N).astype(np.float32),
    "separating": np.where(POSITIVE, 0.9, 0.1),
}


@pytest.mark.parametrize("weights", ["counts", "ones"])
@pytest.mark.parametrize("scores", sorted(SCORES))
def test_the_sorted_auc_equals_the_grouped_auc_bit_for_bit_on_counts(weights: str, scores: str) -> None:
    """Count weights (what the gate uses): every partial sum is exact, so the results are identical."""
    W = weight_matrices()[weights]
    expected = reference_auc(W, POSITIVE, SCORES[scores])
    got = stats._weighted_auc(W, POSITIVE, SCORES[scores])
    assert np.array_equal(got, expected, equal_nan=True)


@pytest.mark.parametrize("scores", sorted(SCORES))
def test_the_sorted_auc_agrees_to_rounding_on_real_weights(scores: str) -> None:
    W = weight_matrices()["real"]
    expected = reference_auc(W, POSITIVE, SCORES[scores])
    got = stats._weighted_auc(W, POSITIVE, SCORES[scores])
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("positives", [0, N])
def test_no_positive_or_no_negative_row_gives_nan(positives: int) -> None:
    positive = np.arange(N) < positives
    W = weight_matrices()["counts"]
    assert np.isnan(stats._weighted_auc(W, positive, SCORES["ties"])).all()
    assert np.array_equal(stats._weighted_auc(W, positive, SCORES["ties"]), reference_auc(W, positive, SCORES["ties"]), equal_nan=True)


def test_nan_scores_take_the_grouped_route() -> None:
    scores = SCORES["ties"].copy()
    scores[::7] = np.nan
    W = weight_matrices()["counts"]
    assert np.array_equal(stats._weighted_auc(W, POSITIVE, scores), reference_auc(W, POSITIVE, scores), equal_nan=True)


def test_weighted_metric_roc_auc_matches_the_reference_for_three_classes() -> None:
    """Multiclass: the mean over the classes of one-vs-rest AUCs, each class's vector sorted once."""
    y = RNG.choice(["a", "b", "c"], N)
    probabilities = RNG.dirichlet(np.ones(3), N).round(2)
    probabilities[:, 2] = 1 / 3  # one constant column: the shortcut inside the mean
    W = weight_matrices()["counts"]
    got = stats.weighted_metric("roc_auc", y, probabilities=probabilities, classes=["a", "b", "c"])(W)
    expected = np.nanmean([reference_auc(W, y == c, probabilities[:, i]) for i, c in enumerate("abc")], axis=0)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("argv", [["--numerics", "fast"], ["--numerics"], ["portable"]])
def test_the_benchmark_refuses_an_unknown_argument_saying_what_it_takes(argv: list[str]) -> None:
    """bench/bench_gate.py checks its one option before it builds anything (or restarts itself)."""
    import subprocess
    import sys

    bench = Path(__file__).parents[1] / "bench" / "bench_gate.py"
    done = subprocess.run([sys.executable, str(bench), *argv], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    assert "expects no argument or `--numerics portable` / `--numerics native`" in done.stderr, done.stderr
    assert repr(" ".join(argv)) in done.stderr and "Run it as" in done.stderr


def reference_weights(n: int, samples: int, seed: int) -> np.ndarray:
    """bootstrap_weights as model/stats.py drew it before (verbatim): int64 draws, one flat bincount."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n), dtype=np.int64)
    draws += (np.arange(samples, dtype=np.int64) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=samples * n).reshape(samples, n).astype(np.float64)


@pytest.mark.parametrize(("n", "samples", "seed"), [(1, 3, 0), (2, 50, 1), (85, 200, 0), (10_024, 40, 7), (65_537, 3, 9)])
def test_the_bootstrap_weights_are_the_draws_as_before(n: int, samples: int, seed: int) -> None:
    got = stats.bootstrap_weights(n, samples, seed)
    assert got.dtype == np.float64 and got.shape == (samples, n)
    assert np.array_equal(got, reference_weights(n, samples, seed))
