"""Comparing configurations: the probability of improvement, performance profiles and the
seeds a difference needs, from worked numbers and rliable's and Colas et al.'s
definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipelines.results.compare import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    compare,
    probability_of_improvement,
    profile,
    seeds_needed,
    welch_power,
)


def test_the_probability_of_improvement_of_hand_made_samples_ties_counting_half():
    # [3, 4] beats [1, 2] on all 4 pairs; [1, 2] against [2, 2]: 1 < 2 twice, 2 = 2 twice.
    assert probability_of_improvement([3, 4], [1, 2]) == 1.0
    assert probability_of_improvement([1, 2], [3, 4]) == 0.0
    assert probability_of_improvement([1, 2], [2, 2]) == 0.25
    # [1, 3, 5] against [2, 3]: pairs above 1 + 0.5 (3 = 3) + 2 (5 > 2, 5 > 3) = 3.5 of 6.
    assert probability_of_improvement([1, 3, 5], [2, 3]) == pytest.approx(3.5 / 6)
    # The same runs on both sides: 1/2, as rliable returns for equal arrays.
    assert probability_of_improvement([1, 2, 2, 7], [1, 2, 2, 7]) == 0.5


def test_it_is_rliables_mann_whitney_statistic_over_n_times_m():
    # rliable: scipy.stats.mannwhitneyu(x, y, alternative="greater") U / (n m), per task.
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.integers(0, 6, rng.integers(2, 9)).astype(float)  # ties on purpose
        y = rng.integers(0, 6, rng.integers(2, 9)).astype(float)
        u = stats.mannwhitneyu(x, y, alternative="greater").statistic
        assert probability_of_improvement(x, y) == pytest.approx(u / (len(x) * len(y)))
        assert probability_of_improvement(x, y) + probability_of_improvement(
            y, x) == pytest.approx(1.0)


def test_the_profile_is_the_fraction_of_runs_above_each_tau_with_its_band():
    fraction, low, high = profile([1, 2, 3, 4], [0, 1, 1.5, 3.5, 4])
    # Strictly above: all 4 above 0; 3 above 1 (1 is not); 3 above 1.5; 1 above 3.5; none
    # above 4.
    assert fraction.tolist() == [1.0, 0.75, 0.75, 0.25, 0.0]
    assert (low <= fraction).all() and (fraction <= high).all()
    # Every resample of four runs is above 0 and none above 4: bands of no width there.
    assert (low[0], high[0], low[-1], high[-1]) == (1.0, 1.0, 0.0, 0.0)
    assert 0 < high[3] and low[1] < 0.75 < high[1]


@pytest.mark.parametrize("effect,seeds", [(0.5, 51), (0.8, 21), (1.0, 14), (1.5, 7)])
def test_the_seeds_needed_match_the_power_table_of_a_one_sided_t_test(effect, seeds):
    # Cohen's d with equal spreads, one-sided alpha 0.05, power 0.8: the exact t-test's
    # sample sizes per group (G*Power: 51, 21, 14, 7). Welch's degrees of freedom are
    # Student's 2(n - 1) when the spreads are equal.
    assert seeds_needed(effect, 1.0, 1.0) == seeds
    assert welch_power(effect, 1.0, 1.0, seeds) >= 0.8 > welch_power(effect, 1.0, 1.0,
                                                                       seeds - 1)
    # The scale is the difference against the spread: ten times both, the same seeds.
    assert seeds_needed(10 * effect, 10.0, 10.0) == seeds


def test_a_difference_too_small_for_100_seeds_or_none_is_not_detectable():
    assert seeds_needed(0.2, 1.0, 1.0) is None  # 310 seeds per group
    assert seeds_needed(0.0, 1.0, 1.0) is None
    assert seeds_needed(1.0, 0.0, 0.0) == 2  # no spread at all: the fewest that show one


def test_a_clear_gap_is_better_and_the_reverse_worse_and_overlap_shows_nothing():
    good, bad = [5.1, 5.3, 4.9, 5.2, 5.0], [-120.0, -95.5, -101.2, -130.8, -99.0]
    ahead = compare("taxi", "25000 episodes", good, "300 episodes", bad)
    assert (ahead.probability, ahead.probability_low, ahead.probability_high) == (1, 1, 1)
    assert ahead.verdict == BETTER and ahead.seeds_needed == 2
    assert ahead.iqm_difference == pytest.approx(5.1 - (-101.2 - 99.0 - 120.0) / 3)
    assert ahead.iqm_difference_low > 0
    assert compare("taxi", "300 episodes", bad, "25000 episodes", good).verdict == WORSE
    same = compare("taxi", "a", [1.0, 2.0, 3.0, 4.0, 5.0], "b", [1.5, 2.5, 3.0, 4.0, 4.5])
    assert same.verdict == NO_DIFFERENCE and same.probability_low < 0.5 < same.probability_high
    assert same.seeds_needed is None


def test_one_seed_a_side_is_refused():
    with pytest.raises(ValueError, match="a comparison needs 2 or more a side"):
        compare("taxi", "a", [1.0], "b", [1.0, 2.0])
