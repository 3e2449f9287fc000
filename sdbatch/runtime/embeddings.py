"""Textual inversion on a shared pipeline: exactly a job's embeddings are loaded while it renders.

A model's task pipelines share one tokenizer and text encoder (``from_pipe``), so an embedding's token added for
one stage would change how another stage's prompt is tokenized (its word would become the embedding). The bank
keeps, per loaded model, the embedding set now in the tokenizer; a job wanting another set first has every
token sdbatch added removed again (diffusers' ``unload_textual_inversion``, which also cuts the text encoder's
input embeddings back to the model's own), then its own loaded (``load_textual_inversion``). Jobs sharing a set
(the usual case: a stage's jobs, batched together) load it once.

Embedding files: safetensors (``emb_params`` as A1111 saves them, diffusers' ``{token: vectors}``, SDXL's
``clip_l`` + ``clip_g``); ``.pt`` / ``.bin`` (A1111's ``string_to_param``) only with ``allow_pickle``, read with
``torch.load(weights_only=True)``; each checked against the sha256 the plan recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.job import Job
from ..errors import ModelUnavailable, one_line
from ..sources.weights import load_weights


def embedding_set(job: Job) -> tuple:
    """The job's embeddings as ((sha256, token), ...): what must be loaded while it renders."""
    return tuple((e.sha256, e.token) for e in getattr(job.params, "embeddings", None) or ())


def apply_embeddings(state: dict[str, Any], job: Job, pipe: Any) -> None:
    """Make the shared tokenizer(s) and text encoder(s) hold exactly ``job``'s embeddings; ``state`` is the
    model's (kept by the bank across jobs)."""
    wanted = embedding_set(job)
    if wanted == state.get("active", ()):
        return
    unload_all(state, pipe)
    state["active"] = None  # unknown until every embedding is in: the next job sets them again
    for (sha, token), ref in zip(wanted, job.params.embeddings or ()):
        aux = job.aux_models.get(f"embedding:{sha}")
        path = Path(aux.path) if aux is not None and aux.path else None
        if path is None:
            raise ModelUnavailable(f"embedding {ref.path!r} has no file in the plan")
        for tokenizer, encoder, vectors in per_encoder(pipe, read_embedding(path, sha, bool(job.options.allow_pickle)),
                                                       ref.path):
            width = encoder.get_input_embeddings().embedding_dim
            if vectors.shape[-1] != width:
                raise ModelUnavailable(f"embedding {ref.path!r} has vectors of {vectors.shape[-1]} values; "
                                       f"{job.model.id!r}'s text encoder takes {width} (an embedding for another "
                                       "model family?)")
            before = set(tokenizer.get_added_vocab())
            try:
                pipe.load_textual_inversion(vectors.to(encoder.dtype), token=token, tokenizer=tokenizer,
                                            text_encoder=encoder)
            except ValueError as exc:  # e.g. the token is already a word of the tokenizer's vocabulary
                raise ModelUnavailable(f"embedding {ref.path!r} (token {token!r}): "
                                       f"{one_line(str(exc), 400) or type(exc).__name__}") from None
            finally:
                added = [t for t in tokenizer.get_added_vocab() if t not in before]
                state.setdefault("added", []).append((tokenizer, encoder, added))
    state["active"] = wanted


def unload_all(state: dict[str, Any], pipe: Any) -> None:
    """Remove every token sdbatch added (and its input embeddings), newest first."""
    added = state.get("added", [])
    while added:
        tokenizer, encoder, tokens = added.pop()
        if tokens:
            pipe.unload_textual_inversion(tokens=tokens, tokenizer=tokenizer, text_encoder=encoder)


def read_embedding(path: Path, sha256: str, allow_pickle: bool) -> dict[str, Any]:
    """An embedding file's tensors (the pickle policy first), checked against the plan's sha256."""
    data = load_weights(path, sha256, allow_pickle, "embedding")
    return data if isinstance(data, dict) else {"emb_params": data}


def per_encoder(pipe: Any, data: dict[str, Any], name: str) -> list[tuple[Any, Any, Any]]:
    """(tokenizer, text encoder, vectors [n, dim]) for each encoder the embedding has vectors for."""
    pairs = encoders(pipe)
    if "clip_l" in data or "clip_g" in data:  # SDXL's: one set of vectors per text encoder
        if len(pairs) != 2:
            raise ModelUnavailable(f"embedding {name!r} is an SDXL embedding (clip_l/clip_g) for a model with one "
                                   "text encoder")
        return [(pairs[0][0], pairs[0][1], _vectors(data["clip_l"])), (pairs[1][0], pairs[1][1], _vectors(data["clip_g"]))]
    if "string_to_param" in data:  # A1111's .pt
        vectors = data["string_to_param"]["*"]
    elif "emb_params" in data:  # A1111's .safetensors
        vectors = data["emb_params"]
    elif len(data) == 1:  # diffusers': {token: vectors}
        vectors = next(iter(data.values()))
    else:
        raise ModelUnavailable(f"embedding {name!r}: not a textual-inversion file (keys: {', '.join(sorted(data))[:120]})")
    if len(pairs) != 1:
        raise ModelUnavailable(f"embedding {name!r} has vectors for one text encoder; an SDXL model needs clip_l and "
                               "clip_g")
    return [(pairs[0][0], pairs[0][1], _vectors(vectors))]


def encoders(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs the pipeline conditions on (SDXL: both, or the refiner's one)."""
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(t, e) for t, e in pairs if t is not None and e is not None]


def _vectors(value: Any) -> Any:
    return value if value.dim() > 1 else value.unsqueeze(0)


def textual_inversion_manager(pipe: Any, tokenizer: Any) -> Any:
    """compel's hook that spreads a multi-vector embedding's token over its vectors (``name`` -> ``name
    name_1 ...``, as the pipeline's own ``maybe_convert_prompt``), or None when the tokenizer holds none."""
    added = tokenizer.get_added_vocab()
    if not any(f"{token}_1" in added for token in added):
        return None
    from compel import BaseTextualInversionManager

    class Manager(BaseTextualInversionManager):
        def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
            if not token_ids:
                return token_ids
            text = pipe.maybe_convert_prompt(tokenizer.decode(token_ids), tokenizer)
            return tokenizer.encode(text, add_special_tokens=False)

    return Manager()
