import numpy as np
import pytest

from hemaflow.schedules import triangular


def seed_000_reference(epoch, lr0, stepsize, scale):
    """Seed 000's start_at='max' branch (Appendix B) with its undefined `stepsize` repaired; lr0 is its minimum."""
    if epoch == 0:
        return lr0 * scale
    ramp = np.cumsum(np.concatenate([np.ones(stepsize), -np.ones(stepsize)])) / stepsize
    return (lr0 * scale - lr0 * (scale - 1) * ramp)[(epoch - 1) % (2 * stepsize)]


def test_seed_000_pairs_a_constant_rate_with_the_cycle_of_the_same_mean():
    # Seed 000, Hyperparameter Selection: constant 1e-4 vs. a cycle with "min LR of 4e-5".
    lr = triangular(1e-4, step_size=4, scale=4, start_at="max")
    values = [lr(e) for e in range(17)]
    assert min(values) == pytest.approx(4e-5) and max(values) == pytest.approx(1.6e-4)
    assert values[0] == values[8] == values[16] == pytest.approx(1.6e-4)
    assert values[4] == values[12] == pytest.approx(4e-5)
    assert values[2] == pytest.approx(1e-4)  # linear: halfway down at half a step
    assert np.allclose(np.abs(np.diff(values)), 3e-5)


@pytest.mark.parametrize(("step_size", "scale", "start_at"), [(4, 4, "max"), (3, 6, "min"), (1, 2, "max"), (5, 1, "min")])
def test_every_whole_cycle_averages_the_constant_rate(step_size, scale, start_at):
    lr = triangular(2.5e-4, step_size=step_size, scale=scale, start_at=start_at)
    for cycle in range(3):
        epochs = range(2 * step_size * cycle, 2 * step_size * (cycle + 1))
        assert np.mean([lr(e) for e in epochs]) == pytest.approx(2.5e-4)


@pytest.mark.parametrize(("step_size", "scale"), [(4, 4), (3, 6), (1, 2)])
def test_matches_the_seed_code_it_repairs(step_size, scale):
    lr = triangular(2e-4, step_size=step_size, scale=scale, start_at="max")
    minimum = 2 * 2e-4 / (1 + scale)
    for epoch in range(5 * step_size):
        assert lr(epoch) == pytest.approx(seed_000_reference(epoch, minimum, step_size, scale))


def test_start_at_min_is_the_same_cycle_shifted_by_a_step():
    up, down = triangular(1e-3, 4, 4, start_at="min"), triangular(1e-3, 4, 4, start_at="max")
    assert up(0) == pytest.approx(4e-4)
    assert [up(e) for e in range(12)] == pytest.approx([down(e + 4) for e in range(12)])


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="train.cyclic.start_at"):
        triangular(1e-3, 4, 4, start_at="middle")
    with pytest.raises(ValueError, match="step_size"):
        triangular(1e-3, step_size=0, scale=4, start_at="max")
