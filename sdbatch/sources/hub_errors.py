"""Why a Hugging Face Hub model cannot be had, in words a user can act on.

:func:`unavailable` turns whatever huggingface_hub or diffusers raised (walking its causes: diffusers wraps
the hub's error in its own) into a :class:`~sdbatch.errors.ModelUnavailable` whose one line first names the
case whole, never cut:

- ``offline``: not in the local cache, and offline (``HF_HUB_OFFLINE=1``, or ``LocalEntryNotFoundError``);
- ``network``: the Hub could not be reached (DNS, refused connection, timeout, proxy);
- ``gated``: a gated repository: it needs a token of an account that accepted its terms;
- ``not_found``: no such repository (or a private one, which looks the same without a token);
- ``revision``: no such revision; ``not_pipeline``: the repository has no file a pipeline needs;
- ``http``: another answer from the Hub (5xx, 429, ...); ``other``: anything else.

Hints follow on the same line, after ``; to fix:``: what to do (``hf download <id>``, a local ``.safetensors``
path, ``--rehearse``), and the underlying error's own words (whitespace collapsed, shortened at a word boundary at most).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from ..errors import ModelUnavailable, one_line

HUB_URL = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (as the environment says now, or as huggingface_hub read it at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or during (``__cause__`` and ``__context__``), once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        item = stack.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack.extend(e for e in (item.__cause__, item.__context__) if e is not None)


def _network_classes() -> tuple[type, ...]:
    """Exception classes meaning "no connection": the standard library's and those of the HTTP clients that
    huggingface_hub and diffusers use (httpx2 / httpx, requests), when they are loaded."""
    classes: list[type] = [ConnectionError, TimeoutError]
    for name, attrs in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                        ("requests.exceptions", ("ConnectionError", "Timeout"))):
        module = sys.modules.get(name)
        classes += [getattr(module, attr) for attr in attrs if module is not None and hasattr(module, attr)]
    import socket

    classes.append(socket.gaierror)
    return tuple(classes)


def classify(exc: BaseException) -> tuple[str, BaseException]:
    """(case, the exception that shows it) of a failed fetch; see the module's docstring for the cases."""
    from huggingface_hub import errors as hf

    chain = list(causes(exc))

    def first(*classes: type) -> BaseException | None:
        return next((e for e in chain if isinstance(e, classes)), None)

    for case, classes in (("gated", (hf.GatedRepoError,)), ("not_found", (hf.RepositoryNotFoundError,)),
                          ("revision", (hf.RevisionNotFoundError,)),
                          ("not_pipeline", (hf.RemoteEntryNotFoundError,))):
        found = first(*classes)
        if found is not None:
            return case, found
    offline = first(hf.OfflineModeIsEnabled)
    if offline is not None:
        return "offline", offline
    network = first(*_network_classes())
    if network is not None:
        return "network", network
    local = first(hf.LocalEntryNotFoundError)
    if local is not None:
        return "offline", local
    http = first(hf.HfHubHTTPError)
    if http is not None:
        return "http", http
    return "other", exc


def _said(exc: BaseException) -> str:
    text = one_line(str(exc), 600)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unavailable(model_id: str, revision: str, exc: BaseException, cache_dir: str, what: str = "model",
                pipeline: bool = True) -> ModelUnavailable:
    """The :class:`ModelUnavailable` for hub model ``model_id`` whose fetch raised ``exc``."""
    case, shown = classify(exc)
    name = f"{what} {model_id!r}" + (f" at revision {revision!r}" if revision not in ("", "main") else "")
    page = f"{HUB_URL}/{model_id}"
    download = f"`hf download {model_id}" + (f" --revision {revision}`" if revision not in ("", "main") else "`")
    local = {"model": "set model: to a local .safetensors file (or diffusers folder)",
             "pipeline_config": "set pipeline_config: to a local folder holding model_index.json"}.get(
        what, "give it as a local .safetensors file (or diffusers folder)")
    rehearse = "try the recipe offline with --rehearse (tiny built-in models)"
    if case == "offline":
        why = "HF_HUB_OFFLINE=1" if hub_offline() else "the Hub was not asked"
        first = f"{name} is not in the local Hugging Face cache ({cache_dir}) and downloads are off ({why})"
        todo = [f"to fix: where there is network, {download} (into the same cache: HF_HOME or HF_HUB_CACHE), "
                "then run again; or unset HF_HUB_OFFLINE", f"or {local}", f"or {rehearse}"]
    elif case == "network":
        first = (f"{name} could not be downloaded: no network (the Hugging Face Hub, {HUB_URL}, could not be reached)"
                 f" and it is not in the local cache ({cache_dir})")
        todo = [f"to fix: check the connection (or HTTPS_PROXY) and run again, or {download} where there is "
                "network", f"or {local}", f"or {rehearse}"]
    elif case == "gated":
        first = (f"{name} is gated: downloading it needs a Hugging Face token of an account that has accepted its "
                 "terms")
        todo = [f"to fix: accept its terms at {page}, log in with `hf auth login` (or set HF_TOKEN), then "
                f"{download} or run again", f"or {local}", f"or {rehearse}"]
    elif case == "not_found":
        first = (f"{name}: no such repository on the Hugging Face Hub (a private one looks the same without a "
                 "token that can read it)")
        todo = [f"to fix: check the name ({page}); if it is private, log in with `hf auth login` (or set HF_TOKEN),"
                f" then {download}", f"or {local}", f"or {rehearse}"]
    elif case == "revision":
        first = f"{name}: the repository has no such revision (branch, tag or commit)"
        todo = [f"to fix: check the revision after '@' ({page}/tree/main lists the branches); then {download}",
                f"or {local}", f"or {rehearse}"]
    elif case == "not_pipeline":
        need = "a diffusers pipeline (model_index.json)" if pipeline else "the files it needs (config.json)"
        first = f"{name}: the repository is not {need}"
        todo = [f"to fix: for a single checkpoint, download its .safetensors file ({page}/tree/main) and give its "
                f"path as the {what}", f"or {rehearse}"]
    else:
        status = getattr(getattr(shown, "response", None), "status_code", None)
        answer = f" (the Hub answered {status})" if status else ""
        first = f"{name} could not be downloaded{answer}"
        todo = [f"to fix: run again later, or {download}", f"or {local}", f"or {rehearse}"]
    return ModelUnavailable(first, case=case, hints=[*todo, f"cause: {_said(shown)}"])
