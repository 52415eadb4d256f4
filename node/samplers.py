"""AI Horde sampler names mapped onto diffusers schedulers.

The AI Horde names come from k-diffusion (as used by A1111 and ComfyUI); diffusers ports most of them.
"exact" means the same algorithm as the k-diffusion sampler of that name; "approximate" means diffusers
has no port and the nearest solver runs instead, so images differ from another AI Horde worker's.

==============  ========================================  ==========  ======  ==============================
AI Horde name   diffusers scheduler (overrides)           match       karras  note
==============  ========================================  ==========  ======  ==============================
k_lms           LMSDiscreteScheduler                      exact       yes     coefficients integrated with
                                                                              numpy, so scipy isn't needed
k_heun          HeunDiscreteScheduler                     exact       yes
k_euler         EulerDiscreteScheduler                    exact       yes
k_euler_a       EulerAncestralDiscreteScheduler           exact       no      approximate with karras: true
                                                                              (diffusers' ancestral Euler
                                                                              has no Karras sigmas)
k_dpm_2         KDPM2DiscreteScheduler                    exact       yes
k_dpm_2_a       KDPM2AncestralDiscreteScheduler           exact       yes
k_dpm_fast      DPMSolverSinglestepScheduler (order 3,    approximate yes     DPM-Solver-3 on a fixed step
                dpmsolver)                                                    count, not DPM-fast's order
                                                                              allocation (3, 3, …, 2, 1)
k_dpm_adaptive  DPMSolverMultistepScheduler (order 3,     approximate yes     no adaptive step size: runs
                dpmsolver)                                                    exactly ddim_steps steps
k_dpmpp_2s_a    DPMSolverSinglestepScheduler (order 2,    approximate yes     stochastic single-step
                sde-dpmsolver++)                                              DPM-Solver++, not 2S ancestral
k_dpmpp_2m      DPMSolverMultistepScheduler (order 2,     exact       yes
                dpmsolver++)
dpmsolver       DPMSolverMultistepScheduler (order 2,     exact       no      the LDM DPM-Solver++ sampler:
                dpmsolver++)                                                  time-uniform steps, so karras
                                                                              is ignored
k_dpmpp_sde     DPMSolverSDEScheduler                     exact       yes     needs the torchsde package
DDIM            DDIMScheduler                             exact       no      approximate with karras: true
                                                                              (no Karras sigmas)
lcm             LCMScheduler                              exact       no      needs an LCM-distilled model
                                                                              or LoRA to give good images
==============  ========================================  ==========  ======  ==============================

Names match case-insensitively ("DDIM" and "ddim" are the same sampler). A node declares the names it
runs, and each approximation with its note, in its pops (`declared_samplers`); the coordinator shows
them with the node and routes a job only to a node that runs its sampler.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
)
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin


class UnsupportedSampler(ValueError):
    """The sampler name is unknown, or this node lacks what it needs to run it."""


class NumpyLMSDiscreteScheduler(LMSDiscreteScheduler):
    """diffusers' LMS scheduler with its coefficients integrated exactly instead of with scipy.

    Each LMS coefficient is the integral of a Lagrange basis polynomial over one sigma interval; a
    polynomial has a closed-form antiderivative, so numpy gives the same number scipy's quadrature
    approximates, and the node doesn't need scipy installed.
    """

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        sigmas = [float(self.sigmas[t - k]) for k in range(order)]
        node = sigmas[current_order]
        others = [s for k, s in enumerate(sigmas) if k != current_order]
        numerator = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
        antiderivative = (numerator / float(np.prod([node - s for s in others]))).integ()
        return float(antiderivative(float(self.sigmas[t + 1])) - antiderivative(float(self.sigmas[t])))


def _dpmsolver_sde_class() -> type[SchedulerMixin]:
    # Imported lazily: the module imports torchsde at import time.
    from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler

    return DPMSolverSDEScheduler


@dataclass(frozen=True)
class SamplerRecipe:
    """How to build the diffusers scheduler for one AI Horde sampler name."""

    scheduler: type[SchedulerMixin] | str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""  # what runs instead, for a sampler diffusers has no port of (empty: exact)
    karras: bool = True
    requires: str | None = None

    @property
    def exact(self) -> bool:
        return not self.note

    def scheduler_class(self) -> type[SchedulerMixin]:
        if isinstance(self.scheduler, str):  # "DPMSolverSDEScheduler", imported only when asked for
            return _dpmsolver_sde_class()
        return self.scheduler


_MULTISTEP_2M = {"solver_order": 2, "algorithm_type": "dpmsolver++"}
# The original DPM-Solver (not ++), which k-diffusion's DPM-fast and DPM-adaptive use; diffusers ends it at
# sigma_min (it cannot take the last step to zero).
_DPM_SOLVER_3 = {"solver_order": 3, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}

SAMPLERS: dict[str, SamplerRecipe] = {
    "k_lms": SamplerRecipe(NumpyLMSDiscreteScheduler),
    "k_heun": SamplerRecipe(HeunDiscreteScheduler),
    "k_euler": SamplerRecipe(EulerDiscreteScheduler),
    "k_euler_a": SamplerRecipe(
        EulerAncestralDiscreteScheduler, karras=False, note="with karras: true, Karras sigmas are not used"
    ),
    "k_dpm_2": SamplerRecipe(KDPM2DiscreteScheduler),
    "k_dpm_2_a": SamplerRecipe(KDPM2AncestralDiscreteScheduler),
    "k_dpm_fast": SamplerRecipe(
        DPMSolverSinglestepScheduler,
        _DPM_SOLVER_3,
        note="single-step DPM-Solver-3 on a fixed step count, not DPM-fast's order allocation",
    ),
    "k_dpm_adaptive": SamplerRecipe(
        DPMSolverMultistepScheduler,
        _DPM_SOLVER_3,
        note="multistep DPM-Solver-3 on exactly ddim_steps steps, without adaptive step size",
    ),
    "k_dpmpp_2s_a": SamplerRecipe(
        DPMSolverSinglestepScheduler,
        {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"},
        note="stochastic single-step DPM-Solver++(2), not DPM-Solver++(2S) ancestral",
    ),
    "k_dpmpp_2m": SamplerRecipe(DPMSolverMultistepScheduler, _MULTISTEP_2M),
    "dpmsolver": SamplerRecipe(DPMSolverMultistepScheduler, _MULTISTEP_2M, karras=False),
    "k_dpmpp_sde": SamplerRecipe("DPMSolverSDEScheduler", requires="torchsde"),
    "ddim": SamplerRecipe(DDIMScheduler, karras=False, note="with karras: true, Karras sigmas are not used"),
    "lcm": SamplerRecipe(LCMScheduler, karras=False),
}


def check_sampler(name: str) -> SamplerRecipe:
    """The recipe for `name`, or UnsupportedSampler saying why this node can't run it."""
    recipe = SAMPLERS.get(name.lower())
    if recipe is None:
        raise UnsupportedSampler(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    if not _installed(recipe):
        raise UnsupportedSampler(
            f"sampler {name!r} needs the {recipe.requires} package, which is not installed on this node"
        )
    return recipe


def make_scheduler(name: str, karras: bool, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh scheduler for sampler `name`, keeping the model's noise schedule from `base_config`.

    Pass the model's own scheduler config: keys another scheduler class doesn't know are ignored,
    and every override is set explicitly so nothing leaks from one job's sampler into the next.
    """
    recipe = check_sampler(name)
    cls = recipe.scheduler_class()
    accepted = inspect.signature(cls.__init__).parameters
    # Dropping keys the class doesn't take keeps diffusers from logging a warning on every job.
    config = {key: value for key, value in base_config.items() if key in accepted}
    overrides = dict(recipe.overrides)
    if "use_karras_sigmas" in accepted:
        # The model's own config may ask for another sigma spacing; only one may be on at a time.
        use_karras = karras and recipe.karras
        overrides.update(use_karras_sigmas=use_karras, use_exponential_sigmas=False, use_beta_sigmas=False)
    return cls.from_config(config, **overrides)


def declared_samplers() -> dict[str, Any]:
    """The pop fields naming the samplers this node runs, and what runs for each approximate one."""
    runnable = {name: recipe for name, recipe in SAMPLERS.items() if _installed(recipe)}
    return {
        "samplers": sorted(runnable),
        "approximate_samplers": {name: recipe.note for name, recipe in runnable.items() if recipe.note},
    }


def _installed(recipe: SamplerRecipe) -> bool:
    return recipe.requires is None or importlib.util.find_spec(recipe.requires) is not None
