"""Learning-rate schedules against the values the specs tabulate."""
import math

import pytest

from reid_tf.training.schedules import LearningRateSchedule, parse_milestones


def test_flipreid_default_mode_matches_spec_table():
    schedule = LearningRateSchedule()
    expected = {0: 2e-6, 1: 2.4e-5, 5: 1.12e-4, 9: 2e-4, 10: 2e-4, 39: 2e-4, 40: 2e-5, 69: 2e-5,
                70: 2e-6, 100: 2e-6}
    for epoch, rate in expected.items():
        assert schedule(epoch) == pytest.approx(rate, rel=1e-9), epoch


def test_default_mode_with_derived_drop_factor():
    schedule = LearningRateSchedule(drop_factor=0, epoch_num=200)
    # drop = 100 ** (30 / 180) = 100 ** (1/6); epoch 40 is one drop after the plateau.
    assert schedule.drop() == pytest.approx(100 ** (1 / 6))
    assert schedule(40) == pytest.approx(9.28318e-5, rel=1e-5)


def test_linear_cosine_warmup_constant_modes_and_floor():
    linear = LearningRateSchedule(mode="linear", start=1e-3, end=1e-4, epoch_num=11,
                                  lower_bound=0)
    assert linear(0) == pytest.approx(1e-3) and linear(10) == pytest.approx(1e-4)
    assert linear(5) == pytest.approx(5.5e-4)
    cosine = LearningRateSchedule(mode="cosine", start=1e-3, end=1e-4, epoch_num=11,
                                  lower_bound=0)
    assert cosine(5) == pytest.approx(5.5e-4)
    assert cosine(0) == pytest.approx(1e-3) and cosine(10) == pytest.approx(1e-4)
    # Where cosine and linear differ (by hand: 5.5e-4 +- 4.5e-4 * cos(0.2 pi), cos(0.2 pi) =
    # 0.80901699; linear gives 8.2e-4 and 2.8e-4 there).
    assert cosine(2) == pytest.approx(9.1405765e-4, rel=1e-7)
    assert cosine(8) == pytest.approx(1.8594235e-4, rel=1e-7)
    assert cosine(1) == pytest.approx(5.5e-4 + 4.5e-4 * 0.95105652, rel=1e-7)
    assert linear(2) == pytest.approx(8.2e-4) and linear(8) == pytest.approx(2.8e-4)
    warmup = LearningRateSchedule(mode="warmup", start=1e-4, end=1e-3, warmup_epochs=4,
                                  lower_bound=0)
    assert [warmup(e) for e in range(5)] == pytest.approx([1e-4, 4e-4, 7e-4, 1e-3, 1e-3])
    constant = LearningRateSchedule(mode="constant", start=1e-7, end=1e-7, lower_bound=1e-6)
    assert constant(3) == 1e-6  # floored at the lower bound


def test_warmup_multistep_matches_msinet_values():
    schedule = LearningRateSchedule(mode="warmup_multistep", base=0.065,
                                    milestones=(150, 225, 300), lower_bound=0)
    expected = {0: 6.5e-4, 1: 0.007085, 5: 0.032825, 9: 0.058565, 10: 0.065, 149: 0.065,
                150: 0.0065, 224: 0.0065, 225: 6.5e-4, 300: 6.5e-5, 349: 6.5e-5}
    for epoch, rate in expected.items():
        assert schedule(epoch) == pytest.approx(rate, rel=1e-9), epoch


def test_cmnas_factors():
    schedule = LearningRateSchedule(mode="warmup_multistep", base=1.0, milestones=(40, 70),
                                    lower_bound=0)
    expected = {0: 0.01, 1: 0.109, 2: 0.208, 5: 0.505, 9: 0.901, 10: 1.0, 39: 1.0, 40: 0.1,
                70: 0.01, 119: 0.01}
    for epoch, factor in expected.items():
        assert schedule(epoch) == pytest.approx(factor), epoch


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="constant", start=1e-3, end=1e-4), "constant"),
    (dict(mode="cosine", start=1e-4, end=1e-3), "cosine"),
    (dict(mode="cosine", start=1e-4, end=1e-4), "cosine"),
    (dict(mode="nope"), "--learning_rate_mode"),
    (dict(mode="warmup", warmup_epochs=1), "warmup_epochs"),
    (dict(mode="warmup_multistep", milestones=(20, 10)), "milestones"),
])
def test_rejected_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearningRateSchedule(**kwargs)


def test_parse_milestones():
    assert parse_milestones("150, 225,300") == (150, 225, 300)
    assert parse_milestones("") == ()
    with pytest.raises(ValueError, match="learning_rate_milestones"):
        parse_milestones("a,b")
    assert math.isclose(LearningRateSchedule(mode="warmup_multistep", base=1.0,
                                             milestones=parse_milestones("2"),
                                             warmup_epochs=1, lower_bound=0)(2), 0.1)
