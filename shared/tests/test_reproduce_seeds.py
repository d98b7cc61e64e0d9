"""effrepro.reproduce.require_new_seeds: a confirmatory study's seeds share none with the earlier sets."""

import pytest
from effrepro.errors import UsageError
from effrepro.reproduce import require_new_seeds


def test_overlap_names_both_settings_and_the_repeated_seeds():
    with pytest.raises(UsageError) as err:
        require_new_seeds(seeds=range(4), confirm_seeds=(5, 3, 2))
    assert str(err.value) == "confirm_seeds repeats seeds [2, 3] of seeds: a confirmatory study needs new seeds"


def test_disjoint_sets_pass():
    require_new_seeds(seeds=range(8), confirm_seeds=range(8, 40))
    require_new_seeds(seeds=(), confirm_seeds=())
    require_new_seeds(seeds=[0, 0, 1])  # one set: nothing to repeat


def test_three_sets_each_checked_against_every_earlier_one():
    require_new_seeds(seeds=(0, 1), confirm_seeds=(2, 3), confirm2_seeds=(4, 5))
    with pytest.raises(UsageError, match=r"^confirm2_seeds repeats seeds \[1\] of seeds: "):
        require_new_seeds(seeds=(0, 1), confirm_seeds=(2, 3), confirm2_seeds=(1, 4))
    with pytest.raises(UsageError, match=r"^confirm2_seeds repeats seeds \[3\] of confirm_seeds: "):
        require_new_seeds(seeds=(0, 1), confirm_seeds=(2, 3), confirm2_seeds=(3, 4))
