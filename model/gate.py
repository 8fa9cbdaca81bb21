"""Gate stage: judge a candidate against the policy and against production on the same holdout rows.

A candidate is blocked only when it is worse *with confidence*: for accuracy, McNemar's exact test on
the rows where the two models disagree is significant at ``alpha`` and the observed drop exceeds the
non-inferiority margin; for the other metrics, the whole paired-bootstrap interval of the improvement
lies below ``-margin``. ``require_better`` turns a metric into a superiority check (interval above 0, or
McNemar significant in the candidate's favour). With no production model the verdict says so and only
the absolute checks apply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlci.config import Config
from mlci.model.artifact import verify_artifact
from mlci.model.data import Schema
from mlci.model.evaluate import classification_metrics, regression_metrics
from mlci.model.onnxio import Prediction, feeds_from_frame, open_session, predict
from mlci.model.stats import bootstrap_weights, mcnemar, paired_bootstrap, weighted_metric

__all__ = ["Check", "Verdict", "run_gate", "verdict_markdown"]

VERDICT_FILE = "verdict.json"


@dataclass(frozen=True)
class Check:
    """One line of the verdict."""

    name: str
    kind: str  # absolute | comparison | parity | smoke | budget
    passed: bool
    figure: float | None
    threshold: float | None
    reason: str
    p_value: float | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True)
class Verdict:
    """Pass/fail with every check; ``first_run`` when there was no production model to compare with."""

    passed: bool
    candidate: str
    production: str | None
    first_run: bool
    holdout_rows: int
    data_sha256: str
    checks: list[Check] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The verdict.json document (no timestamps: the same inputs give the same verdict)."""
        out = asdict(self)
        out["schema_version"] = 1
        for check in out["checks"]:
            if check["interval"] is not None:
                check["interval"] = list(check["interval"])
        return out


def _predict(artifact: Path, manifest: dict[str, Any], X: Any) -> Prediction:
    schema = Schema.from_json(manifest["schema"])
    missing = [n for n in schema.names if n not in X.columns]
    if missing:
        raise KeyError(", ".join(missing))
    return predict(open_session(artifact / "model.onnx"), feeds_from_frame(X, schema), manifest["task"])


def _metrics(task: str, y: np.ndarray, pred: Prediction, classes: list[Any]) -> dict[str, Any]:
    return classification_metrics(y, pred, classes) if task == "classification" else regression_metrics(y, pred)


def _absolute(config: Config, metrics: dict[str, Any]) -> list[Check]:
    checks = []
    for bound, table in (("min", config.gate.min), ("max", config.gate.max)):
        for metric, threshold in sorted(table.items()):
            figure = metrics.get(metric)
            if figure is None:
                checks.append(Check(f"{bound} {metric}", "absolute", False, None, threshold, f"{metric} was not measured for this model"))
                continue
            ok = figure >= threshold if bound == "min" else figure <= threshold
            sign = ">=" if bound == "min" else "<="
            reason = f"{metric} {figure:.4f} {sign} {threshold:.4f}" if ok else f"{metric} {figure:.4f} is not {sign} {threshold:.4f}"
            checks.append(Check(f"{bound} {metric}", "absolute", ok, float(figure), threshold, reason))
    return checks


def _budgets(config: Config, manifest: dict[str, Any], smoke: dict[str, Any] | None) -> list[Check]:
    parity = manifest.get("parity", {})
    checks = [
        Check(
            "parity", "parity", bool(parity.get("passed")), parity.get("max_abs_diff"), parity.get("abs_tolerance"),
            "sklearn and onnxruntime agree on the holdout" if parity.get("passed") else "ONNX parity did not pass at export",
        )
    ]
    if smoke is not None:
        ok = bool(smoke.get("passed"))
        checks.append(Check("smoke", "smoke", ok, smoke.get("p99_ms"), smoke.get("max_p99_ms"), smoke.get("reason", "served outputs equal in-process outputs" if ok else "smoke test failed")))
    elif config.gate.require_smoke:
        checks.append(Check("smoke", "smoke", False, None, None, "no smoke report; run `mlci smoke` or set [gate] require_smoke = false"))
    if config.gate.max_latency_p99_ms is not None:
        p99 = manifest.get("runtime", {}).get("latency_ms", {}).get("p99")
        ok = p99 is not None and p99 <= config.gate.max_latency_p99_ms
        checks.append(Check("latency p99 (onnxruntime, single row)", "budget", ok, p99, config.gate.max_latency_p99_ms,
                            f"p99 {p99} ms {'within' if ok else 'over'} {config.gate.max_latency_p99_ms} ms budget"))
    if config.gate.max_model_bytes is not None:
        size = manifest.get("metrics", {}).get("model_size_bytes")
        ok = size is not None and size <= config.gate.max_model_bytes
        checks.append(Check("model size", "budget", ok, size, config.gate.max_model_bytes,
                            f"{size} bytes {'within' if ok else 'over'} the {config.gate.max_model_bytes}-byte budget"))
    return checks


def _compare(config: Config, y: np.ndarray, cand: tuple[Prediction, list[str]], prod: tuple[Prediction, list[str]], task: str) -> list[Check]:
    policy = config.gate
    metrics = sorted(set(policy.non_inferiority) | set(policy.require_better))
    weights = bootstrap_weights(len(y), policy.bootstrap, policy.seed)
    y_s = y.astype(str) if task == "classification" else y
    checks = []
    for metric in metrics:
        margin = policy.non_inferiority.get(metric, 0.0)
        better = metric in policy.require_better

        def fn(pred: Prediction, classes: list[str], metric: str = metric) -> Any:
            labels = pred.labels.astype(str) if pred.labels is not None else None
            return weighted_metric(metric, y_s, labels=labels, probabilities=pred.probabilities, values=pred.values, classes=classes)

        interval = paired_bootstrap(metric, fn(*cand), fn(*prod), weights, policy.alpha)
        lo, hi = interval.low, interval.high
        p_value = None
        if metric == "accuracy" and cand[0].labels is not None and prod[0].labels is not None:
            test = mcnemar(cand[0].labels.astype(str) == y_s, prod[0].labels.astype(str) == y_s)
            worse = test.p_worse < policy.alpha and interval.improvement < -margin
            superior = test.p_better < policy.alpha and interval.improvement > 0
            p_value = test.p_better if better else test.p_worse
            how = f"McNemar p={p_value:.3g} ({test.candidate_only_wrong} rows only the candidate gets wrong, {test.candidate_only_right} only production)"
        else:
            worse = bool(hi < -margin)
            superior = bool(lo > 0)
            how = f"{int(interval.confidence * 100)}% paired-bootstrap interval of the improvement [{lo:+.4f}, {hi:+.4f}]"
        delta = f"{metric} {interval.candidate:.4f} vs production {interval.production:.4f} ({interval.improvement:+.4f}, + = better)"
        if better:
            ok = superior
            reason = f"{delta}; {how}; " + ("better with confidence" if ok else "not better with confidence (required)")
        else:
            ok = not worse
            reason = f"{delta}; {how}; " + (f"worse by more than the margin {margin} with confidence" if worse else f"not worse beyond the margin {margin} with confidence")
        checks.append(Check(f"{'superiority' if better else 'non-inferiority'} {metric}", "comparison", ok,
                            interval.improvement, -margin if not better else 0.0, reason, p_value, (lo, hi)))
    return checks


def run_gate(config: Config, candidate: Path, production: Path | None, smoke: dict[str, Any] | None = None) -> Verdict:
    """Evaluate the policy; returns the verdict (the caller writes it and sets the exit code)."""
    from mlci.model.data import holdout_mask
    from mlci.model.train import load_data

    cand_manifest = verify_artifact(candidate)
    prod_manifest = verify_artifact(production) if production is not None else None
    dataset = load_data(config)
    mask = holdout_mask(dataset.X, dataset.y, config.holdout, config.seed)
    X, y = dataset.X[mask], dataset.y[mask].to_numpy()
    task = config.task
    cand_classes = [str(c) for c in cand_manifest["schema"].get("classes", [])]
    cand_pred = _predict(candidate, cand_manifest, X)
    checks = _absolute(config, _metrics(task, y, cand_pred, cand_classes))
    checks += _budgets(config, cand_manifest, smoke)
    if prod_manifest is not None and production is not None:
        if prod_manifest["digest"] == cand_manifest["digest"]:
            checks.append(Check("comparison", "comparison", True, None, None, "the candidate is the production model (same digest)"))
        else:
            try:
                prod_pred = _predict(production, prod_manifest, X)
            except KeyError as exc:
                checks.append(Check("comparison", "comparison", False, None, None,
                                    f"production needs features absent from the data ({exc.args[0]}); the two cannot be compared on the same rows"))
            else:
                prod_classes = [str(c) for c in prod_manifest["schema"].get("classes", [])]
                checks += _compare(config, y, (cand_pred, cand_classes), (prod_pred, prod_classes), task)
    policy = {
        "min": dict(config.gate.min), "max": dict(config.gate.max), "non_inferiority": dict(config.gate.non_inferiority),
        "require_better": list(config.gate.require_better), "alpha": config.gate.alpha, "bootstrap": config.gate.bootstrap,
        "seed": config.gate.seed, "max_latency_p99_ms": config.gate.max_latency_p99_ms,
        "max_model_bytes": config.gate.max_model_bytes, "require_smoke": config.gate.require_smoke,
    }
    return Verdict(
        passed=all(c.passed for c in checks),
        candidate=cand_manifest["digest"],
        production=prod_manifest["digest"] if prod_manifest else None,
        first_run=prod_manifest is None,
        holdout_rows=int(mask.sum()),
        data_sha256=dataset.digest,
        checks=checks,
        policy=policy,
    )


def verdict_markdown(verdict: dict[str, Any]) -> str:
    """A summary fit for a pull-request comment."""
    head = "✅ **mlci gate passed**" if verdict["passed"] else "❌ **mlci gate failed**"
    lines = [head, "", f"Candidate `{verdict['candidate'][:19]}`"]
    if verdict["first_run"]:
        lines[-1] += " — first release: no production model, absolute checks only."
    else:
        lines[-1] += f" vs production `{verdict['production'][:19]}` on the same {verdict['holdout_rows']} holdout rows."
    lines += ["", "| check | result | figure | threshold | detail |", "|---|---|---|---|---|"]
    for c in verdict["checks"]:
        fig = "" if c["figure"] is None else f"{c['figure']:.4g}"
        thr = "" if c["threshold"] is None else f"{c['threshold']:.4g}"
        lines.append(f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {fig} | {thr} | {c['reason'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"
