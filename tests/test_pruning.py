"""Pruning: per-view rules and their parsing."""

from __future__ import annotations

import numpy as np
import pytest

from milco_os.vectors.pruning import Pruning, mass, term_stats, threshold, topk
from milco_os.vectors.sparse import SparseVector, SparseView


def random_view(seed: int, n: int = 200) -> SparseView:
    rng = np.random.default_rng(seed)
    weights = rng.gamma(0.5, 1.0, n).astype(np.float32) + 1e-4
    return SparseView.from_arrays(np.arange(n), weights, [f"t{i}" for i in range(n)])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.85, 0.95])
def test_mass_keeps_at_least_one_minus_p_and_drops_the_lightest(seed, p):
    view = random_view(seed)
    kept = mass(view, p)
    assert kept.mass >= (1 - p) * view.mass - 1e-6
    dropped = np.setdiff1d(view.ids, kept.ids)
    if len(dropped):
        assert view.weights[np.isin(view.ids, dropped)].max() <= kept.weights.min()
        assert view.mass - kept.mass <= p * view.mass + 1e-6
        # Dropping one more (the lightest kept) term would exceed the budget p.
        assert view.mass - kept.mass + kept.weights.min() > p * view.mass - 1e-6
    assert list(kept.weights) == sorted(kept.weights, reverse=True)


def test_mass_zero_keeps_everything():
    view = random_view(0)
    assert mass(view, 0.0).to_dict() == view.to_dict()
    assert len(mass(SparseView.empty(), 0.5)) == 0


@pytest.mark.parametrize("k", [1, 10, 200, 500])
def test_topk_sizes_and_content(k):
    view = random_view(1)
    kept = topk(view, k)
    assert len(kept) == min(k, len(view))
    assert set(kept.terms) == set(view.terms[: min(k, len(view))])


def test_threshold_keeps_weights_at_or_above_t():
    view = SparseView.from_pairs([(1, "a", 0.5), (2, "b", 0.1), (3, "c", 0.05)])
    assert threshold(view, 0.1).to_dict() == {"a": 0.5, "b": pytest.approx(0.1)}


@pytest.mark.parametrize("spec", ["none", "mass:0.5", "topk:100", "threshold:0.1", "mass:0.0"])
def test_spec_round_trips(spec):
    rule = Pruning.parse(spec)
    assert Pruning.parse(str(rule)) == rule


@pytest.mark.parametrize("spec, message", [
    ("mass:1.5", "0 <= p < 1"), ("mass", "expected none"), ("topk:ten", "not a valid int"),
    ("topk:-3", "k >= 1"), ("median:3", "expected none"), ("threshold:x", "not a valid float"),
    # levels that keep no term at all, or cannot mean anything for weights >= 0
    ("topk:0", "k >= 1 \\(k = 0 keeps no term\\)"), ("threshold:0", "t > 0"),
    ("threshold:-1", "t > 0"),
])
def test_bad_specs_are_explained(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        Pruning.parse(spec)
    assert repr(spec) in str(info.value)


def test_apply_prunes_each_view_on_its_own():
    pivot = SparseView.from_pairs([(1, "a", 3.0), (2, "b", 2.0), (3, "c", 1.0)])
    echo = SparseView.from_pairs([(7, "▁x", 0.2), (8, "▁y", 0.1)])
    pruned = Pruning.parse("topk:1").apply(SparseVector(pivot, echo))
    assert pruned.pivot.to_dict() == {"a": 3.0}
    assert pruned.echo.to_dict() == {"▁x": pytest.approx(0.2)}
    assert Pruning.parse("none").apply(SparseVector(pivot, echo)) == SparseVector(pivot, echo)


def test_term_stats_counts_kept_terms():
    vectors = [SparseVector(random_view(i, n), random_view(i, 2)) for i, n in
               enumerate([10, 20, 30])]
    stats = term_stats(vectors)
    assert stats["texts"] == 3
    assert stats["pivot_mean"] == 20 and stats["echo_mean"] == 2 and stats["total_mean"] == 22
    assert 20 < stats["pivot_p95"] <= 30
    assert term_stats([])["pivot_mean"] == 0.0


def test_search_prunes_queries_as_the_model_is_best_searched_unless_told():
    from milco_os.cli.search import with_model_pruning
    from milco_os.pipeline.search import SearchOptions

    weights = {f"t{i}": 1.0 + i / 100 for i in range(50)}
    vector = SparseVector.from_dict({"pivot": weights, "echo": weights})
    recommended = with_model_pruning(SearchOptions(), "milco-small").query(vector)
    assert len(recommended.vector.pivot) == len(recommended.vector.echo) == 32
    assert set(recommended.vector.pivot.terms) == {f"t{i}" for i in range(18, 50)}  # heaviest
    told = with_model_pruning(SearchOptions(prune=Pruning.parse("none").apply), "milco-small")
    assert len(told.query(vector).vector.pivot) == 50  # --query-prune none is kept
    assert len(with_model_pruning(SearchOptions(), "my-model").query(vector).vector.pivot) == 50
