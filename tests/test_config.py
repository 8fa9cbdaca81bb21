"""`mlci.toml` validation: each error names the key, the bad value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlci.config import load_config, parse_config
from mlci.errors import ConfigError

GOOD: dict[str, Any] = {
    "model": {"name": "iris", "task": "classification"},
    "data": {"path": "d.csv", "target": "y"},
    "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
}


def cfg(**changes: Any) -> dict[str, Any]:
    raw = {k: dict(v) for k, v in GOOD.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            raw.setdefault(section, {})[key] = value
        else:
            raw[section] = value
    return raw


def test_defaults(tmp_path: Path) -> None:
    config = parse_config(cfg(), tmp_path / "mlci.toml")
    assert config.holdout == 0.2 and config.seed == 0
    assert config.data.path == tmp_path / "d.csv"
    assert config.workspace == tmp_path / ".mlci"
    assert config.export.abs_tolerance == 1e-5 and config.estimator.scale is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model__task": "clustering"}, "task must be one of classification, regression; got 'clustering'"),
        ({"model__name": "My Model"}, "[model] name must be lowercase"),
        ({"split": {"holdout": 1.5}}, "holdout must be a fraction between 0 and 1"),
        ({"split": {"seed": "7"}}, "[split] seed must be int; got '7'"),
        ({"split": {"seed": True}}, "[split] seed must be int; got True"),
        ({"estimator": {}}, "needs exactly one of 'class'"),
        ({"estimator": {"class": "a.B", "factory": "m:f"}}, "got both"),
        ({"estimator": {"factory": "nofunction"}}, "must look like 'module:function'"),
        ({"estimator": {"factory": "m:f", "params": {"a": 1}}}, "params only apply to 'class'"),
        ({"data__features": {"x": "text"}}, "[data.features] x must be one of numeric, categorical; got 'text'"),
        ({"data__features": {"y": "numeric"}}, "target 'y' is also listed"),
        ({"export": {"target_opset": 99}}, "target_opset must be between 9 and 21"),
        ({"export": {"abs_tolerance": -1}}, "abs_tolerance must be >= 0"),
        ({"evaluate": {"latency_runs": 1}}, "latency_runs must be >= 10"),
        ({"modle": {}}, "Unknown key 'modle' in the top level of mlci.toml. Did you mean 'model'?"),
        ({"data__traget": "y"}, "Did you mean 'target'?"),
        ({"data": "d.csv"}, "data in mlci.toml must be a table"),
    ],
)
def test_invalid(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(cfg(**changes), tmp_path / "mlci.toml")
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_missing_required_table(tmp_path: Path) -> None:
    raw = cfg()
    del raw["estimator"]
    with pytest.raises(ConfigError, match=r"no \[estimator\] table"):
        parse_config(raw, tmp_path / "mlci.toml")


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[data\] target is required"):
        parse_config(cfg(data={"path": "d.csv"}), tmp_path / "mlci.toml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "mlci.toml"
    path.write_bytes(b"\xff\xfe[model]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_workspace_override(tmp_path: Path) -> None:
    path = tmp_path / "mlci.toml"
    path.write_text('[model]\nname="a"\ntask="regression"\n[data]\npath="x.csv"\ntarget="y"\n[estimator]\nclass="sklearn.linear_model.Ridge"\n')
    assert load_config(path, tmp_path / "elsewhere").workspace == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("/", "the filesystem root"),
        (".", "the repository itself"),
        ("..", "holds the repository"),
        ("data.csv", "is a file"),
    ],
)
def test_workspace_that_mlci_would_clobber_is_refused(tmp_path: Path, where: str, needle: str) -> None:
    """mlci deletes and replaces directories inside its workspace (stage cache entries on --no-cache): a
    workspace at '/', at the repository root or above it, or on a file, is refused before anything runs."""
    (tmp_path / "data.csv").write_text("x,y\n")
    for raw, override in ((cfg(workspace__path=where), None), (cfg(), where)):
        with pytest.raises(ConfigError, match=needle) as refused:
            parse_config(raw, tmp_path / "mlci.toml", None if override is None else tmp_path / override)
        assert "[workspace] path" in str(refused.value) or "--workspace" in str(refused.value)


@pytest.mark.parametrize("spec", ["os:system", "builtins:open", "operator:add"])
def test_factory_that_needs_arguments_is_a_config_error(tmp_path: Path, spec: str) -> None:
    """A factory is called with no arguments; one that needs some (``os:system``) was a TypeError traceback
    (exit 1) from inside training. It is now a ConfigError (exit 2) naming the factory and the fix."""
    from mlci.model.data import Schema
    from mlci.model.estimators import build_estimator

    config = parse_config(cfg(estimator={"factory": spec}), tmp_path / "mlci.toml")
    with pytest.raises(ConfigError, match=r"needs argument.*takes no arguments and returns an unfitted"):
        build_estimator(config.estimator, Schema(task="classification", features=(), target="y"), 0, tmp_path)


def test_drop_wins_over_data_features(tmp_path: Path) -> None:
    """`mlci init` lists every column in [data.features], so a column the user then adds to [data] drop
    is in both. drop is the explicit "ignore this column": it wins, and the column is no feature (it was
    silently kept before, e.g. a second target leaking into the model)."""
    from mlci.model.data import load_dataset

    (tmp_path / "d.csv").write_text("a,b,leak,y\n1,x,0,0\n2,y,1,1\n3,x,0,0\n4,y,1,1\n")
    features = {"a": "numeric", "b": "categorical", "leak": "numeric"}
    config = parse_config(cfg(data__features=features, data__drop=["leak"]), tmp_path / "mlci.toml")
    dataset = load_dataset(config.data.path, "y", "classification", config.data.features, config.data.drop)
    assert dataset.schema.names == ["a", "b"] and list(dataset.X.columns) == ["a", "b"]


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (
            {"features": {"a": "numeric"}, "drop": ["a"]},
            ["[data] drop", "removes every column listed in [data.features] (a)", "no features are left"],
        ),
        ({"drop": ["y"]}, ["[data] drop lists the target 'y'", "remove it from drop"]),
    ],
)
def test_drop_that_leaves_nothing_or_drops_the_target_is_refused(
    tmp_path: Path, data: dict[str, Any], needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(cfg(**{f"data__{k}": v for k, v in data.items()}), tmp_path / "mlci.toml")
    for needle in needles:
        assert needle in str(info.value)
