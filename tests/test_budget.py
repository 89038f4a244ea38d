"""The budget solver (vcon/core/budget.py) against brute force on small random cases, and its refusals."""
import itertools
import random

import pytest

from vcon.core.budget import allocate
from vcon.errors import ConfigError


def brute_force(scores, costs, budget):
    best = None
    for chosen in itertools.product(*[list(c) for c in scores.values()]):
        cost = sum(costs[g][c] for g, c in zip(scores, chosen))
        score = sum(scores[g][c] for g, c in zip(scores, chosen))
        if cost <= budget and (best is None or (score, cost) < best[:2]):
            best = (score, cost, dict(zip(scores, chosen)))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_solver_finds_what_brute_force_finds(seed):
    rng = random.Random(seed)
    groups, candidates = rng.randint(1, 6), ["p0.5", "p0.9", "q1", "r8"][: rng.randint(1, 4)]
    scores = {f"g{i}": {c: round(rng.uniform(0, 3), 2) for c in candidates} for i in range(groups)}
    costs = {f"g{i}": {c: rng.randint(1, 40) for c in candidates} for i in range(groups)}
    cheapest = sum(min(c.values()) for c in costs.values())
    budget = cheapest + rng.randint(0, 60)
    got = allocate(scores, costs, budget)
    want_score, want_cost, _ = brute_force(scores, costs, budget)
    assert sum(scores[g][c] for g, c in got.items()) == pytest.approx(want_score)
    assert sum(costs[g][c] for g, c in got.items()) == want_cost <= budget  # the cheaper among equal scores


def test_a_budget_no_allocation_meets_is_refused_naming_the_cheapest():
    scores = {"attention": {"q1": 1.0, "p0.9": 0.5}, "mlp": {"r8": 2.0}}
    costs = {"attention": {"q1": 10, "p0.9": 20}, "mlp": {"r8": 30}}
    assert allocate(scores, costs, 40) == {"attention": "q1", "mlp": "r8"}
    assert allocate(scores, costs, 50) == {"attention": "p0.9", "mlp": "r8"}
    with pytest.raises(ConfigError, match="budget=39 is not allowed: no allocation fits it; the cheapest costs 40"):
        allocate(scores, costs, 39)


def test_candidates_must_agree_between_scores_and_costs():
    with pytest.raises(ConfigError, match="group 'mlp' needs the same non-empty candidates"):
        allocate({"mlp": {"r8": 1.0}}, {"mlp": {"r4": 3}}, 10)
