"""Issue 10, item 11: a model that cannot be had says which case it is (offline and not cached, no network, no
such repository, gated), gives the whole reason on one complete first line, says what to do (``hf download
<id>``, a local ``.safetensors`` path, ``--rehearse``), exits 2 and creates nothing in the output folder.

The hub's answers are the real exception classes of huggingface_hub, made as it makes them
(``hf_raise_for_status`` on an HTTP response), raised by monkeypatched huggingface_hub / diffusers calls; the
offline case runs the real CLI with ``HF_HUB_OFFLINE=1`` and an empty ``HF_HOME``.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import requests
from conftest import run_cli
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import hf_raise_for_status

from sdbatch import cli
from sdbatch.errors import ModelUnavailable, one_line

REPO_ID = "someorg/no-such-model"
RECIPE = (f"name: x\nmodel: {REPO_ID}\n"
          "stages:\n  - {name: a, type: generate, prompt: a cat, width: 64, height: 64, steps: 2}\n")


def hub_error(status: int, code: str, url: str) -> Exception:
    """The exception huggingface_hub raises for this HTTP answer (its own ``hf_raise_for_status``)."""
    response = httpx2.Response(status, headers={"X-Error-Code": code}, request=httpx2.Request("GET", url))
    try:
        hf_raise_for_status(response)
    except Exception as exc:  # noqa: BLE001 - the one it raises is the one we want
        return exc
    raise AssertionError("hf_raise_for_status did not raise")


def not_found() -> Exception:
    return hub_error(401, "RepoNotFound", f"https://huggingface.co/api/models/{REPO_ID}/revision/main")


def gated() -> Exception:
    return hub_error(403, "GatedRepo", f"https://huggingface.co/{REPO_ID}/resolve/main/model_index.json")


def raiser(exc: Exception):
    def call(*args, **kwargs):
        raise exc
    return call


def run(tmp_path: Path, capsys, text: str = RECIPE) -> tuple[int, list[str], Path]:
    recipe = tmp_path / "x.yaml"
    recipe.write_text(text)
    out = tmp_path / "out"
    code = cli.main(["run", str(recipe), "--out", str(out)])
    return code, capsys.readouterr().err.splitlines(), out


def check_refusal(code: int, lines: list[str], out: Path, *fragments: str) -> str:
    """Exit 2, one ``error:`` line: first the complete reason naming the case, then what to do; nothing made."""
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    reason, _, hints = lines[0].partition("; to fix: ")
    for fragment in fragments:
        assert fragment in reason, reason
    assert hints, lines[0]
    assert "..." not in reason and (reason[-1].isalnum() or reason[-1] in ")."), reason  # complete, never cut
    assert "--rehearse" in hints and ".safetensors" in hints
    assert not out.exists()  # nothing created: not the folder, its lock, a manifest or a seed store
    return hints


def test_no_such_repository(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "model_info", raiser(not_found()))
    code, lines, out = run(tmp_path, capsys)
    hints = check_refusal(code, lines, out, f"'{REPO_ID}'", "no such repository on the Hugging Face Hub")
    assert f"https://huggingface.co/{REPO_ID}" in hints and "hf auth login" in hints
    assert "cause: RepositoryNotFoundError: 401 Client Error. Repository Not Found for url" in hints


def test_gated_repository_needs_a_token(tmp_path, capsys, monkeypatch):
    from diffusers import DiffusionPipeline

    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: object())  # the repo exists
    monkeypatch.setattr(DiffusionPipeline, "download", raiser(gated()))  # its files need an accepted token
    code, lines, out = run(tmp_path, capsys)
    hints = check_refusal(code, lines, out, f"'{REPO_ID}' is gated", "token")
    assert f"`hf download {REPO_ID}`" in hints and "HF_TOKEN" in hints and "accept its terms" in hints
    assert "cause: GatedRepoError: 403 Client Error. Cannot access gated repo" in hints


@pytest.mark.parametrize("error", [
    httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"),
    requests.ConnectionError("HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded"),
    ConnectionRefusedError(111, "Connection refused"),
], ids=["httpx", "requests", "builtin"])
def test_no_network(tmp_path, capsys, monkeypatch, error):
    monkeypatch.setattr(huggingface_hub, "model_info", raiser(error))
    code, lines, out = run(tmp_path, capsys)
    hints = check_refusal(code, lines, out, "no network", "could not be reached", "not in the local cache")
    assert f"`hf download {REPO_ID}`" in hints
    assert f"cause: {type(error).__name__}: " in hints


def test_a_network_error_wrapped_by_the_hub_is_still_no_network(tmp_path, capsys, monkeypatch):
    """snapshot_download raises LocalEntryNotFoundError *from* the connection error: the cause decides."""
    try:
        try:
            raise httpx2.ConnectError("[Errno 101] Network is unreachable")
        except httpx2.ConnectError as inner:
            raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub") from inner
    except LocalEntryNotFoundError as exc:
        wrapped = exc
    monkeypatch.setattr(huggingface_hub, "model_info", raiser(wrapped))
    code, lines, out = run(tmp_path, capsys)
    check_refusal(code, lines, out, "no network")


def test_not_in_the_cache_while_offline(tmp_path, capsys, monkeypatch):
    error = LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic has been "
                                    "disabled. To enable hf.co look-ups and downloads online, set "
                                    "'local_files_only' to False.")
    monkeypatch.setattr(huggingface_hub, "model_info", raiser(error))
    code, lines, out = run(tmp_path, capsys)
    hints = check_refusal(code, lines, out, "is not in the local Hugging Face cache", "downloads are off")
    assert f"`hf download {REPO_ID}`" in hints and "HF_HUB_OFFLINE" in hints


def test_a_hub_vae_that_does_not_exist_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "model_info", raiser(not_found()))
    text = ("name: x\nmodel: sdbatch/tiny-sd\nstages:\n  - {name: a, type: generate, prompt: a cat, width: 64, "
            f"height: 64, steps: 2, vae: {REPO_ID}}}\n")
    code, lines, out = run(tmp_path, capsys, text)
    check_refusal(code, lines, out, f"hub model '{REPO_ID}'", "no such repository")


def test_offline_with_an_empty_cache_through_the_real_cli(tmp_path):
    """No monkeypatching: HF_HUB_OFFLINE=1 and an empty HF_HOME, as on a machine that never downloaded it."""
    recipe = tmp_path / "x.yaml"
    recipe.write_text(RECIPE)
    home = tmp_path / "hf-home"
    home.mkdir()
    out = tmp_path / "out"
    result = run_cli("run", recipe, "--out", out, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(home),
                                                       "HF_HUB_CACHE": ""})
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: model '{REPO_ID}' is not in the local Hugging Face cache ({home / 'hub'}) "
                               "and downloads are off (HF_HUB_OFFLINE=1); to fix: "), result.stderr
    check_refusal(result.returncode, lines, out)
    assert f"`hf download {REPO_ID}`" in result.stderr
    assert list(home.iterdir()) == [] or not any(p.is_file() for p in home.rglob("*"))  # nothing was downloaded


def test_the_message_is_one_line_reason_first_then_what_to_do():
    exc = ModelUnavailable("model 'a/b' is gated", case="gated", hints=["to fix: log in", "or --rehearse"])
    assert str(exc) == "model 'a/b' is gated; to fix: log in; or --rehearse"
    assert exc.reason == "model 'a/b' is gated" and exc.case == "gated"


def test_a_long_reason_is_shortened_at_a_word_boundary_never_mid_word():
    text = "Repository Not Found for url: https://huggingface.co/api/models/x.\n\n" + "please check it " * 40
    short = one_line(text, 120)
    assert len(short) <= 120 and short.endswith("...") and "\n" not in short
    assert text.split()[:len(short[:-3].split())] == short[:-3].split()  # whole words only
    assert one_line("a  b\n c") == "a b c"
