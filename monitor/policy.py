"""What to do about a bad window: hysteresis, cooldown, actions. Pure; the state is a JSON document.

Each condition (``drift``, ``outliers``, ``decay``) is ``ok`` or ``firing``. It starts firing after
``bad_windows`` consecutive bad windows and clears after ``good_windows`` consecutive good ones; a
window without a verdict (too few rows) changes neither streak. Entering ``firing`` triggers the
condition's actions (``alert``, ``rollback``, ``retrain``), each at most once per firing episode and no
sooner than ``cooldown_s`` after the same action last ran; an action held back by the cooldown runs on
a later bad window once the cooldown is over (if the condition is still firing). Clearing sends a
``resolved`` alert. :func:`load_state`/:func:`save_state` keep the state in a file, so a restarted
monitor keeps its streaks and cooldowns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mlci.monitor.alerts import atomic_write_json
from mlci.monitor.errors import MonitorError

__all__ = ["ACTIONS", "CONDITIONS", "Decision", "PolicySettings", "decide", "load_state", "new_state", "save_state"]

ACTIONS = ("alert", "rollback", "retrain")
CONDITIONS = ("drift", "outliers", "decay")
_DEFAULT_ACTIONS: dict[str, tuple[str, ...]] = {
    "drift": ("alert", "retrain"),
    "outliers": ("alert",),
    "decay": ("alert", "rollback", "retrain"),
}


@dataclass(frozen=True)
class PolicySettings:
    """Hysteresis, cooldown and the actions of each condition."""

    bad_windows: int = 3
    good_windows: int = 3
    cooldown_s: float = 3600.0
    actions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(_DEFAULT_ACTIONS))

    def __post_init__(self) -> None:
        if self.bad_windows < 1 or self.good_windows < 1:
            raise MonitorError(f"bad_windows and good_windows must be ≥ 1; got {self.bad_windows} and {self.good_windows}.")
        if self.cooldown_s < 0:
            raise MonitorError(f"cooldown_s is {self.cooldown_s}; expected ≥ 0 seconds.")
        for condition, actions in self.actions.items():
            unknown = sorted(set(actions) - set(ACTIONS))
            if condition not in CONDITIONS or unknown:
                raise MonitorError(
                    f"Policy entry {condition!r}: {unknown or 'unknown condition'}; conditions are "
                    f"{', '.join(CONDITIONS)} and actions are {', '.join(ACTIONS)}."
                )


@dataclass(frozen=True)
class Decision:
    """One thing the policy decided: run ``action`` for ``condition`` (or why it was held back)."""

    condition: str
    action: str
    reason: str
    suppressed: bool = False


def new_state() -> dict[str, Any]:
    """The state of a monitor that has seen nothing yet."""
    return {
        "windows": 0,
        "conditions": {c: {"state": "ok", "bad_streak": 0, "good_streak": 0, "since": None, "done": []} for c in CONDITIONS},
        "last_action": {},
    }


def decide(
    state: Mapping[str, Any], signals: Mapping[str, bool | None], now: float, settings: PolicySettings
) -> tuple[dict[str, Any], list[Decision]]:
    """Feed one window's signals (True = bad, False = good, None = no verdict); returns new state and decisions."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(state))  # deep copy; the input stays untouched
    out["windows"] += 1
    decisions: list[Decision] = []
    for condition in CONDITIONS:
        c = out["conditions"][condition]
        bad = signals.get(condition)
        if bad is None:
            continue
        if bad:
            c["bad_streak"] += 1
            c["good_streak"] = 0
            if c["state"] == "ok" and c["bad_streak"] >= settings.bad_windows:
                c.update(state="firing", since=now, done=[])
            if c["state"] == "firing":
                for action in settings.actions.get(condition, ()):
                    if action in c["done"]:
                        continue
                    key = f"alert:{condition}" if action == "alert" else action
                    last = out["last_action"].get(key)
                    if last is not None and now - last < settings.cooldown_s:
                        wait = settings.cooldown_s - (now - last)
                        decisions.append(Decision(condition, action, f"cooldown: {wait:.0f} s left", suppressed=True))
                        continue
                    out["last_action"][key] = now
                    c["done"].append(action)
                    decisions.append(Decision(condition, action, f"{c['bad_streak']} consecutive bad windows"))
        else:
            c["good_streak"] += 1
            c["bad_streak"] = 0
            if c["state"] == "firing" and c["good_streak"] >= settings.good_windows:
                c.update(state="ok", since=now, done=[])
                decisions.append(Decision(condition, "resolved", f"{c['good_streak']} consecutive good windows"))
    return out, decisions


def load_state(path: Path) -> dict[str, Any]:
    """The saved policy state, or a new one when the file does not exist."""
    if not path.is_file():
        return new_state()
    try:
        state: dict[str, Any] = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise MonitorError(f"Policy state '{path}' is not valid JSON ({exc}); delete it to start over.") from exc
    fresh = new_state()
    for condition in CONDITIONS:  # a state file from a version with fewer conditions still loads
        state.setdefault("conditions", {}).setdefault(condition, fresh["conditions"][condition])
    state.setdefault("last_action", {})
    state.setdefault("windows", 0)
    return state


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write the policy state atomically."""
    atomic_write_json(path, dict(state))
