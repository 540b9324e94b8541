"""Recipes: how :func:`disentkit.optimize` is run for one prompt pair, as plain data.

A recipe says which objective, with which weights, which step rule, and which steps the optimiser may move. Two are
named: :data:`PAPER`, the paper's own (``L_dir + 0.05 L_perc``, Adam on every step, from a switch), and :data:`TOY`,
the best one measured on the toyworld model (``benchmarks/optimize_report.py``; docs/learning.md): the prompt loss
against the attribute's other values, plus 50 times the layout term ``L_struct``, per-image floors at the start's
values, tensor-wise Adam, and only the steps from the switch on (the c0 steps that lay out the content stay c0).

    result = dk.recipes.TOY.optimize(pipe, cond, tape, switch=10, clip=clip)  # from the switch at step 10
    # the prompt loss weighs c1 against "a photo of a face, neutral" and "..., frowning" for the smiling pair
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .errors import OptionError
from .losses import paper_losses, prompt_losses
from .schedules import MixSchedule
from .targets import edit_alternatives

GUARD_WEIGHT = 10.0  # the toy recipe's per-image floors: heavy enough that no training image may fall behind its start
BOOST_FROM = 20  # ``boost``'s default first step: by step 20 of 50 the toy layouts are settled
OBJECTIVES = ("prompt", "paper")


@dataclass(frozen=True)
class Recipe:
    """How the optimiser is run: the objective, its weights, the step rule, which steps it learns.

    The defaults are the best recipe measured on the toy model (:data:`TOY`); ``Recipe("paper", 0.05,
    optimizer="adam", learn_from_switch=False)`` is the paper's own (:data:`PAPER`)."""

    objective: str = "prompt"  # "prompt" (L_prompt + beta x content term) or "paper" (L_dir + beta L_perc)
    beta: float = 50.0  # weight of the content term; the prompt loss is ~0 once the style is reached, hence 50
    enough: float | str | None = None  # prompt loss hinge: a probability, "start", "start-each", or None
    keep_content: float | None = None  # weight of max(0, content - content of the start), replacing beta x it
    optimizer: str = "tensorwise-adam"  # or "adam" (the paper's)
    lr: float = 0.05
    learn_from_switch: bool = True  # learn only the steps from the switch on; the c0 steps stay c0
    content: str | None = None  # prompt objective's content term: "struct" (default) or "perc"; the paper: "perc"
    start_later: int = 0  # start from c0 until the switch + this many steps (more content), learning from the switch on
    late: float = 1.0  # the start's weight after its switch (the paper's init: 1.0-1.2)
    boost: float | None = None  # the start's weight from step boost_from on (more style once the content is settled)
    boost_from: int = BOOST_FROM
    # Weight of per-image floors on top of the sum (optimize(floors=...)): a training image that falls behind the
    # start on any term is penalised. None: GUARD_WEIGHT for the prompt objective, 0 for the paper's.
    guard: float | None = None
    # Where the floors are: "start" (the schedule the optimiser starts from; silent at iteration 0) or "switch" (the
    # switch's own images, which a boosted start may be behind on content: the optimiser then has to win it back).
    floors_at: str = "start"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise OptionError(f"objective is one of {OBJECTIVES}, not {self.objective!r}.")
        if self.objective == "paper" and (self.enough is not None or self.content not in (None, "perc")):
            raise OptionError("enough and content apply to the prompt objective only; "
                              "the paper's is L_dir + beta L_perc")
        if self.objective == "paper" and self.guard:
            raise OptionError("guard applies to the prompt objective only; the paper's is L_dir + beta L_perc")
        if self.content is None:  # frozen dataclass: fill the defaults through object.__setattr__
            object.__setattr__(self, "content", "perc" if self.objective == "paper" else "struct")
        if self.guard is None:
            object.__setattr__(self, "guard", 0.0 if self.objective == "paper" else GUARD_WEIGHT)
        if self.floors_at not in ("start", "switch"):
            raise OptionError(f"floors_at is 'start' or 'switch', not {self.floors_at!r}")
        if self.floors_at == "switch" and not self.guard:
            raise OptionError("floors_at='switch' places the guard's floors: give a guard weight > 0 (e.g. 10)")

    def terms(
        self, clip, c0: str, c1: str, alternatives: Sequence[str] | None = None, enough: float | None = None
    ) -> dict:
        """The loss terms ``{name: (weight, fn)}``: the paper's ``L_dir + beta L_perc``, or the prompt loss (c1 against
        ``alternatives``) + beta times the content term. ``alternatives`` default to the attribute's other values for
        toyworld captions (:func:`~disentkit.targets.edit_alternatives`), else ``[c0]``. ``enough`` overrides a
        numeric ``self.enough`` (the report derives it from the start's images for ``enough="start"``)."""
        if self.objective == "paper":
            return paper_losses(clip, c0, c1, self.beta)
        if alternatives is None:
            alternatives = edit_alternatives(c0, c1)
        if enough is None and not isinstance(self.enough, str):
            enough = self.enough
        return prompt_losses(clip, c0, c1, alternatives, self.beta, enough, self.content)

    def start(self, steps: int, switch: int) -> MixSchedule:
        """Where the optimiser starts: c0 until ``switch + start_later``, ``late`` after it, ``boost`` from
        ``boost_from`` on (never before the switch)."""
        return start_schedule(steps, min(switch + self.start_later, steps - 1), self.late, self.boost, self.boost_from)

    def settings(self, switch: int) -> dict:
        """The keyword arguments of :func:`disentkit.optimize` this recipe sets (step rule, learned steps, floors)."""
        return {
            "lr": self.lr,
            "optimizer": self.optimizer,
            "learn_steps": switch if self.learn_from_switch else None,
            "floors": self.guard if self.floors_at == "start" else 0.0,  # "switch" floors are placed by the caller
        }

    def optimize(self, pipe, cond, tape, switch: int, clip, alternatives: Sequence[str] | None = None, **kwargs):
        """:func:`disentkit.optimize` with this recipe, from the switch at ``switch`` (e.g. the best of a switch
        sweep). ``kwargs`` go to ``optimize`` (``iters``, ``callback``, ``checkpoint_dir``...)."""
        from .optimize import optimize

        if self.floors_at != "start" or isinstance(self.enough, str):
            raise OptionError("floors_at='switch' and enough='start'/'start-each' need the switch's images; "
                              "build those terms yourself (see benchmarks/optimize_report.py).")  # fmt: skip
        terms = self.terms(clip, cond.prompts0[0], cond.prompts1[0], alternatives)
        init = self.start(tape.steps, switch)
        return optimize(pipe, cond, init, tape, losses=terms, **{**self.settings(switch), **kwargs})


def start_schedule(steps: int, switch: int, late: float = 1.0, boost: float | None = None,
                   boost_from: int = BOOST_FROM) -> MixSchedule:  # fmt: skip
    """The paper's init (c0 before ``switch``, ``late`` after it), with the weight ``boost`` from step ``boost_from``
    on if given (from the switch on, if that comes later)."""
    init = MixSchedule.switch(steps, switch, 0.0, late)
    if boost is None:
        return init
    if not 0 <= boost_from < steps:
        raise OptionError(f"boost_from is a step of the {steps}-step sampler (0..{steps - 1}), got {boost_from}.")
    weights, first = init.weights.clone(), max(boost_from, switch)
    weights[first:] = boost
    return MixSchedule.from_array(weights, label=f"{init.label}, {boost:g} from {first}")


TOY = Recipe()
PAPER = Recipe("paper", 0.05, optimizer="adam", learn_from_switch=False)
