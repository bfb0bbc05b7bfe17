"""gisp.schedule: targets per step, a pure function of the step."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gisp.schedule import SCHEDULES, target_sparsity


@given(st.integers(1, 40), st.floats(0.01, 0.9), st.sampled_from(SCHEDULES))
def test_every_schedule_starts_dense_ends_at_the_target_and_never_falls(steps, final, kind):
    targets = [target_sparsity(t, steps, final, kind) for t in range(steps + 1)]
    assert targets[0] == 0 and targets[-1] == pytest.approx(final, rel=1e-12)
    assert all(a <= b + 1e-15 for a, b in zip(targets, targets[1:]))
    assert targets == [target_sparsity(t, steps, final, kind) for t in range(steps + 1)]  # pure: same again


def test_a_step_outside_the_run_is_refused():
    for step in (-1, 5):
        with pytest.raises(ValueError, match=f"step {step} outside 0..4"):
            target_sparsity(step, 4, 0.4)

def test_schedules():
    assert [target_sparsity(t, 4, 0.4) for t in range(5)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    cos = [target_sparsity(t, 4, 0.4, "cosine") for t in range(5)]
    assert cos[0] == 0 and cos[-1] == pytest.approx(0.4) and cos[2] == pytest.approx(0.2)
    assert cos[1] < 0.1 and cos[3] > 0.3
    with pytest.raises(ValueError):
        target_sparsity(1, 4, 0.4, "exp")
