"""How `posewatch evaluate` and the benchmark group scorers into passes over a split."""

import pytest

from pipelines.offline.evaluation import scoring_passes


def test_sample_scorers_share_a_pass_per_sampler_and_nll_runs_once() -> None:
    passes = scoring_passes(["nll", "kde", "minhde"], ["gru-nf", "gru-snf"])
    assert passes == [
        ("gru-nf", ("minhde", "kde")),
        ("gru-snf", ("minhde", "kde")),
        (None, ("nll",)),
    ]
    assert scoring_passes(["nll"], ["gru-nf", "gru-snf"]) == [(None, ("nll",))]
    assert scoring_passes(["minfde"], []) == []
    # fused needs futures (its motion part); posture alone needs none and runs with nll.
    assert scoring_passes(["posture", "fused", "nll"], ["gru-nf"]) == [
        ("gru-nf", ("fused",)),
        (None, ("nll", "posture")),
    ]


def test_an_unknown_scorer_is_named_before_anything_is_scored() -> None:
    with pytest.raises(ValueError, match=r"'mindist'.*choose from minhde"):
        scoring_passes(["minhde", "mindist"], ["gru-nf"])
