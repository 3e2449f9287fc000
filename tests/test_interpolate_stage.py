"""The interpolate ("dream") stage end to end through the CLI: frames walk the slerp path between the seeds'
initial noises, the frames on a seed are bit for bit the ``generate`` images of that seed (also with
interpolated prompt embeddings), and the frames become an mp4."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, manifest_records, png_pixels, run_cli

from sdbatch.io.hashing import sha256_file

RECIPE = """\
name: dream
model: sdbatch/tiny-sd
defaults: {steps: 3, guidance: 6.0, width: 64, height: 48, negative_prompt: blurry}
stages:
  - name: stills
    type: generate
    prompt: [a lighthouse, a castle]
    seeds: [3, 9, 12]
    batch_size: 1          # each image exactly as its own diffusers call (batching may move a pixel by 1)
  - name: dream
    type: interpolate
    prompt: a lighthouse
    seeds: [3, 9, 12]
    frames: 5
    fps: 12
  - name: morph
    type: interpolate
    prompts: [a lighthouse, a castle]
    seeds: [3, 9]
    frames: 3
    fps: 8
  - name: longstill          # 24 x 6 tokens: a prompt of two 75-token chunks
    type: generate
    prompt: >-
      a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
      a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
      a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
      a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
      a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
      a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff
    seeds: [9]
    batch_size: 1
  - name: longmorph          # the long prompt beside a short one: one common length
    type: interpolate
    prompts:
      - a lighthouse
      - >-
        a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
        a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
        a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
        a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
        a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff,
        a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff, a lighthouse on a cliff
    seeds: [3, 9]
    frames: 3
    fps: 8
"""


@pytest.fixture(scope="module")
def dream_run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dream")
    recipe = folder / "dream.yaml"
    recipe.write_text(RECIPE)
    out = folder / "out"
    result = run_cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def stills(out) -> dict[tuple[str, int], np.ndarray]:
    return {(r["prompt"], r["seed"]): png_pixels(out / r["path"])
            for r in manifest_records(out, "output") if r["stage"] == "stills"}


def frames_of(out, stage: str) -> list[dict]:
    records = [r for r in manifest_records(out, "output") if r["stage"] == stage and r["role"] == "frame"]
    return sorted(records, key=lambda r: r["frame"]["index"])


def test_frames_on_a_seed_are_its_generate_image(dream_run):
    out = dream_run
    images = stills(out)
    frames = frames_of(out, "dream")
    assert [r["path"] for r in frames] == [f"dream/frames/{k:06d}.png" for k in range(5)]
    assert [r["frame"]["path_position"] for r in frames] == [0, 0.25, 0.5, 0.75, 1.0]
    assert [r["frame"]["segment"] for r in frames] == [[3, 9], [3, 9], [9, 12], [9, 12], [9, 12]]
    assert [r["frame"]["t"] for r in frames] == [0.0, 0.5, 0.0, 0.5, 1.0]
    for k, seed in ((0, 3), (2, 9), (4, 12)):
        got = png_pixels(out / frames[k]["path"])
        diff = np.abs(got - images[("a lighthouse", seed)]).max()
        assert diff == 0, f"frame {k} differs from generate(seed={seed}) by {diff}"
        assert frames[k]["frame"]["seed"] == seed
    for k in (1, 3):  # between two seeds: neither of them
        got = png_pixels(out / frames[k]["path"])
        segment = frames[k]["frame"]["segment"]
        before, after = images[("a lighthouse", segment[0])], images[("a lighthouse", segment[1])]
        assert np.abs(got - before).mean() > 1 and np.abs(got - after).mean() > 1


def test_prompt_embeddings_are_interpolated_with_exact_ends(dream_run):
    out = dream_run
    images = stills(out)
    frames = frames_of(out, "morph")
    assert len(frames) == 3
    assert np.abs(png_pixels(out / frames[0]["path"]) - images[("a lighthouse", 3)]).max() == 0
    assert np.abs(png_pixels(out / frames[2]["path"]) - images[("a castle", 9)]).max() == 0
    assert frames[1]["frame"]["prompts"] == ["a lighthouse", "a castle"] and frames[1]["frame"]["t"] == 0.5
    middle = png_pixels(out / frames[1]["path"])
    assert np.abs(middle - png_pixels(out / frames[0]["path"])).mean() > 1
    assert np.abs(middle - png_pixels(out / frames[2]["path"])).mean() > 1


def test_frames_become_an_mp4_with_its_own_manifest_line(dream_run):
    from sdbatch.io.video import probe_video

    out = dream_run
    for stage, frames, fps in (("dream", 5, 12), ("morph", 3, 8)):
        records = [r for r in manifest_records(out, "output") if r["path"] == f"{stage}/{stage}.mp4"]
        assert len(records) == 1 and records[0]["video"]["frames"] == frames
        assert records[0]["sha256"] == sha256_file(out / records[0]["path"])
        info = probe_video(out / records[0]["path"])
        assert (info.frames, info.width, info.height) == (frames, 64, 48)
        assert info.fps == pytest.approx(fps)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    result = run_cli("run", out.parent / "dream.yaml", "--out", out)
    assert result.returncode == 0 and manifest_records(out, "run")[-1]["rendered"] == 0


def test_path_points_and_slerp():
    import torch

    from sdbatch.stages.interpolate import path_point, slerp

    assert [path_point(k, 48, 3) for k in (0, 47)] == [(0, 0.0), (1, 1.0)]
    assert sum(t == 0.0 for _s, t in (path_point(k, 7, 4) for k in range(7))) == 3  # frames 0, 2, 4 on seeds
    a = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    b = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(slerp(0.0, a, b), a) and torch.allclose(slerp(1.0, a, b), b, atol=1e-6)
    mid = slerp(0.5, a, b)
    assert abs(mid.norm() - (a.norm() + b.norm()) / 2) < 0.05 * a.norm()  # stays on the sphere, unlike lerp
    assert torch.allclose(slerp(0.3, a, a * 2), 0.7 * a + 0.3 * a * 2, atol=1e-6)  # parallel: lerp


@pytest.mark.parametrize("line,field", [
    ("    seeds: [3]", "stages[0].seeds"),
    ("    frames: 1", "stages[0].frames"),
    ("    fps: -2", "stages[0].fps"),
])
def test_bad_dream_values_are_refused(tmp_path, line, field):
    base = {"seeds": "    seeds: [3, 9]", "frames": "    frames: 4", "fps": "    fps: 12"}
    key = line.split(":")[0].strip()
    base[key] = line
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: sdbatch/tiny-sd\nstages:\n  - name: d\n    type: interpolate\n    prompt: a cat\n"
                      + "\n".join(base.values()) + "\n")
    result = run_cli("validate", recipe)
    assert result.returncode == 2 and field in result.stderr, result.stderr


def test_the_example_dream_recipe_validates():
    text = (REPO / "recipes" / "dream.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=../docs/recipe.schema.json")
    assert "model: stabilityai/sd-turbo" in text
    result = run_cli("validate", REPO / "recipes" / "dream.yaml")
    assert result.returncode == 0, result.stderr


def test_a_long_prompt_interpolates_with_a_short_one(dream_run):
    """A prompt over 75 tokens beside a short one: the short one's embedding is padded with the empty prompt's
    chunk to the long one's length (as A1111 pads), so the path renders; the long end frame is the generate
    image of its prompt and seed (whose short negative prompt is padded the same way)."""
    frames = frames_of(dream_run, "longmorph")
    assert len(frames) == 3
    [long] = [r for r in manifest_records(dream_run, "output") if r["stage"] == "longstill"]
    assert np.array_equal(png_pixels(dream_run / frames[2]["path"]), png_pixels(dream_run / long["path"]))
    short = png_pixels(dream_run / frames[0]["path"]) - stills(dream_run)[("a lighthouse", 3)]
    assert np.abs(short).mean() < 8  # the padding moves pixels (random tiny weights: a few levels), not the picture
