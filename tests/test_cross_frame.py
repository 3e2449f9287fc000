"""``coherence.cross_frame`` (issue 12): each restyled frame's self-attention also attends to frame 0's keys and
values, recorded while frame 0 renders (sdbatch.runtime.cross_frame); and frames rendered in batches
(``batch_size``) when ``coherence.flow`` is 0.

The processors are checked on the tiny UNet directly; the stage end to end through the CLI (fresh processes,
offline, the built-in tiny model), including a run killed with SIGKILL and resumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_records, png_pixels
from helpers import frame_files, kill_run_when, run_ok

from sdbatch.io.testclips import make_test_clip
from sdbatch.io.video import probe_video

FRAMES, FPS, SIDE = 8, 8, 32

STAGE = """\
  - name: {name}
    type: restyle
    input: clips/walk.mp4
    prompt: anime style
    strength: 0.5
    steps: 2
    guidance: 3.0
    seed: 5
    seed_behavior: iter
    batch_size: {batch}
    coherence: {{flow: 0.0, color: {color}, cross_frame: {cross}}}
"""


def _recipe(root: Path, name: str, *stages: tuple[str, int, str, bool]) -> Path:
    body = "".join(STAGE.format(name=n, batch=b, color=c, cross=str(x).lower()) for n, b, c, x in stages)
    path = root / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: sdbatch/tiny-sd\nstages:\n{body}")
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cross-frame")
    make_test_clip(root / "clips" / "walk.mp4", frames=FRAMES, fps=FPS, size=(SIDE, SIDE), audio=True)
    return root


# ------------------------------------------------------------------------------------------ identity
def test_cross_frame_is_identity_only_when_on(project):
    from sdbatch.config.recipe import load_recipe
    from sdbatch.core.plan import build_plan
    from sdbatch.io.hashing import HashCache

    def job(cross: bool | None) -> tuple[str, dict]:
        recipe = project / "ids.yaml"
        coherence = "{flow: 0.5}" if cross is None else f"{{flow: 0.5, cross_frame: {str(cross).lower()}}}"
        recipe.write_text(f"name: ids\nmodel: sdbatch/tiny-sd\nstages:\n  - {{name: r, type: restyle, "
                          f"input: clips/walk.mp4, coherence: {coherence}}}\n")
        (only,) = build_plan(load_recipe(recipe), project / "out-ids", hashes=HashCache(None, {})).jobs
        return only.job_id, only.params.to_json()["coherence"]

    unset, off, on = job(None), job(False), job(True)
    assert unset == off and off[1] == {"flow": 0.5, "color": "none"}  # ids of older versions stay
    assert on[0] != off[0] and on[1] == {"flow": 0.5, "color": "none", "cross_frame": True}


# -------------------------------------------------------------------------------- the processors
@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    from sdbatch.sources.tiny import builtin_model_path

    return UNet2DConditionModel.from_pretrained(builtin_model_path("sdbatch/tiny-sd") / "unet").eval()


def test_anchor_keys_values_are_recorded_then_attended(unet):
    import torch

    from sdbatch.runtime.cross_frame import AnchorAttention

    gen = torch.Generator().manual_seed(0)
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=gen)  # rows: [uncond, cond]
    frame0, frame1 = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(2))

    def step(latents: torch.Tensor, t: int, enc: torch.Tensor = text) -> torch.Tensor:
        return unet(latents, t, encoder_hidden_states=enc).sample

    before = dict(unet.attn_processors)
    anchor = AnchorAttention()
    with torch.inference_mode():
        plain0, plain1 = [step(frame0, t) for t in (900, 500)], [step(frame1, t) for t in (900, 500)]
        with anchor.capture(unet):  # frame 0 itself is the plain frame 0
            captured = [step(frame0, t) for t in (900, 500)]
        assert all(torch.equal(a, b) for a, b in zip(captured, plain0))
        self_layers = [n for n in before if n.endswith("attn1.processor")]
        assert self_layers and sorted(anchor.store) == sorted(self_layers)
        assert all(len(kv) == 2 and kv[0][0].shape[0] == 2 for kv in anchor.store.values())  # 2 steps, 2 halves

        with anchor.attend(unet):  # frame 0 attending to its own keys twice: the same softmax average
            again = [step(frame0, t) for t in (900, 500)]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(again, plain0))
        with anchor.attend(unet):
            steered = [step(frame1, t) for t in (900, 500)]
        assert all((a - b).abs().max() > 1e-4 for a, b in zip(steered, plain1))  # the anchor changes frame 1
        # a batch of 3 frames (rows [uncond x 3, cond x 3]) sees each anchor half repeated: row by row the same
        batch = torch.cat([frame1[:1]] * 3 + [frame1[1:]] * 3)
        with anchor.attend(unet):
            batched = step(batch, 900, torch.cat([text[:1]] * 3 + [text[1:]] * 3))
        for row in range(3):
            pair = torch.cat([batched[row:row + 1], batched[3 + row:4 + row]])
            assert torch.allclose(pair, steered[0], atol=1e-5)
    after = dict(unet.attn_processors)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # restored


# ------------------------------------------------------------------------ the stage, end to end
@pytest.fixture(scope="module")
def reference(project) -> Path:
    """Cross-frame restyle rendered one frame at a time and in batches of 3; plain restyle, unbatched and in
    batches of 4."""
    recipe = _recipe(project, "ref", ("one", 1, "none", True), ("three", 3, "none", True),
                     ("plain", 1, "none", False), ("plain4", 4, "none", False))
    out = project / "out-ref"
    run_ok(recipe, out)
    return out


def test_batched_frames_equal_unbatched_within_one_level(project, reference):
    for single, batched, size in (("plain", "plain4", 4), ("one", "three", 3)):
        a, b = frame_files(reference, single), frame_files(reference, batched)
        assert len(a) == len(b) == FRAMES
        for x, y in zip(a, b):
            assert np.abs(png_pixels(x) - png_pixels(y)).max() <= 1, (single, batched, x.name)
        (video,) = [r for r in manifest_records(reference) if r.get("stage") == batched and r.get("role") == "video"]
        assert video["video"]["timing"]["frame_batch"] == size
    assert probe_video(reference / "one" / "one.mp4").frames == FRAMES
    assert probe_video(reference / "one" / "one.mp4").has_audio


def test_cross_frame_keeps_frame_zero_and_steers_the_others(reference):
    cross, plain = frame_files(reference, "one"), frame_files(reference, "plain")
    assert np.array_equal(png_pixels(cross[0]), png_pixels(plain[0]))  # the anchor is the plain frame 0
    changed = [int(np.abs(png_pixels(c) - png_pixels(p)).sum()) for c, p in zip(cross[1:], plain[1:])]
    assert all(c > 0 for c in changed), changed


def test_killed_cross_frame_run_resumes_to_identical_frames(project, reference):
    """Batches of 3 with cross-frame attention: the resumed run records frame 0's keys/values again from its
    source frame (frame 0 itself is kept as saved) and renders each frame in the batch it had."""
    recipe = _recipe(project, "ref", ("three", 3, "none", True))  # same name, stage and params: the same job
    out = project / "out-killed"
    kill_run_when(recipe, out, lambda: len(frame_files(out, "three")) >= 2, timeout=600)
    done = len(frame_files(out, "three"))
    assert 2 <= done < FRAMES, done
    run_ok(recipe, out)
    mine, theirs = frame_files(out, "three"), frame_files(reference, "three")
    assert [p.name for p in mine] == [p.name for p in theirs]
    for a, b in zip(mine, theirs):
        assert np.array_equal(png_pixels(a), png_pixels(b)), a.name
    (video,) = [r for r in manifest_records(out) if r.get("role") == "video"]
    assert video["video"]["timing"]["frames_reused"] >= done - 1
    assert probe_video(out / "three" / "three.mp4").frames == FRAMES
