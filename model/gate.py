"""Gate stage: judge a candidate against the policy, a trivial baseline, and production on unseen rows.

A candidate is blocked only when it is worse *with confidence*: for accuracy, McNemar's exact test on
the rows where the two models disagree is significant at ``alpha`` and the observed drop exceeds the
non-inferiority margin; for the other metrics, the whole paired-bootstrap interval of the improvement
lies below ``-margin``. ``require_better`` turns a metric into a superiority check (interval above 0, or
McNemar significant in the candidate's favour).

Unless ``[gate] baseline = "none"``, the candidate must also be *better with confidence* than a trivial
model fitted on its own training rows (the majority class with the class frequencies as probabilities,
or the training mean), on its holdout, with the same paired tests: a model that learned nothing never
passes, first release or not.

The comparison with production runs on the rows *neither* model trained on: each artifact records how
its split was made (scheme, seed, fraction, the columns hashed), so the gate recomputes both holdouts on
the current data file and intersects them. Each model sees those rows through its own feature schema,
so a retyped, added or removed feature compares fine. Production artifacts from before the split was a
function of raw rows (no ``data.split`` in the manifest) are recomputed with their old, feature-typed
scheme; the verdict says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from mlci.config import Config, GateConfig
from mlci.errors import DataError
from mlci.model.artifact import evidence_of, verify_artifact
from mlci.model.data import (
    LEGACY_SPLIT_SCHEME,
    SPLIT_SCHEME,
    Dataset,
    Schema,
    legacy_holdout_mask,
    split_mask,
    typed_features,
    typed_target,
)
from mlci.model.evaluate import classification_metrics, regression_metrics
from mlci.model.onnxio import Prediction, feeds_from_frame, open_session, predict
from mlci.model.stats import bootstrap_weights, mcnemar, paired_bootstrap, weighted_metric

__all__ = ["Check", "Verdict", "run_gate", "verdict_markdown"]

VERDICT_FILE = "verdict.json"
_SUMMARY_METRICS = ("accuracy", "f1", "roc_auc", "log_loss", "rmse", "mae", "r2")
# What the trivial baseline must be beaten on when the policy compares no metric at all.
_BASELINE_FALLBACK = {"classification": "accuracy", "regression": "r2"}


@dataclass(frozen=True)
class Check:
    """One line of the verdict."""

    name: str
    kind: str  # absolute | baseline | comparison | parity | smoke | budget
    passed: bool
    figure: float | None
    threshold: float | None
    reason: str
    p_value: float | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True)
class Verdict:
    """Pass/fail with every check; ``first_run`` when there was no production model to compare with.

    ``holdout_rows`` are the candidate's holdout (absolute and baseline checks); ``compared_rows`` the rows
    neither the candidate nor production trained on (the comparison), None without a comparison.
    ``metrics`` holds the figures behind the checks, per model and row set.
    """

    passed: bool
    candidate: str
    production: str | None
    first_run: bool
    holdout_rows: int
    data_sha256: str
    checks: list[Check] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)
    compared_rows: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The verdict.json document (no timestamps: the same inputs give the same verdict)."""
        out = asdict(self)
        out["schema_version"] = 2
        for check in out["checks"]:
            if check["interval"] is not None:
                check["interval"] = list(check["interval"])
        return out


class _CannotCompare(Exception):
    """Production cannot be evaluated on rows it did not train on; the message says why and what to do."""


@dataclass(frozen=True)
class _View:
    """One model's view of the current data file: its holdout and its inputs/target typed by its own schema."""

    manifest: dict[str, Any]
    schema: Schema
    holdout: np.ndarray
    split: tuple[str, float, int, list[str] | None]  # (scheme, fraction, seed, hashed columns): _split_of
    classes: list[str]

    @property
    def scheme(self) -> str:
        """How the split was made (SPLIT_SCHEME or LEGACY_SPLIT_SCHEME)."""
        return self.split[0]


def _split_of(manifest: dict[str, Any], who: str) -> tuple[str, float, int, list[str] | None]:
    """(scheme, fraction, seed, hashed columns) as the artifact recorded them; a garbled record is refused."""
    data = manifest.get("data")
    if not isinstance(data, dict):
        _bad_split(who, "data", "a table", data)
    fraction, seed = data.get("holdout_fraction"), data.get("seed")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        _bad_split(who, "data.holdout_fraction", "a number", fraction)
    if isinstance(seed, bool) or not isinstance(seed, int):
        _bad_split(who, "data.seed", "an integer", seed)
    split = data.get("split")
    if split is None:
        return LEGACY_SPLIT_SCHEME, float(fraction), seed, None
    if not isinstance(split, dict):
        _bad_split(who, "data.split", "a table with scheme and columns", split)
    scheme, columns = split.get("scheme"), split.get("columns")
    if not isinstance(scheme, str):
        _bad_split(who, "data.split.scheme", "a string", scheme)
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        _bad_split(who, "data.split.columns", "a list of column names", columns)
    return scheme, float(fraction), seed, list(columns)


def _bad_split(who: str, key: str, expected: str, got: Any) -> NoReturn:
    raise _CannotCompare(
        f"{who}'s manifest lacks a valid {key} (expected {expected}, got {got!r}); it was built by another mlci "
        "version, so the rows it trained on cannot be identified. Rebuild it with this mlci (re-run the "
        "pipeline on its commit and promote that artifact)."
    )


def _holdout(
    manifest: dict[str, Any],
    split: tuple[str, float, int, list[str] | None],
    schema: Schema,
    dataset: Dataset,
    path: Path,
    who: str,
    splits: dict[Any, np.ndarray],
) -> np.ndarray:
    """The rows of the current data file that the artifact's split put in its holdout (it never trained on them).

    The caller has checked the file has the model's features and target. ``splits`` memoises masks by how
    they were made: candidate and production usually share one split.
    """
    raw = dataset.raw
    scheme, fraction, seed, columns = split
    if scheme == LEGACY_SPLIT_SCHEME:
        mask = legacy_holdout_mask(
            typed_features(raw, schema, path), typed_target(raw, schema, path), fraction, seed
        )
    elif scheme == SPLIT_SCHEME:
        assert columns is not None
        _require_columns(raw, columns, who, "the columns its split hashed")
        key = (scheme, fraction, seed, tuple(columns))
        if key not in splits:
            splits[key] = split_mask(raw, fraction, seed, columns)
        mask = splits[key]
    else:
        raise _CannotCompare(
            f"{who} was split with scheme {scheme!r}, which this mlci does not know (it knows {SPLIT_SCHEME!r} and "
            f"{LEGACY_SPLIT_SCHEME!r}), so the rows it trained on cannot be identified. Upgrade mlci."
        )
    recorded = manifest.get("data", {}).get("holdout_rows")
    if (
        manifest.get("data", {}).get("sha256") == dataset.digest
        and recorded is not None
        and int(mask.sum()) != recorded
    ):
        raise _CannotCompare(
            f"{who} records {recorded} holdout rows on this very data file, but recomputing its split "
            f"({scheme}, seed {seed}, fraction {fraction}) gives {int(mask.sum())}: the rows it trained on cannot "
            "be identified (was it built by a different mlci or pandas?). Rebuild it with this mlci."
        )
    return mask


def _require_columns(raw: pd.DataFrame, columns: list[str], who: str, what: str) -> None:
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise _CannotCompare(
            f"{who} needs {what}, but the data file has no {', '.join(map(repr, missing))}; without them the rows "
            "it trained on cannot be identified (or it cannot be scored). Restore the columns in the data file."
        )


def _view(
    manifest: dict[str, Any], dataset: Dataset, path: Path, who: str, splits: dict[Any, np.ndarray]
) -> _View:
    """The model's split, schema and holdout on the current data file; the columns it needs are checked here."""
    split = _split_of(manifest, who)
    schema = Schema.from_json(manifest["schema"])
    _require_columns(dataset.raw, [*schema.names, schema.target], who, "its features and target")
    mask = _holdout(manifest, split, schema, dataset, path, who, splits)
    classes = [str(c) for c in manifest["schema"].get("classes", [])]
    return _View(manifest, schema, mask, split, classes)


def _predict(artifact: Path, view: _View, dataset: Dataset, rows: np.ndarray, path: Path) -> Prediction:
    """Score ``rows`` of the data file with the artifact, its inputs typed by its own schema."""
    X = typed_features(dataset.raw[rows], view.schema, path)
    return predict(
        open_session(artifact / "model.onnx"), feeds_from_frame(X, view.schema), view.manifest["task"]
    )


def _metrics(task: str, y: np.ndarray, pred: Prediction, classes: list[str]) -> dict[str, Any]:
    return (
        classification_metrics(y, pred, classes) if task == "classification" else regression_metrics(y, pred)
    )


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in _SUMMARY_METRICS if metrics.get(k) is not None}


def _take(pred: Prediction, keep: np.ndarray) -> Prediction:
    return Prediction(
        *(None if a is None else a[keep] for a in (pred.labels, pred.probabilities, pred.values))
    )


def _trivial(task: str, y_train: np.ndarray, classes: list[str], n: int) -> tuple[Prediction, str]:
    """The trivial baseline fitted on the training targets: majority class + class frequencies, or the mean."""
    if task == "regression":
        mean = float(np.mean(np.asarray(y_train, dtype=np.float64)))
        return Prediction(values=np.full(n, mean)), f"mean predictor ({mean:.4g})"
    y_s = np.asarray(y_train).astype(str)
    counts = np.array([(y_s == c).sum() for c in classes], dtype=np.float64)
    majority = classes[int(np.argmax(counts))]
    priors = np.tile(counts / counts.sum(), (n, 1))
    return Prediction(
        labels=np.full(n, majority, dtype=object), probabilities=priors
    ), f"majority class {majority!r}"


def _absolute(config: Config, metrics: dict[str, Any]) -> list[Check]:
    checks = []
    for bound, table in (("min", config.gate.min), ("max", config.gate.max)):
        for metric, threshold in sorted(table.items()):
            figure = metrics.get(metric)
            if figure is None:
                checks.append(
                    Check(
                        f"{bound} {metric}",
                        "absolute",
                        False,
                        None,
                        threshold,
                        f"{metric} was not measured for this model",
                    )
                )
                continue
            ok = figure >= threshold if bound == "min" else figure <= threshold
            sign = ">=" if bound == "min" else "<="
            reason = (
                f"{metric} {figure:.4f} {sign} {threshold:.4f}"
                if ok
                else f"{metric} {figure:.4f} is not {sign} {threshold:.4f}"
            )
            checks.append(Check(f"{bound} {metric}", "absolute", ok, float(figure), threshold, reason))
    return checks


def _budgets(config: Config, manifest: dict[str, Any], smoke: dict[str, Any] | None) -> list[Check]:
    evidence = evidence_of(manifest)
    parity = evidence["parity"]
    checks = [
        Check(
            "parity",
            "parity",
            bool(parity.get("passed")),
            parity.get("max_abs_diff"),
            parity.get("abs_tolerance"),
            "sklearn and onnxruntime agree on the holdout"
            if parity.get("passed")
            else "ONNX parity did not pass at export",
        )
    ]
    if smoke is not None:
        ok = bool(smoke.get("passed"))
        checks.append(
            Check(
                "smoke",
                "smoke",
                ok,
                smoke.get("p99_ms"),
                smoke.get("max_p99_ms"),
                smoke.get("reason", "served outputs equal in-process outputs" if ok else "smoke test failed"),
            )
        )
    elif config.gate.require_smoke:
        checks.append(
            Check(
                "smoke",
                "smoke",
                False,
                None,
                None,
                "no smoke report; run `mlci smoke` or set [gate] require_smoke = false",
            )
        )
    if config.gate.max_latency_p99_ms is not None:
        p99 = evidence["latency_ms"].get("p99")
        ok = p99 is not None and p99 <= config.gate.max_latency_p99_ms
        checks.append(
            Check(
                "latency p99 (onnxruntime, single row)",
                "budget",
                ok,
                p99,
                config.gate.max_latency_p99_ms,
                f"p99 {p99} ms {'within' if ok else 'over'} {config.gate.max_latency_p99_ms} ms budget",
            )
        )
    if config.gate.max_model_bytes is not None:
        size = (manifest.get("files") or {}).get("model.onnx", {}).get("size")  # hashed: identity, not evidence
        ok = size is not None and size <= config.gate.max_model_bytes
        checks.append(
            Check(
                "model size",
                "budget",
                ok,
                size,
                config.gate.max_model_bytes,
                f"{size} bytes {'within' if ok else 'over'} the {config.gate.max_model_bytes}-byte budget",
            )
        )
    return checks


def _rows_key(rows: np.ndarray) -> str:
    """What identifies a selection of the data file's rows (a boolean mask): its size and a digest of the
    row indices, so two selections are one key exactly when they are the same rows."""
    selected = np.flatnonzero(rows).astype(np.int64)
    return f"{selected.size}:{hashlib.sha256(selected.tobytes()).hexdigest()}"


class _Resamples:
    """What one gate run computes once and both its comparisons use: the bootstrap weights per (n, B, seed),
    the candidate's resampled metric per (metric, rows, B, seed) and its metrics per rows, ``rows`` being
    the content of the data-file rows compared (``_rows_key``, never an object id). When production shares
    the candidate's split, the comparison with production runs on the candidate's holdout, the rows of the
    absolute and baseline checks, so nothing about the candidate is computed twice.
    ``reuse=False`` recomputes everything (the route before the cache; the tests compare the two).
    """

    def __init__(self, reuse: bool = True) -> None:
        self.reuse = reuse
        self._memo: dict[tuple[Any, ...], Any] = {}

    def _get(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key (every time without reuse)."""
        if not self.reuse:
            return compute()
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def weights(self, n: int, samples: int, seed: int) -> np.ndarray:
        """bootstrap_weights(n, samples, seed), drawn once per run."""
        return self._get(("weights", n, samples, seed), partial(bootstrap_weights, n, samples, seed))

    def candidate(
        self, metric: str, rows: np.ndarray, samples: int, seed: int, compute: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """The candidate's ``metric`` on the resamples of ``rows`` (a boolean mask of the data file's rows)."""
        return self._get(("resampled", metric, _rows_key(rows), samples, seed), compute)

    def candidate_metrics(self, rows: np.ndarray, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The candidate's metrics (model/evaluate.py's) on ``rows``."""
        return self._get(("metrics", _rows_key(rows)), compute)


def _compare(
    policy: GateConfig,
    y: np.ndarray,
    cand: tuple[Prediction, list[str]],
    other: tuple[Prediction, list[str]],
    task: str,
    *,
    rows: np.ndarray,
    resamples: _Resamples,
    versus: str = "production",
    must_beat: bool = False,
) -> list[Check]:
    """The paired tests of the candidate against ``other`` on the same rows.

    Against production every compared metric is non-inferiority (superiority where ``require_better``);
    ``must_beat`` (the trivial baseline) makes every compared metric a superiority check; with no compared
    metric at all, the baseline is beaten on accuracy (classification) or r2 (regression), never on nothing.
    ``rows`` (a boolean mask of the data file's rows, ``y`` being theirs) and ``resamples`` let the two
    comparisons of one run share the weights and the candidate's resampled metrics.
    """
    metrics = sorted(set(policy.non_inferiority) | set(policy.require_better))
    fallback = ""
    if must_beat and not metrics:
        metrics = [_BASELINE_FALLBACK[task]]
        fallback = f" (judged on {metrics[0]}: no metric is compared in [gate.non_inferiority] or [gate] require_better)"
    weights = resamples.weights(len(y), policy.bootstrap, policy.seed)
    y_s = y.astype(str) if task == "classification" else y
    checks = []
    for metric in metrics:
        margin = 0.0 if must_beat else policy.non_inferiority.get(metric, 0.0)
        better = must_beat or metric in policy.require_better

        def fn(pred: Prediction, classes: list[str], metric: str = metric) -> Any:
            labels = pred.labels.astype(str) if pred.labels is not None else None
            return weighted_metric(
                metric,
                y_s,
                labels=labels,
                probabilities=pred.probabilities,
                values=pred.values,
                classes=classes,
            )

        candidate = fn(*cand)
        resampled = resamples.candidate(metric, rows, policy.bootstrap, policy.seed, partial(candidate, weights))
        interval = paired_bootstrap(metric, candidate, fn(*other), weights, policy.alpha, resampled)
        lo, hi = interval.low, interval.high
        p_value = None
        if metric == "accuracy" and cand[0].labels is not None and other[0].labels is not None:
            test = mcnemar(cand[0].labels.astype(str) == y_s, other[0].labels.astype(str) == y_s)
            worse = test.p_worse < policy.alpha and interval.improvement < -margin
            superior = test.p_better < policy.alpha and interval.improvement > 0
            p_value = test.p_better if better else test.p_worse
            how = (
                f"McNemar p={p_value:.3g} ({test.candidate_only_wrong} rows only the candidate gets wrong, "
                f"{test.candidate_only_right} only the {versus.split(' (')[0]})"
            )
        else:
            worse = bool(hi < -margin)
            superior = bool(lo > 0)
            how = f"{int(interval.confidence * 100)}% paired-bootstrap interval of the improvement [{lo:+.4f}, {hi:+.4f}]"
        delta = f"{metric} {interval.candidate:.4f} vs {versus} {interval.production:.4f} ({interval.improvement:+.4f}, + = better)"
        if better:
            ok = superior
            reason = (
                f"{delta}; {how}; "
                + ("better with confidence" if ok else "not better with confidence (required)")
                + fallback
            )
        else:
            ok = not worse
            reason = f"{delta}; {how}; " + (
                f"worse by more than the margin {margin} with confidence"
                if worse
                else f"not worse beyond the margin {margin} with confidence"
            )
        name = (
            f"beats baseline {metric}"
            if must_beat
            else f"{'superiority' if better else 'non-inferiority'} {metric}"
        )
        checks.append(
            Check(
                name,
                "baseline" if must_beat else "comparison",
                ok,
                interval.improvement,
                -margin if not better else 0.0,
                reason,
                p_value,
                (lo, hi),
            )
        )
    return checks


def _baseline(
    config: Config, cand: _View, y_all: np.ndarray, pred: Prediction, resamples: _Resamples
) -> tuple[list[Check], dict[str, Any] | None]:
    """The candidate against the trivial baseline fitted on its training rows, on its holdout."""
    if config.gate.baseline == "none":
        return [], None
    y_hold = y_all[cand.holdout]
    trivial, what = _trivial(config.task, y_all[~cand.holdout], cand.classes, len(y_hold))
    checks = _compare(
        config.gate,
        y_hold,
        (pred, cand.classes),
        (trivial, cand.classes),
        config.task,
        rows=cand.holdout,
        resamples=resamples,
        versus=f"baseline ({what})",
        must_beat=True,
    )
    return checks, {"model": what, **_summary(_metrics(config.task, y_hold, trivial, cand.classes))}


def _too_few(n: int, policy: GateConfig, cand: _View, prod: _View) -> str:
    """Why only ``n`` rows are held out by both models, and what to do about it."""
    c_scheme, c_frac, c_seed, c_cols = cand.split
    p_scheme, p_frac, p_seed, p_cols = prod.split
    head = (
        f"only {n} rows of the data file are held out by both the candidate and production (rows neither "
        f"model trained on); comparing needs at least {policy.min_compared_rows} ([gate] min_compared_rows). "
    )
    if p_scheme != c_scheme:
        why = (
            f"Production was built by an older mlci whose split hashed its typed features ({p_scheme}), so its "
            "holdout and the candidate's overlap only by chance. "
        )
        fix = (
            "Rebuild production with this mlci (re-run the pipeline on production's commit and promote that "
            "artifact) so both splits agree, "
        )
    elif (p_frac, p_seed) != (c_frac, c_seed):
        why = (
            f"Production held out {p_frac} of the rows with [split] seed {p_seed}, the candidate {c_frac} with "
            f"seed {c_seed}: different splits overlap only by chance. "
        )
        fix = f"Set [split] holdout = {p_frac} and seed = {p_seed} (production's) so the holdouts coincide, "
    elif p_cols != c_cols:
        added = sorted(set(c_cols or []) - set(p_cols or []))
        why = (
            f"The data file gained columns since production ({', '.join(added)}); every row's split hash "
            "covers all columns, so rows changed sides. "
        )
        fix = "Compare on the old columns by keeping new columns in a separate file until production is rebuilt, "
    else:
        why = "The data file has few rows that neither model trained on. "
        fix = "Add rows neither model has seen, "
    return head + why + fix + "or, accepting a weaker comparison, lower [gate] min_compared_rows."


def _production(
    config: Config,
    cand: _View,
    cand_pred: Prediction,
    y_all: np.ndarray,
    production: Path,
    prod_manifest: dict[str, Any],
    dataset: Dataset,
    splits: dict[Any, np.ndarray],
    resamples: _Resamples,
) -> tuple[list[Check], dict[str, Any] | None, list[str]]:
    """The comparison with production on the rows neither model trained on (checks, metrics, notes)."""
    path = config.data.path
    try:
        prod = _view(prod_manifest, dataset, path, f"Production {prod_manifest['digest'][:19]}", splits)
        if prod.schema.target != cand.schema.target:
            raise _CannotCompare(
                f"production predicts {prod.schema.target!r}, the candidate {cand.schema.target!r}; "
                "they are different models and cannot be compared."
            )
        shared = cand.holdout & prod.holdout
        n = int(shared.sum())
        if n < config.gate.min_compared_rows:
            raise _CannotCompare(_too_few(n, config.gate, cand, prod))
        prod_pred = _predict(production, prod, dataset, shared, path)
    except (_CannotCompare, DataError) as exc:
        return [Check("comparison", "comparison", False, None, None, str(exc))], None, []
    notes = []
    if prod.scheme != cand.scheme:
        notes.append(
            f"Production's split was recomputed with its own older scheme ({prod.scheme}: a hash of its typed "
            "features and target, as mlci did when it was built); the compared rows are in neither model's "
            "training set under each model's own split."
        )
    y = y_all[shared]
    cand_shared = _take(cand_pred, shared[cand.holdout])
    checks = _compare(
        config.gate,
        y,
        (cand_shared, cand.classes),
        (prod_pred, prod.classes),
        config.task,
        rows=shared,
        resamples=resamples,
    )
    metrics = {
        "rows": n,
        "candidate": _summary(
            resamples.candidate_metrics(shared, partial(_metrics, config.task, y, cand_shared, cand.classes))
        ),
        "production": _summary(_metrics(config.task, y, prod_pred, prod.classes)),
    }
    return checks, metrics, notes


def _policy(gate: GateConfig) -> dict[str, Any]:
    return {
        "min": dict(gate.min),
        "max": dict(gate.max),
        "non_inferiority": dict(gate.non_inferiority),
        "require_better": list(gate.require_better),
        "alpha": gate.alpha,
        "bootstrap": gate.bootstrap,
        "seed": gate.seed,
        "max_latency_p99_ms": gate.max_latency_p99_ms,
        "max_model_bytes": gate.max_model_bytes,
        "require_smoke": gate.require_smoke,
        "baseline": gate.baseline,
        "min_compared_rows": gate.min_compared_rows,
    }


def run_gate(
    config: Config, candidate: Path, production: Path | None, smoke: dict[str, Any] | None = None
) -> Verdict:
    """Evaluate the policy; returns the verdict (the caller writes it and sets the exit code)."""
    from mlci.model.train import load_data

    cand_manifest = verify_artifact(candidate)
    prod_manifest = verify_artifact(production) if production is not None else None
    dataset = load_data(config)
    path = config.data.path
    splits: dict[Any, np.ndarray] = {}
    try:
        cand = _view(cand_manifest, dataset, path, f"The candidate {cand_manifest['digest'][:19]}", splits)
    except _CannotCompare as exc:
        raise DataError(str(exc)) from exc
    y_all = typed_target(dataset.raw, cand.schema, path).to_numpy()
    cand_pred = _predict(candidate, cand, dataset, cand.holdout, path)
    resamples = _Resamples()
    cand_metrics = resamples.candidate_metrics(
        cand.holdout, partial(_metrics, config.task, y_all[cand.holdout], cand_pred, cand.classes)
    )
    checks = _absolute(config, cand_metrics)
    baseline_checks, baseline_metrics = _baseline(config, cand, y_all, cand_pred, resamples)
    checks += baseline_checks
    checks += _budgets(config, cand_manifest, smoke)
    compared: dict[str, Any] | None = None
    notes: list[str] = []
    if prod_manifest is not None and production is not None:
        if prod_manifest["digest"] == cand_manifest["digest"]:
            checks.append(
                Check(
                    "comparison",
                    "comparison",
                    True,
                    None,
                    None,
                    "the candidate is the production model (same digest)",
                )
            )
        else:
            more, compared, notes = _production(
                config, cand, cand_pred, y_all, production, prod_manifest, dataset, splits, resamples
            )
            checks += more
    metrics = {
        "holdout": {
            "rows": int(cand.holdout.sum()),
            "candidate": _summary(cand_metrics),
            "baseline": baseline_metrics,
        },
        "compared": compared,
    }
    return Verdict(
        passed=all(c.passed for c in checks),
        candidate=cand_manifest["digest"],
        production=prod_manifest["digest"] if prod_manifest else None,
        first_run=prod_manifest is None,
        holdout_rows=int(cand.holdout.sum()),
        data_sha256=dataset.digest,
        checks=checks,
        policy=_policy(config.gate),
        compared_rows=None if compared is None else compared["rows"],
        metrics=metrics,
        notes=notes,
    )


def _metrics_table(verdict: dict[str, Any]) -> list[str]:
    """Markdown tables of the figures behind the checks: holdout (candidate, baseline) and compared rows."""
    metrics = verdict.get("metrics") or {}
    lines: list[str] = []
    for key, title, columns in (
        ("holdout", "the candidate's {rows} holdout rows", ("candidate", "baseline")),
        ("compared", "the {rows} rows neither model trained on", ("candidate", "production")),
    ):
        block = metrics.get(key)
        if not block:
            continue
        present = [c for c in columns if block.get(c)]
        names = [m for m in _SUMMARY_METRICS if any(m in block[c] for c in present)]
        heads = [c if c != "baseline" else f"baseline: {block['baseline']['model']}" for c in present]
        lines += [
            "",
            f"Metrics on {title.format(rows=block['rows'])}:",
            "",
            "| metric | " + " | ".join(heads) + " |",
            "|---|" + "---|" * len(present),
        ]
        for m in names:
            cells = [f"{block[c][m]:.4f}" if block[c].get(m) is not None else "" for c in present]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def verdict_markdown(verdict: dict[str, Any]) -> str:
    """A summary fit for a pull-request comment."""
    head = "✅ **mlci gate passed**" if verdict["passed"] else "❌ **mlci gate failed**"
    lines = [head, "", f"Candidate `{verdict['candidate'][:19]}`"]
    baseline = (verdict.get("policy") or {}).get("baseline", "none")
    if verdict["first_run"]:
        judged = (
            "the policy and a trivial baseline"
            if baseline == "trivial"
            else 'the policy only ([gate] baseline = "none")'
        )
        lines[-1] += f" — first release: no production model; judged against {judged}."
    elif verdict.get("compared_rows") is not None:
        lines[-1] += (
            f" vs production `{verdict['production'][:19]}` on {verdict['compared_rows']} rows neither model trained on."
        )
    else:
        lines[-1] += (
            f" vs production `{verdict['production'][:19]}`: not compared (see the comparison check)."
        )
    lines += [f"> {note}" for note in verdict.get("notes", [])]
    lines += _metrics_table(verdict)
    lines += ["", "| check | result | figure | threshold | detail |", "|---|---|---|---|---|"]
    for c in verdict["checks"]:
        fig = "" if c["figure"] is None else f"{c['figure']:.4g}"
        thr = "" if c["threshold"] is None else f"{c['threshold']:.4g}"
        lines.append(
            f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {fig} | {thr} | {c['reason'].replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"
