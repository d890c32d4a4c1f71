"""L3 life cycle: one state machine, INVALID forever."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nsxpc
from nsxpc._state import ConnectionState, Lifecycle

INACTIVE, ACTIVE, SUSPENDED, INVALID = (
    ConnectionState.INACTIVE,
    ConnectionState.ACTIVE,
    ConnectionState.SUSPENDED,
    ConnectionState.INVALID,
)


def test_public_enum():
    assert nsxpc.ConnectionState is ConnectionState


def test_starts_inactive():
    lc = Lifecycle()
    assert lc.state is INACTIVE
    assert not lc.running
    assert not lc.activated
    assert not lc.invalid


def test_resume_activates():
    lc = Lifecycle()
    assert lc.resume() is True
    assert lc.state is ACTIVE
    assert lc.running and lc.activated


def test_activate_activates():
    lc = Lifecycle()
    assert lc.activate() is True
    assert lc.state is ACTIVE


def test_activate_twice_is_a_no_op():
    lc = Lifecycle()
    lc.activate()
    assert lc.activate() is False
    assert lc.state is ACTIVE
    # it did not consume a suspension either: one suspend still needs exactly one resume
    lc.suspend()
    assert lc.activate() is False
    assert lc.state is SUSPENDED
    assert lc.resume() is True
    assert lc.state is ACTIVE


def test_activate_after_resume_is_a_no_op():
    lc = Lifecycle()
    lc.resume()
    assert lc.activate() is False
    assert lc.state is ACTIVE


def test_nested_suspend_and_resume():
    lc = Lifecycle()
    lc.resume()
    lc.suspend()
    lc.suspend()
    lc.suspend()
    assert lc.state is SUSPENDED and not lc.running
    assert lc.resume() is False
    assert lc.resume() is False
    assert lc.state is SUSPENDED
    assert lc.resume() is True
    assert lc.state is ACTIVE and lc.running


def test_suspend_before_first_resume_nests_with_the_initial_suspension():
    lc = Lifecycle()
    lc.suspend()
    assert lc.resume() is False
    assert not lc.running
    assert lc.resume() is True
    assert lc.state is ACTIVE


def test_over_resume_raises():
    lc = Lifecycle()
    lc.resume()
    with pytest.raises(RuntimeError):
        lc.resume()
    assert lc.state is ACTIVE  # the failed call changed nothing
    lc.suspend()
    lc.resume()
    with pytest.raises(RuntimeError):
        lc.resume()


def test_resume_after_activate_raises():
    lc = Lifecycle()
    lc.activate()
    with pytest.raises(RuntimeError):
        lc.resume()


def test_invalidate_is_idempotent_and_true_once():
    lc = Lifecycle()
    lc.resume()
    assert lc.invalidate() is True
    assert lc.invalidate() is False
    assert lc.invalidate() is False
    assert lc.state is INVALID
    assert lc.invalid and not lc.running


@pytest.mark.parametrize("prepare", ["inactive", "active", "suspended"])
def test_invalidate_from_every_state(prepare):
    lc = Lifecycle()
    if prepare != "inactive":
        lc.resume()
    if prepare == "suspended":
        lc.suspend()
    assert lc.invalidate() is True
    assert lc.state is INVALID


def test_invalid_is_terminal():
    lc = Lifecycle()
    lc.invalidate()
    assert lc.resume() is False
    assert lc.activate() is False
    lc.suspend()
    assert lc.resume() is False  # no RuntimeError either: nothing happens after INVALID
    assert lc.state is INVALID
    assert not lc.running


@settings(max_examples=200)
@given(ops=st.lists(st.sampled_from(["resume", "suspend", "activate", "invalidate"]), max_size=30))
def test_model(ops):
    """Random operation sequences against a reference model."""
    lc = Lifecycle()
    suspends, activated, invalid, invalidations = 1, False, False, 0
    for op in ops:
        if op == "resume":
            if invalid:
                assert lc.resume() is False
            elif suspends == 0:
                with pytest.raises(RuntimeError):
                    lc.resume()
            else:
                suspends -= 1
                activated = True
                assert lc.resume() is (suspends == 0)
        elif op == "activate":
            if invalid or activated:
                assert lc.activate() is False
            else:
                suspends -= 1
                activated = True
                assert lc.activate() is (suspends == 0)
        elif op == "suspend":
            lc.suspend()
            if not invalid:
                suspends += 1
        else:
            first = not invalid
            invalid = True
            invalidations += first
            assert lc.invalidate() is first
        expected = INVALID if invalid else INACTIVE if not activated else SUSPENDED if suspends else ACTIVE
        assert lc.state is expected
        assert lc.running is (expected is ACTIVE)
    assert invalidations <= 1
