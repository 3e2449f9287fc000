"""Cross-frame attention for a restyle (``coherence.cross_frame: true``): every frame's self-attention also
attends to the keys and values of an anchor frame (frame 0), Text2Video-Zero's idea, frame by frame.

diffusers' ``CrossFrameAttnProcessor2_0`` (Text2Video-Zero) renders all frames in one batch and replaces
each frame's keys/values with the first frame's. A restyle renders frames one at a time (or in small
batches), so the anchor's keys/values are *recorded* while frame 0 renders and *replayed* later:

- :meth:`AnchorAttention.capture` wraps one pipeline call (frame 0): each self-attention layer (``attn1``)
  runs its own processor unchanged (frame 0 is exactly the frame plain img2img gives) and stores the
  ``to_k`` / ``to_v`` outputs of every call, i.e. per layer, per denoising step, both classifier-free
  guidance halves (rows ``[unconditional, conditional]``).
- :meth:`AnchorAttention.attend` wraps a later frame's call: at the ``n``-th call of a layer (the same
  denoising step, since every frame of a job runs the same timesteps) the keys/values are the frame's own
  concatenated with the anchor's of that layer and step (Text2Video-Zero *replaces* them; keeping the
  frame's own lets it follow its source while the anchor holds the style). A batch of ``N`` frames
  (rows ``[uncond x N, cond x N]``) sees each anchor half repeated ``N`` times.

The anchor depends only on frame 0's init (its source frame), seed, prompt and control image, so a
resumed run rebuilds it by rendering frame 0 again (the result is discarded: the saved PNG is kept) and
later frames are identical to an uninterrupted run's. The processors are set on the UNet for the job's
calls only and the previous ones restored after (the UNet is shared by every pipeline of the model).
Layers of another shape (spatial/group norm, 4-D input, an attention mask) keep their own processor.

Memory: the anchor holds two ``tokens x channels`` tensors per self-attention layer, CFG half and step
(SD 1.5 at 512 px in float16: about 95 MB per denoising step), on the UNet's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _Processor:
    """Wraps one self-attention layer's own processor: records (capture) or extends (attend) its K/V."""

    def __init__(self, owner: AnchorAttention, name: str, original: Any):
        self.owner, self.name, self.original = owner, name, original

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        owner = self.owner
        plain = (encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3
                 or attn.spatial_norm is not None or attn.group_norm is not None)
        if plain or owner.mode is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if owner.mode == "capture":
            owner.store.setdefault(self.name, []).append((attn.to_k(hidden_states), attn.to_v(hidden_states)))
            return self.original(attn, hidden_states, None, None, temb, *args, **kwargs)
        recorded = owner.store.get(self.name)
        step = owner.calls.get(self.name, 0)
        owner.calls[self.name] = step + 1
        if not recorded:
            return self.original(attn, hidden_states, None, None, temb, *args, **kwargs)
        anchor_k, anchor_v = recorded[min(step, len(recorded) - 1)]
        batch = hidden_states.shape[0]
        rows = anchor_k.shape[0]
        if batch % rows:
            return self.original(attn, hidden_states, None, None, temb, *args, **kwargs)
        return _attend(attn, hidden_states, _repeat(anchor_k, batch), _repeat(anchor_v, batch))


def _repeat(anchor: Any, batch: int) -> Any:
    """Anchor rows ``[h0, h1, ...]`` (one per CFG half) as ``[h0 x n, h1 x n, ...]`` for ``batch`` rows."""
    rows, tokens, channels = anchor.shape
    if rows == batch:
        return anchor
    return anchor.reshape(rows, 1, tokens, channels).expand(rows, batch // rows, tokens, channels) \
        .reshape(batch, tokens, channels)


def _attend(attn: Any, hidden_states: Any, anchor_k: Any, anchor_v: Any) -> Any:
    """diffusers' AttnProcessor2_0 for a 3-D self-attention input, keys/values extended by the anchor's."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    residual = hidden_states
    batch = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    key = torch.cat([attn.to_k(hidden_states), anchor_k.to(hidden_states.dtype)], dim=1)
    value = torch.cat([attn.to_v(hidden_states), anchor_v.to(hidden_states.dtype)], dim=1)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class AnchorAttention:
    """The anchor frame's recorded keys/values for one job, and the processors that use them."""

    def __init__(self) -> None:
        self.store: dict[str, list[tuple[Any, Any]]] = {}
        self.calls: dict[str, int] = {}
        self.mode: str | None = None

    @property
    def ready(self) -> bool:
        """Whether frame 0's keys/values have been recorded."""
        return bool(self.store)

    @contextlib.contextmanager
    def _installed(self, unet: Any, mode: str) -> Iterator[None]:
        saved = dict(unet.attn_processors)
        wrapped = {name: _Processor(self, name, proc) if name.endswith("attn1.processor") else proc
                   for name, proc in saved.items()}
        self.mode, self.calls = mode, {}
        unet.set_attn_processor(wrapped)
        try:
            yield
        finally:
            self.mode = None
            unet.set_attn_processor(saved)

    def capture(self, unet: Any) -> contextlib.AbstractContextManager[None]:
        """Record the anchor's keys/values during one pipeline call (frame 0), replacing any recorded before."""
        self.store = {}
        return self._installed(unet, "capture")

    def attend(self, unet: Any) -> contextlib.AbstractContextManager[None]:
        """One pipeline call whose self-attention also attends to the anchor's keys/values."""
        return self._installed(unet, "attend")

    def clear(self) -> None:
        self.store = {}
