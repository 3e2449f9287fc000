"""``inpaint``: repaint the white area of a mask; everything outside the mask keeps the input's pixels.

The mask is read as 8-bit grey (:func:`sdbatch.config.images.to_mode`, mode "mask"): a 16-bit mask is scaled
(65535 = white), never clipped, and a mask whose alpha channel is not fully opaque is its alpha channel
(opaque = repaint, transparent = keep). Pixels at 128 or more count as white.

Diffusers' inpaint pipeline renders the job (``image``, ``mask_image``, ``strength``, CPU generator), then
the input's own pixels are pasted back outside a feathered mask. The feather lies inside the mask
(erode, then blur), so every pixel outside the mask is exactly the input's. Previews are pasted the same way.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

import numpy as np

from ..config.stage import ImageToImageConfig
from ..config.types import Strength, Sweep
from ..core.job import Job
from .base import Rendered, StageContext
from .conditioning import ImageConditioning
from .diffusion import previews_for, run_pipeline


class InpaintStage(ImageConditioning, ImageToImageConfig):
    """inpaint: ``mask`` is one file, or a folder/glob matched to inputs by file stem (white = repaint; 16-bit
    masks are scaled; a mask with a non-opaque alpha channel is its alpha: opaque = repaint)."""

    type: Literal["inpaint"]
    mask: str
    strength: Sweep(Strength) = [1.0]


FEATHER_PX = 4


def feathered_mask(mask: Any, radius: int = FEATHER_PX) -> np.ndarray:
    """A float mask in [0, 1]: 1 well inside the white area, ramping to 0 at its edge, 0 outside it."""
    import cv2

    binary = (np.asarray(mask.convert("L"), dtype=np.uint8) >= 128).astype(np.float32)
    if radius <= 0:
        return binary
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    inner = cv2.erode(binary, kernel)
    soft = cv2.GaussianBlur(inner, (0, 0), sigmaX=radius / 2)
    return np.minimum(np.maximum(soft, inner), binary)


def paste_outside_mask(original: Any, rendered: Any, mask: Any) -> Any:
    """``rendered`` inside the (feathered) mask, ``original`` outside it."""
    from PIL import Image

    weight = feathered_mask(mask)[..., None]
    a = np.asarray(original.convert("RGB"), dtype=np.float32)
    b = np.asarray(rendered.convert("RGB"), dtype=np.float32)
    out = a * (1.0 - weight) + b * weight
    out = np.where(weight == 0, a, out)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def render(jobs: list[Job], ctx: StageContext) -> Iterator[Rendered]:
    p = jobs[0].params
    size = (p.width, p.height)
    inits = [ctx.load_image(job.inputs[0], size) for job in jobs]
    masks = [ctx.load_image(job.mask, size, mode="mask") for job in jobs]  # type: ignore[arg-type]
    if p.strength == 0:
        for job, init, mask in zip(jobs, inits, masks):
            yield Rendered(job, job.output, init.image, input_hashes=[init.sha256, mask.sha256])
        return
    from ..runtime.controlnet import prepare_control

    control = prepare_control(jobs, ctx, size, inits)
    pipe = control.pipeline(ctx, "inpaint") if control else ctx.models.pipeline(jobs[0], "inpaint")
    previews = previews_for(jobs)
    images = run_pipeline(pipe, jobs, ctx, previews, image=[init.image for init in inits],
                          mask_image=[mask.image for mask in masks], strength=p.strength, width=p.width,
                          height=p.height, **(control.kwargs(pipe) if control else {}))
    if previews is not None:  # pasted like the final image
        yield from previews.rendered(lambda i, image: paste_outside_mask(inits[i].image, image, masks[i].image))
    for i, (job, init, mask, image) in enumerate(zip(jobs, inits, masks, images)):
        yield Rendered(job, job.output, paste_outside_mask(init.image, image, mask.image),
                       input_hashes=[init.sha256, mask.sha256], extra=control.extra(i) if control else {})


CONFIG = InpaintStage
