"""``controlnet:`` in a recipe: the unit model a stage (or ``defaults``) lists, and the reference a job keeps.

A recipe's unit (:class:`ControlUnit`, keys as issue 12 writes them)::

    controlnet:
      - model: lllyasviel/control_v11p_sd15_canny   # hub id, local diffusers folder, .safetensors, built-in
        image: edges/castle.png    # file, folder/glob (matched to inputs by stem), stage name, or a video;
                                   # omitted: the stage's own input image
        preprocess: canny          # none | canny | depth | controlnet_aux's (lineart, softedge, openpose, ...)
        low: 100                   # canny thresholds
        high: 200
        scale: 1.0                 # controlnet_conditioning_scale, 0..2; a list sweeps
        start: 0.0                 # control_guidance_start
        end: 1.0                   # control_guidance_end
        depth_model: depth-anything/Depth-Anything-V2-Small-hf   # preprocess: depth (animate 3d's key/default)
        annotators: lllyasviel/Annotators   # controlnet_aux preprocessors: hub id or folder of their weights

What a job keeps (:class:`ControlRef`, in its params, so in its id and the manifest's ``params``): the model's
identity, where the control image comes from (``source``: the stage's own ``input``, ``files`` of the image
pattern with each file's sha256, a ``video``) and every number above. Pure pydantic: no torch, no OpenCV.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_serializer

from .types import StrictModel

#: preprocessors sdbatch does itself
BUILTIN_PREPROCESSORS = ("none", "canny", "depth")
#: preprocessors of the optional ``controlnet-aux`` extra: name -> controlnet_aux detector class
AUX_PREPROCESSORS = {
    "lineart": "LineartDetector",
    "lineart_anime": "LineartAnimeDetector",
    "softedge": "HEDdetector",
    "hed": "HEDdetector",
    "pidi": "PidiNetDetector",
    "openpose": "OpenposeDetector",
    "mlsd": "MLSDdetector",
    "normalbae": "NormalBaeDetector",
    "scribble": "HEDdetector",
    "shuffle": "ContentShuffleDetector",
    "mediapipe_face": "MediapipeFaceDetector",
}
AUX_INSTALL = 'pip install -e ".[controlnet-aux]"'
#: the weights files each preprocessor's ``from_pretrained`` reads from the ``annotators`` folder / hub repo
AUX_WEIGHTS = {
    "lineart": ("sk_model.pth", "sk_model2.pth"), "lineart_anime": ("netG.pth",), "softedge": ("ControlNetHED.pth",),
    "hed": ("ControlNetHED.pth",), "scribble": ("ControlNetHED.pth",), "pidi": ("table5_pidinet.pth",),
    "openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"), "mlsd": ("mlsd_large_512_fp32.pth",),
    "normalbae": ("scannet.pt",), "shuffle": (), "mediapipe_face": (),
}
#: preprocessors that need one more package beside controlnet_aux: name -> (module, install command)
AUX_NEEDS = {"mediapipe_face": ("mediapipe", "pip install mediapipe")}
#: A1111 sd-webui-controlnet's module names (the infotext's ``Module:``)
A1111_MODULES = {"lineart": "lineart_realistic", "softedge": "softedge_hed", "hed": "softedge_hed",
                 "pidi": "softedge_pidinet", "scribble": "scribble_hed", "normalbae": "normal_bae"}
DEFAULT_ANNOTATORS = "lllyasviel/Annotators"
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"  # animate 3d's default
Preprocess = Literal["none", "canny", "depth", "lineart", "lineart_anime", "softedge", "hed", "pidi", "openpose",
                     "mlsd", "normalbae", "scribble", "shuffle", "mediapipe_face"]
Threshold = Annotated[StrictInt, Field(ge=0, le=255)]


def aux_resolution(side: int) -> int:
    """The resolution a controlnet_aux detector runs at for an image whose shorter side is ``side``: that side
    rounded up to a multiple of 64 (controlnet_aux rounds each side to a multiple of 64, so below 32 px a side
    would vanish); its output is resized back to the image's size."""
    return max(64, -(-side // 64) * 64)


def aux_installed() -> bool:
    """Whether the optional ``controlnet_aux`` package can be imported (found without importing it)."""
    return importlib.util.find_spec("controlnet_aux") is not None


class ControlUnit(StrictModel):
    """One ControlNet of a stage's ``controlnet:`` list."""

    model: Annotated[str, Field(min_length=1)]
    image: Annotated[str, Field(min_length=1)] | None = None
    preprocess: Preprocess = "none"
    low: Threshold = 100
    high: Threshold = 200
    scale: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0  # A1111's Control Weight range
    start: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    end: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    depth_model: Annotated[str, Field(min_length=1)] = DEFAULT_DEPTH_MODEL
    annotators: Annotated[str, Field(min_length=1)] = DEFAULT_ANNOTATORS  # controlnet_aux's weights (AUX_WEIGHTS)

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) of each problem the unit's fields have together (reported by the planner at the
        field's own line)."""
        found = []
        if self.start >= self.end:
            found.append(("start", f"start ({self.start}) must be below end ({self.end}); both in 0..1"))
        if self.preprocess == "canny" and self.low > self.high:
            found.append(("low", f"low ({self.low}) must not be above high ({self.high})"))
        if self.preprocess in AUX_PREPROCESSORS and not aux_installed():
            found.append(("preprocess", f"{self.preprocess!r} needs controlnet_aux, which is not installed: "
                                        f"{AUX_INSTALL}"))
        elif self.preprocess in AUX_NEEDS and importlib.util.find_spec(AUX_NEEDS[self.preprocess][0]) is None:
            module, install = AUX_NEEDS[self.preprocess]
            found.append(("preprocess", f"{self.preprocess!r} needs {module}, which is not installed: {install}"))
        return found


class ControlRef(BaseModel):
    """A ControlNet as a job uses it (identity). ``files``: the image pattern's files (recipe-relative path ->
    sha256) for ``source: files`` (one file, or a folder/glob matched to the job's input by stem); a
    ``source: input`` unit reads the job's own input image (``job.inputs[0]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str  # as the recipe wrote it (A1111's infotext names it)
    identity: str  # the loaded model's identity (ModelRef.identity(): source, id, revision)
    image: str | None = None  # as the recipe wrote it
    source: Literal["input", "files", "video"] = "input"
    files: dict[str, str] | None = None
    preprocess: str = "none"
    low: int | None = None  # canny only
    high: int | None = None
    depth_model: str | None = None  # depth only: the depth model's identity
    annotators: str | None = None  # controlnet_aux preprocessors only: their weights' identity (left out if None)
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("annotators") is None:  # ids of units without a controlnet_aux preprocessor stay as they were
            data.pop("annotators", None)
        return data


def controlnet_units(params: dict) -> list[tuple[str, str]]:
    """A1111 sd-webui-controlnet's infotext fields of a job's ControlNets: ``("ControlNet 0", "Module: canny,
    Model: control_v11p_sd15_canny, Weight: 1.0, Resize Mode: Just Resize, ...")`` (the writer quotes them). The
    control image is resized to the job's size without cropping: A1111's "Just Resize"; it is preprocessed at
    that size (Processor Res: its shorter side; a controlnet_aux one at :func:`aux_resolution` of it)."""
    units = params.get("controlnet")
    if not isinstance(units, list):
        return []
    side = min(int(params.get("width") or 512), int(params.get("height") or 512))
    out = []
    for i, unit in enumerate(u for u in units if isinstance(u, dict)):
        model = str(unit.get("model", ""))
        name = model.rsplit("/", 1)[-1].removesuffix(".safetensors")
        module = unit.get("preprocess", "none")
        res = aux_resolution(side) if module in AUX_PREPROCESSORS else side
        fields = [("Module", A1111_MODULES.get(module, module)), ("Model", name),
                  ("Weight", float(unit.get("scale", 1.0))), ("Resize Mode", "Just Resize"), ("Low Vram", False),
                  ("Processor Res", res)]
        if unit.get("preprocess") == "canny":
            fields += [("Threshold A", unit.get("low")), ("Threshold B", unit.get("high"))]
        fields += [("Guidance Start", float(unit.get("start", 0.0))), ("Guidance End", float(unit.get("end", 1.0))),
                   ("Pixel Perfect", False), ("Control Mode", "Balanced")]
        out.append((f"ControlNet {i}", ", ".join(f"{k}: {v}" for k, v in fields)))
    return out
