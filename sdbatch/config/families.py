"""What each model family accepts, checked at validate, and a family's own defaults, applied at planning.

SD3/SD3.5 and Flux.1 (:mod:`sdbatch.sources.families`) render through diffusers' own pipelines with their own
flow-matching scheduler and T5 prompts read as plain text, so a recipe value made for SD 1.x/2.x and SDXL's
UNets and CLIP encoders is refused with what the family accepts instead (``file:line: field: message``, exit
2) rather than silently ignored: another ``scheduler``, ControlNet, IP-Adapter, textual-inversion embeddings,
``clip_skip``, A1111 weighting / ``BREAK`` under the default ``prompt_syntax: a1111``, a video stage (its
config's ``FAMILIES``), and on Flux.1 a negative prompt without ``true_cfg``. The other way round,
``max_sequence_length`` (T5 tokens) and ``true_cfg`` (Flux.1's real CFG) are refused on models without them.

Defaults (:func:`family_params`): a Flux.1 stage that sets no ``guidance`` gets diffusers' 3.5 (Flux.1-dev's
distilled guidance, Forge's "Distilled CFG Scale"; schnell ignores it) instead of 7.5, and every Flux.1 job
records ``true_cfg`` (1 = off), which is what the PNG infotext writes as ``CFG scale``. Neither touches an
SD/SDXL job. Never imports torch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..errors import Problem
from ..sources.families import FAMILY_NAMES, family_of
from ..sources.hub import cached_hub_snapshot

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..core.plan import StagePlanner
    from .recipe import LoadedRecipe
    from .stage import StageConfig

FLOW_FAMILIES = ("sd3", "flux")
#: the stage types that render with SD3 / Flux.1 (diffusers' text2img, img2img and inpaint pipelines)
STILL_TYPES = ("generate", "img2img", "inpaint")
#: Flux.1's guidance when a stage sets none (diffusers' FluxPipeline default)
FLUX_GUIDANCE = 3.5
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def _names(families: tuple[str, ...]) -> str:
    names = [FAMILY_NAMES[f] for f in families]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def stage_family(stage: StageConfig, model: str | None, base_dir: Any) -> str | None:
    """The family of the stage's model (None: unknown), looked up once per model and folder (a table of
    100,000 rows asks 100,000 times)."""
    return _family(model, base_dir) if model else None


@lru_cache(maxsize=256)
def _family(model: str, base_dir: Any) -> str | None:
    return family_of(model, base_dir, cached_hub_snapshot)


def _flow_refusals(stage: StageConfig, family: str, model: str) -> list[tuple[tuple, str]]:
    """(field path, message) for what ``stage`` sets that an SD3 / Flux.1 model cannot do."""
    from ..stages.prompts import has_syntax

    name = FAMILY_NAMES[family]
    found: list[tuple[tuple, str]] = []
    for value in stage.scheduler or ():
        if value != "default":
            found.append((("scheduler",), f"{value!r} is a scheduler for SD 1.x/2.x and SDXL UNets; {model!r} is "
                          f"{name}, which samples with its own flow-matching {FLOW_SCHEDULER} (A1111: Euler, "
                          "Simple): use scheduler: default (or leave it out)"))
            break
    unsupported = (("controlnet", "ControlNet"), ("ip_adapter", "IP-Adapter"),
                   ("embeddings", "textual-inversion embeddings (CLIP tokens of SD 1.x/2.x and SDXL)"))
    for key, what in unsupported:
        if getattr(stage, key, None):
            found.append(((key,), f"{what} is not supported on {name} models ({model!r}); remove {key} or use an "
                          "SD 1.x/2.x or SDXL model"))
    if stage.clip_skip not in (None, 1):
        found.append((("clip_skip",), f"clip_skip is for SD 1.x/2.x and SDXL; {name} ({model!r}) reads prompts "
                      "with its T5 and CLIP encoders as they are: remove clip_skip"))
    if stage.prompt_syntax != "plain":
        for key in ("prompt", "negative_prompt"):
            values = getattr(stage, key, None) or ()
            if any(isinstance(t, str) and has_syntax(t) for t in (values if isinstance(values, list) else [values])):
                found.append(((key,), f"A1111 weighting / BREAK syntax ((x:1.2), [x], BREAK) cannot be read for "
                              f"{name} ({model!r}: compel has no T5 support); set prompt_syntax: plain to pass the "
                              "text to the model as it is"))
                break
    hires = getattr(stage, "hires", None)  # sdbatch.stages.hires: its latent upscale is SD/SDXL's 4-channel latents
    if hires is not None and getattr(hires, "upscaler", None) == "latent":
        found.append((("hires", "upscaler"), f"latent upscales SD 1.x/2.x and SDXL latents; for {name} ({model!r}) "
                      "use upscaler: lanczos, sd-x4 or a model file"))
    if family == "flux" and (stage.true_cfg or 1) <= 1 and any(stage.negative_prompt or ()):
        found.append((("negative_prompt",), f"{name} ignores a negative prompt unless true_cfg > 1 (real CFG, two "
                      "transformer passes a step); set true_cfg (e.g. 4) or remove negative_prompt"))
    return found


def family_problems(loaded: LoadedRecipe, i: int, stage: StageConfig, model: str | None,
                    where: Callable[..., tuple[int, str]]) -> list[Problem]:
    """Problems with stage ``i`` (one config of it) for its model's family; none when the family is unknown.
    ``where(loaded, i, *field)``: (line, shown path) of a stage value, which may come from ``defaults``."""
    family = stage_family(stage, model, loaded.base_dir)
    if family is None or model is None:
        return []
    found: list[tuple[tuple, str]] = []
    if stage.FAMILIES is not None and family not in stage.FAMILIES:
        found.append((("model",), f"{stage.type} supports {_names(stage.FAMILIES)}; {model!r} is "
                      f"{FAMILY_NAMES[family]}"))
    elif family in FLOW_FAMILIES and stage.type in STILL_TYPES:
        found += _flow_refusals(stage, family, model)
    if stage.max_sequence_length is not None and family not in FLOW_FAMILIES:
        found.append((("max_sequence_length",), f"max_sequence_length (T5 prompt tokens) applies to "
                      f"{_names(FLOW_FAMILIES)} models; {model!r} is {FAMILY_NAMES[family]}: remove it"))
    if stage.true_cfg is not None and family != "flux":
        found.append((("true_cfg",), f"true_cfg applies to Flux.1 models; {model!r} is {FAMILY_NAMES[family]}: "
                      "use guidance"))
    problems = []
    for path, message in found:
        if path == ("model",) and ("stages", i, "model") not in loaded.lines:
            line, shown = loaded.lines.get(("model",), 0), f"stages[{i}].model"
        else:
            line, shown = where(loaded, i, *path)
        problems.append(Problem(line, shown, message))
    return problems


def family_params(planner: StagePlanner, stage: StageConfig, fixed: dict[str, Any]) -> None:
    """A family's own defaults in a stage's fixed params (identity): Flux.1's guidance and true_cfg."""
    if stage.type not in STILL_TYPES or "true_cfg" not in fixed:  # e.g. an upscale stage: no diffusion model
        return
    model = stage.model or planner.plan.recipe.model
    if stage_family(stage, model, planner.plan.loaded.base_dir) != "flux":
        return
    if stage.guidance is None:
        fixed["guidance"] = FLUX_GUIDANCE
    fixed["true_cfg"] = float(stage.true_cfg or 1.0)
