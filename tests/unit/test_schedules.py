import numpy as np
import pytest

from hemaflow.schedules import triangular


def seed_000_reference(epoch, lr0, stepsize, scale):
    """Seed 000's start_at='max' branch (Appendix B) with its undefined `stepsize` repaired."""
    if epoch == 0:
        return lr0 * scale
    ramp = np.cumsum(np.concatenate([np.ones(stepsize), -np.ones(stepsize)])) / stepsize
    return (lr0 * scale - lr0 * (scale - 1) * ramp)[(epoch - 1) % (2 * stepsize)]


def test_two_cycles_start_at_max_reach_min_and_return():
    lr = triangular(1e-3, step_size=4, scale=4, start_at="max")
    values = [lr(e) for e in range(17)]
    assert values[0] == pytest.approx(4e-3)
    assert values[4] == pytest.approx(1e-3)
    assert values[8] == pytest.approx(4e-3)
    assert values[12] == pytest.approx(1e-3)
    assert values[16] == pytest.approx(4e-3)
    assert values[2] == pytest.approx(2.5e-3)  # linear: halfway down at half a step
    assert np.allclose(np.abs(np.diff(values)), 0.75e-3)
    assert min(values) == pytest.approx(1e-3) and max(values) == pytest.approx(4e-3)


@pytest.mark.parametrize(("step_size", "scale"), [(4, 4), (3, 6), (1, 2)])
def test_matches_the_seed_code_it_repairs(step_size, scale):
    lr = triangular(2e-4, step_size=step_size, scale=scale, start_at="max")
    for epoch in range(5 * step_size):
        assert lr(epoch) == pytest.approx(seed_000_reference(epoch, 2e-4, step_size, scale))


def test_start_at_min_is_the_same_cycle_shifted_by_a_step():
    up, down = triangular(1e-3, 4, 4, start_at="min"), triangular(1e-3, 4, 4, start_at="max")
    assert up(0) == pytest.approx(1e-3)
    assert [up(e) for e in range(12)] == pytest.approx([down(e + 4) for e in range(12)])


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="train.cyclic.start_at"):
        triangular(1e-3, 4, 4, start_at="middle")
    with pytest.raises(ValueError, match="step_size"):
        triangular(1e-3, step_size=0, scale=4, start_at="max")
