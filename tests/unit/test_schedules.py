import numpy as np
import pytest

from hemaflow.train.schedules import triangular


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


# ------------------------------------------------------------------ cosine with warm-up, one-cycle

from hemaflow.train.schedules import one_cycle, warmup_cosine  # noqa: E402


def test_cosine_warms_up_linearly_to_lr_then_falls_to_its_floor_at_the_last_epoch():
    lr = warmup_cosine(2e-3, epochs=20, warmup_epochs=4, floor=0.01)
    values = [lr(e) for e in range(20)]
    assert np.allclose(np.diff(values[:5]), 2e-3 / 5)  # equal steps up: linear
    assert values[0] == pytest.approx(2e-3 / 5) and values[4] == pytest.approx(2e-3)
    assert max(values) == values[4]
    assert all(a > b for a, b in zip(values[4:], values[5:]))  # then falling every epoch
    assert values[-1] == pytest.approx(2e-5)  # lr x floor at epochs - 1
    # a half cosine: halfway through the decay (epoch 4 + 15/2) the rate is halfway down
    assert (lr(11) + lr(12)) / 2 == pytest.approx((2e-3 + 2e-5) / 2, rel=0.02)
    assert warmup_cosine(1e-3, 10, 0, 0.0)(0) == pytest.approx(1e-3)  # no warm-up: starts at lr
    assert warmup_cosine(1e-3, 10, 0, 0.0)(9) == pytest.approx(0.0, abs=1e-12)


def test_one_cycle_peaks_at_peak_at_and_ends_at_lr_over_div_times_final_div():
    lr = one_cycle(1e-3, epochs=21, peak_at=0.3, div=25, final_div=1e4)
    values = [lr(e) for e in range(21)]
    assert int(np.argmax(values)) == 6 and values[6] == pytest.approx(1e-3)  # 0.3 x (21 - 1)
    assert values[0] == pytest.approx(1e-3 / 25)
    assert values[-1] == pytest.approx(1e-3 / 25 / 1e4)
    assert all(a < b for a, b in zip(values[:6], values[1:7]))  # up to the peak
    assert all(a > b for a, b in zip(values[6:], values[7:]))  # then down
    assert one_cycle(1e-3, 11, 0.5, 25, 1e4)(5) == pytest.approx(1e-3)  # peak_at moves the peak


def test_new_schedules_name_their_keys_when_misconfigured():
    with pytest.raises(ValueError, match="train.cosine.warmup_epochs"):
        warmup_cosine(1e-3, epochs=5, warmup_epochs=5, floor=0.01)
    with pytest.raises(ValueError, match="train.cosine.floor"):
        warmup_cosine(1e-3, epochs=5, warmup_epochs=1, floor=2)
    with pytest.raises(ValueError, match="train.onecycle.peak_at"):
        one_cycle(1e-3, 10, 1.5, 25, 1e4)
