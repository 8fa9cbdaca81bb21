"""Policy: hysteresis, clearing, cooldown over sequences of windows; the state survives a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlci.monitor.errors import MonitorError
from mlci.monitor.policy import Decision, PolicySettings, decide, load_state, new_state, save_state

S = PolicySettings(bad_windows=3, good_windows=2, cooldown_s=100.0)


def feed(signals: list[bool | None], *, condition: str = "drift", start: float = 0.0, step: float = 10.0,
         state: dict[str, Any] | None = None, policy: PolicySettings = S) -> tuple[dict[str, Any], list[list[Decision]]]:  # fmt: skip
    state = state or new_state()
    out = []
    for i, signal in enumerate(signals):
        state, made = decide(state, {condition: signal}, start + i * step, policy)
        out.append(made)
    return state, out


def actions(made: list[Decision], suppressed: bool = False) -> list[str]:
    return [d.action for d in made if d.suppressed == suppressed]


def test_actions_only_after_k_consecutive_bad_windows() -> None:
    _, steps = feed([True, True, False, True, True, None, True])
    assert [actions(m) for m in steps] == [[], [], [], [], [], [], ["alert", "retrain"]]
    # a window without a verdict (None) neither breaks nor extends the streak


def test_decay_rolls_back_and_clearing_needs_m_good_windows() -> None:
    state, steps = feed([True, True, True, False, True, False, False], condition="decay")
    assert actions(steps[2]) == ["alert", "rollback", "retrain"]
    assert [actions(m) for m in steps[3:]] == [[], [], [], ["resolved"]]
    assert state["conditions"]["decay"]["state"] == "ok"
    # still firing between steps 3 and 5: no second rollback for the same episode
    assert sum(actions(m).count("rollback") for m in steps) == 1


def test_cooldown_holds_actions_back_then_lets_them_run() -> None:
    # fire at t=20, clear at t=40, fire again at t=70 (< 100 s cooldown), still bad at t=120 (≥ 100 s)
    _, steps = feed([True, True, True, False, False, True, True, True, True, True, True, True, True])
    assert actions(steps[2]) == ["alert", "retrain"]
    assert actions(steps[4]) == ["resolved"]
    held = [d for m in steps[5:] for d in m if d.suppressed]
    assert held and held[0].reason.startswith("cooldown:")
    ran = [(i, actions(m)) for i, m in enumerate(steps) if actions(m) and i > 4]
    assert ran == [(12, ["alert", "retrain"])]  # t = 120: 100 s after t = 20


def test_state_survives_a_restart(tmp_path: Path) -> None:
    signals: list[bool | None] = [True, True, None, True, False, True, True, True, False, False]
    _, uninterrupted = feed(signals)
    path = tmp_path / "policy.json"
    state, first = feed(signals[:4])
    save_state(path, state)
    restored = load_state(path)
    _, second = feed(signals[4:], start=40.0, state=restored)
    assert first + second == uninterrupted
    assert load_state(tmp_path / "absent.json") == new_state()
    path.write_text("{not json")
    with pytest.raises(MonitorError, match="not valid JSON"):
        load_state(path)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(
        MonitorError, match="conditions are drift, outliers, decay and actions are alert, rollback, retrain"
    ):
        PolicySettings(actions={"drift": ("page",)})
    with pytest.raises(MonitorError, match="must be ≥ 1"):
        PolicySettings(bad_windows=0)


windows = st.lists(
    st.tuples(st.sampled_from([True, False, None]), st.sampled_from([True, False, None]), st.floats(0, 80)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(windows, st.integers(1, 4), st.integers(1, 4), st.sampled_from([0.0, 50.0, 200.0]))
def test_policy_properties(
    seq: list[tuple[bool | None, bool | None, float]], k: int, m: int, cooldown: float
) -> None:
    """Actions only after k bad in a row; same action ≥ cooldown apart; resolved only after m good in a row."""
    policy = PolicySettings(bad_windows=k, good_windows=m, cooldown_s=cooldown)
    state = new_state()
    now = 0.0
    history: dict[str, list[bool]] = {"drift": [], "outliers": []}
    last_run: dict[str, float] = {}
    firing = {"drift": False, "outliers": False}
    for drift, outliers, dt in seq:
        now += dt
        signals = {"drift": drift, "outliers": outliers}
        for c, v in signals.items():
            if v is not None:
                history[c].append(v)
        state, made = decide(state, signals, now, policy)
        for d in made:
            recent = history[d.condition]
            if d.action == "resolved":
                assert firing[d.condition] and len(recent) >= m and not any(recent[-m:])
                firing[d.condition] = False
                continue
            assert recent[-1] is True and (firing[d.condition] or (len(recent) >= k and all(recent[-k:])))
            firing[d.condition] = True
            if not d.suppressed:
                key = f"alert:{d.condition}" if d.action == "alert" else d.action
                if key in last_run:
                    assert now - last_run[key] >= cooldown
                last_run[key] = now
        for c in firing:
            assert firing[c] == (state["conditions"][c]["state"] == "firing")
