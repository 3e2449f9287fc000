"""One prompt text to its embeddings, for SD and SDXL pipelines: A1111's syntax, long prompts, clip skip.

:func:`encode_text` reads the text as the job's ``prompt_syntax`` says (:mod:`sdbatch.stages.prompts`), then:

* one segment, every weight 1 and at most 75 tokens (every plain prompt): the pipeline's own
  ``encode_prompt`` (SDXL with diffusers' ``clip_skip`` = A1111's - 1), so the pixels are plain diffusers'
  (SD with a clip skip goes through compel: diffusers' own reads ``text_encoder.text_model``, gone in
  transformers 5; compel's unweighted embeddings are the same numbers);
* otherwise compel (``truncate_long_prompts=False``): each ``BREAK`` segment is encoded on its own in 75-token
  chunks (each with its own start/end tokens, split at exactly 75 tokens: compel's ``BRUTAL`` mode) and the
  segments' chunks are concatenated, A1111's way; the weights are compel's. SDXL runs it for both text
  encoders (their penultimate layers side by side) and takes the pooled embedding from the first chunk of
  the first segment, as A1111 does.

Clip skip N reads the text encoder's output N layers from the top (then its final layer norm, SD) through
compel's ``PENULTIMATE_HIDDEN_STATES_*`` read on a view of the encoder whose top N - 2 (SD) or N - 1 (SDXL) hidden
states are hidden, so compel computes what diffusers' ``clip_skip`` computes. Torch and compel are imported
only here, when a job renders.
"""

from __future__ import annotations

from typing import Any

from ..runtime.embeddings import encoders, textual_inversion_manager
from .prompts import is_unweighted, parse_attention, plain_text

CHUNK_TOKENS = 75  # tokens of a chunk, without its start and end tokens


def encode_text(pipe: Any, text: str, *, xl: bool, syntax: str | None, clip_skip: int | None) -> tuple[Any, Any]:
    """(prompt embeddings [1, 77 x chunks, dim], pooled embeddings or None) of ``text`` (batch of one)."""
    import torch

    segments = [[(text, 1.0)]] if syntax == "plain" else parse_attention(text)
    skip = clip_skip if clip_skip and clip_skip > 1 else None
    check_clip_skip(pipe, skip, xl)
    # diffusers' SD clip_skip reads text_encoder.text_model, which transformers 5 no longer has: compel reads it
    if is_unweighted(segments) and (xl or skip is None):
        literal = plain_text(segments)
        if all(token_count(pipe, tokenizer, literal) <= CHUNK_TOKENS for tokenizer, _ in encoders(pipe)):
            with torch.no_grad():
                out = pipe.encode_prompt(literal, device=pipe._execution_device, num_images_per_prompt=1,
                                         do_classifier_free_guidance=False,
                                         clip_skip=None if skip is None else skip - 1)
            return (out[0], out[2]) if xl else (out[0], None)
    with torch.no_grad():
        return weighted_embeddings(pipe, segments, xl=xl, clip_skip=skip)


def max_clip_skip(pipe: Any, xl: bool) -> int:
    """The deepest clip skip the text encoders have layers for: N needs N - 1 layers below the top (SD) or N
    (SDXL: it starts at the penultimate layer)."""
    layers = [int(getattr(encoder.config, "num_hidden_layers", 0) or 0) for _, encoder in encoders(pipe)]
    return min((n + 1 - xl for n in layers if n), default=12)


def check_clip_skip(pipe: Any, clip_skip: int | None, xl: bool) -> None:
    if clip_skip and clip_skip > max_clip_skip(pipe, xl):
        raise ValueError(f"clip_skip {clip_skip} reaches below the text encoder's layers "
                         f"(at most {max_clip_skip(pipe, xl)} for this model)")


def token_count(pipe: Any, tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` without start/end tokens, a multi-vector embedding's token counted per vector."""
    if hasattr(pipe, "maybe_convert_prompt"):
        text = pipe.maybe_convert_prompt(text, tokenizer)
    return len(tokenizer(text, truncation=False, add_special_tokens=False, verbose=False)["input_ids"])


class SkipLayers:
    """A text encoder whose top ``skip`` hidden states are left out of its output (compel reads the penultimate
    one of what it sees), and whose ``text_model`` is found in transformers 4 and 5 alike (compel takes the final
    layer norm from it); everything else is the encoder's own."""

    def __init__(self, encoder: Any, skip: int):
        self.encoder = encoder
        self.skip = skip

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.encoder(*args, **kwargs)
        if self.skip and getattr(out, "hidden_states", None) is not None:
            out.hidden_states = tuple(out.hidden_states[: -self.skip])
        return out

    @property
    def text_model(self) -> Any:
        return getattr(self.encoder, "text_model", self.encoder)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)


def compel_for(pipe: Any, tokenizer: Any, encoder: Any, *, xl: bool, clip_skip: int | None, pooled: bool = False) -> Any:
    """compel over one text encoder: no truncation, 75-token chunks, the layer clip skip reads."""
    from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode

    if xl:  # SDXL reads the penultimate layer; clip skip N (diffusers' N - 1) goes N - 1 further down
        kind, skip = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED, (clip_skip or 1) - 1
    elif clip_skip:
        kind, skip = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED, clip_skip - 2
    else:
        kind, skip = ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED, 0
    return Compel(tokenizer=tokenizer, text_encoder=SkipLayers(encoder, skip) if clip_skip else encoder,
                  textual_inversion_manager=textual_inversion_manager(pipe, tokenizer),
                  truncate_long_prompts=False, split_long_text_mode=SplitLongTextMode.BRUTAL,
                  returned_embeddings_type=kind, requires_pooled=pooled, device=pipe._execution_device)


def weighted_embeddings(pipe: Any, segments: list, *, xl: bool, clip_skip: int | None) -> tuple[Any, Any]:
    """compel's embeddings of A1111 segments: each encoded alone in 75-token chunks, then concatenated."""
    import torch
    from compel.prompt_parser import Conjunction, FlattenedPrompt

    per_encoder = []
    pooled = None
    for tokenizer, encoder in encoders(pipe):
        compel = compel_for(pipe, tokenizer, encoder, xl=xl, clip_skip=clip_skip)
        parts = [compel.build_conditioning_tensor_for_conjunction(Conjunction([FlattenedPrompt(list(seg))]))[0]
                 for seg in segments]
        per_encoder.append((compel, torch.cat(parts, dim=1)))
        if xl and encoder is getattr(pipe, "text_encoder_2", None):  # pooled: the first chunk's, unweighted
            first = "".join(t for t, _ in segments[0])
            pooled = compel.conditioning_provider.get_pooled_embeddings([first], device=pipe._execution_device)
    longest = max(z.shape[1] for _, z in per_encoder)
    padded = [pad_to(z, longest, compel.conditioning_provider.empty_z) for compel, z in per_encoder]
    embeds = torch.cat(padded, dim=-1) if len(padded) > 1 else padded[0]
    return embeds, pooled


def pad_to(embeds: Any, length: int, empty: Any) -> Any:
    """``embeds`` [1, n, dim] padded to ``length`` tokens with the empty prompt's chunk (A1111 pads so too)."""
    import torch

    if embeds.shape[1] >= length:
        return embeds
    chunk = empty.to(embeds.device, embeds.dtype).reshape(1, -1, embeds.shape[-1])
    repeats = -(-(length - embeds.shape[1]) // chunk.shape[1])
    return torch.cat([embeds, chunk.repeat(1, repeats, 1)], dim=1)[:, :length]
