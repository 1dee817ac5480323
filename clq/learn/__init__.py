"""The learning phase as one pure learner: state, strategies as composable pieces, and the step that a single
run jits and a sweep vmaps (`clq.learn.step`)."""

from clq.learn.state import Event, Hyper, LearnerState
from clq.learn.step import Learner, make_learner
from clq.learn.strategies import (
    STRATEGIES,
    Strategy,
    chain,
    cwr_star,
    event_classes,
    fresh_momentum,
    make_strategy,
    plain,
)

__all__ = ["Event", "Hyper", "LearnerState", "Learner", "make_learner", "Strategy", "chain", "cwr_star",
           "event_classes", "fresh_momentum", "plain", "make_strategy", "STRATEGIES"]
