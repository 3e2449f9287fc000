"""One model-source module, one pickle policy (issue 17 criterion 5, issue 9 item 17).

- ``.safetensors`` always; ``.ckpt .pt .pth .bin`` only with ``allow_pickle: true``, the same at validate and at
  load, for checkpoints, LoRAs, VAEs, diffusers folders and depth models; no environment bypass.
- A local diffusers folder whose weights are only pickles is refused at validate, naming the file
  (``file:line: model: message``); folders load with ``use_safetensors=True`` unless ``allow_pickle``.
- Hub ids resolve through huggingface_hub's cache API, honouring ``HF_HUB_CACHE`` as it is when looked up.
- ``sdbatch.sources`` never imports ``sdbatch.runtime`` (lazy imports included) nor torch/diffusers.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli


def generate_params(**values):
    """Typed params of a generate job (as the planner makes them)."""
    from sdbatch.core.params import make_params
    from sdbatch.stages.generate import GenerateStage

    base = {"steps": 2, "scheduler": "default", "width": 32, "height": 32, "guidance": 7.0}
    return make_params(GenerateStage, {**base, **values})

os.environ.setdefault("HF_HUB_OFFLINE", "1")

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STAGE = "stages: [{name: a, type: generate, prompt: x, steps: 2, width: 64, height: 64}]\n"


def _validate(folder: Path, text: str) -> subprocess.CompletedProcess:
    (folder / "r.yaml").write_text(text)
    return run_cli("validate", "r.yaml", cwd=folder, timeout=120)


@pytest.fixture(scope="module")
def pickle_only_folder(tmp_path_factory) -> Path:
    """The tiny SD pipeline saved with ``safe_serialization=False``: the diffusers components' weights are .bin
    (transformers 5 writes the text encoder as .safetensors regardless)."""
    from sdbatch.sources.tiny import build_tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("pickled") / "pickled-sd"
    build_tiny_sd_pipeline(seed=3).save_pretrained(folder, safe_serialization=False)
    assert [p.name for p in (folder / "unet").iterdir() if p.suffix != ".json"] == ["diffusion_pytorch_model.bin"]
    return folder


# ------------------------------------------------------------------------------------- the policy
@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_every_pickle_suffix_is_refused_without_allow_pickle_and_accepted_with_it(tmp_path, suffix):
    from sdbatch.sources.specs import PICKLE_SUFFIXES, check_model_spec, check_vae_spec, check_weights_file

    assert suffix in PICKLE_SUFFIXES
    name = f"weights{suffix}"
    (tmp_path / name).write_bytes(b"never unpickled")
    for check in (lambda allow: check_model_spec(name, tmp_path, allow_pickle=allow),
                  lambda allow: check_weights_file(name, tmp_path, allow, "LoRA"),
                  lambda allow: check_vae_spec(name, tmp_path, allow)):
        refused = check(False)
        assert refused and "pickle" in refused and "allow_pickle" in refused, refused
        assert check(True) is None


def test_non_weights_files_are_refused_even_with_allow_pickle(tmp_path):
    from sdbatch.sources.specs import check_model_spec, check_weights_file

    (tmp_path / "notes.txt").write_text("x")
    assert "not a weights file" in check_model_spec("notes.txt", tmp_path, allow_pickle=True)
    assert "not a weights file" in check_weights_file("notes.txt", tmp_path, True, "LoRA")


def test_environment_variable_no_longer_bypasses_the_check(tmp_path, monkeypatch):
    import torch

    from sdbatch.core.job import Job, ModelRef
    from sdbatch.core.params import RunOptions
    from sdbatch.errors import ModelUnavailable
    from sdbatch.runtime.models import ModelBank
    from sdbatch.sources.weights import ensure_loadable

    monkeypatch.setenv("SDBATCH_ALLOW_PICKLE", "1")
    ckpt = tmp_path / "old.pth"
    ckpt.write_bytes(b"never unpickled")
    with pytest.raises(ModelUnavailable, match="allow_pickle"):
        ensure_loadable(ckpt, False)
    with pytest.raises(ModelUnavailable, match="allow_pickle"):
        ModelBank._load_single_file(ckpt, torch.float32)
    job = Job("0" * 64, "s", "generate", "x", "", 0, generate_params(),
              ModelRef("old.pth", "abc", "file", str(ckpt)), "cpu", "float32", "s/x.png", options=RunOptions())
    with pytest.raises(ModelUnavailable, match="allow_pickle"):
        ModelBank().base(job)
    assert "SDBATCH_ALLOW_PICKLE" not in (REPO / "sdbatch" / "runtime" / "models.py").read_text()


# ------------------------------------------------------------------------- pickle-only folders
def test_pickle_only_folder_is_refused_at_validate_naming_the_file(tmp_path, pickle_only_folder):
    shutil.copytree(pickle_only_folder, tmp_path / "pickled")
    result = _validate(tmp_path, "model: pickled\n" + STAGE)
    assert result.returncode == 2, result.stderr
    assert re.search(r"r\.yaml:1: model: 'pickled': unet/diffusion_pytorch_model\.bin .*pickle.*allow_pickle",
                     result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert _validate(tmp_path, "model: pickled\nallow_pickle: true\n" + STAGE).returncode == 0


def test_pickle_only_folder_renders_with_allow_pickle(tmp_path, pickle_only_folder):
    shutil.copytree(pickle_only_folder, tmp_path / "pickled")
    (tmp_path / "r.yaml").write_text("model: pickled\nallow_pickle: true\n" + STAGE)
    result = run_cli("run", "r.yaml", "--out", "out", cwd=tmp_path, env=THREADS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(list((tmp_path / "out" / "a").glob("*.png"))) == 1


def test_one_pickle_only_component_is_named(tmp_path, tiny_sd_folder):
    from sdbatch.sources.specs import check_model_spec

    folder = tmp_path / "mixed"
    shutil.copytree(tiny_sd_folder, folder)
    assert check_model_spec("mixed", tmp_path) is None
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"beside a .safetensors: never read")
    assert check_model_spec("mixed", tmp_path) is None
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    problem = check_model_spec("mixed", tmp_path)
    assert problem and problem.startswith("'mixed': unet/diffusion_pytorch_model.bin "), problem
    assert check_model_spec("mixed", tmp_path, allow_pickle=True) is None


def test_folders_load_with_use_safetensors_unless_allowed(tmp_path, tiny_sd_folder, pickle_only_folder,
                                                          monkeypatch):
    import diffusers

    from sdbatch.core.job import Job, ModelRef
    from sdbatch.core.params import RunOptions
    from sdbatch.errors import ModelUnavailable
    from sdbatch.runtime.models import ModelBank

    seen: list[dict] = []
    real = diffusers.StableDiffusionPipeline.from_pretrained  # the class a SD folder's model_index.json names

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", spy)

    def job(folder: Path, **options) -> Job:
        return Job("0" * 64, "s", "generate", "x", "", 0, generate_params(),
                   ModelRef(folder.name, "h", "folder", str(folder)), "cpu", "float32", "s/x.png",
                   options=RunOptions(**options))

    ModelBank().base(job(tiny_sd_folder))
    assert seen[-1]["use_safetensors"] is True
    with pytest.raises(ModelUnavailable, match=r"unet/diffusion_pytorch_model\.bin .*allow_pickle"):
        ModelBank().base(job(pickle_only_folder))
    ModelBank().base(job(pickle_only_folder, allow_pickle=True))
    assert seen[-1]["use_safetensors"] is None


def test_vae_folder_with_pickle_weights_only(tmp_path):
    from sdbatch.sources.specs import check_vae_spec

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    (tmp_path / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    problem = check_vae_spec("vae", tmp_path, False)
    assert problem and "diffusion_pytorch_model.bin" in problem and "allow_pickle" in problem
    assert check_vae_spec("vae", tmp_path, True) is None


def test_depth_model_sources_and_policy(tmp_path):
    from sdbatch.core.job import ModelRef
    from sdbatch.errors import ModelUnavailable
    from sdbatch.runtime.depth import depth_model_folder, load_depth_model
    from sdbatch.sources.specs import check_depth_spec
    from sdbatch.sources.tiny import BUILTIN_MODELS, build_tiny_depth, builtin_model_path

    builtin = builtin_model_path("sdbatch/tiny-depth")
    assert depth_model_folder("sdbatch/tiny-depth") == builtin
    ref = ModelRef("sdbatch/tiny-depth", BUILTIN_MODELS["sdbatch/tiny-depth"], "builtin")
    assert depth_model_folder(ref) == builtin
    assert depth_model_folder(str(builtin)) == builtin
    import torch

    model, processor = build_tiny_depth(seed=1)
    model.save_pretrained(tmp_path / "pickled-depth")
    processor.save_pretrained(tmp_path / "pickled-depth")
    (tmp_path / "pickled-depth" / "model.safetensors").unlink()  # transformers 5 saves only safetensors
    torch.save(model.state_dict(), tmp_path / "pickled-depth" / "pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match=r"depth model .*pytorch_model\.bin .*allow_pickle"):
        load_depth_model(str(tmp_path / "pickled-depth"))
    problem = check_depth_spec("pickled-depth", tmp_path, False)
    assert problem and problem.startswith("'pickled-depth': pytorch_model.bin ") and "allow_pickle" in problem
    assert check_depth_spec("pickled-depth", tmp_path, True) is None
    assert check_depth_spec("sdbatch/tiny-depth", tmp_path, False) is None
    assert check_depth_spec("depth-anything/Depth-Anything-V2-Small-hf", tmp_path, False) is None
    assert "unknown built-in" in check_depth_spec("sdbatch/nope", tmp_path, False)
    loaded, _ = load_depth_model(str(tmp_path / "pickled-depth"), allow_pickle=True)
    assert loaded.config.model_type == "depth_anything"


# ---------------------------------------------------------------------------------------- hub ids
def test_hub_ids_resolve_through_the_cache_api_honouring_hf_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants  # imported before the variable is set: it must still be honoured

    from sdbatch.io.hashing import HashCache
    from sdbatch.sources.specs import resolve_model

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert huggingface_hub.constants.HF_HUB_CACHE != str(tmp_path / "hub")
    hashes = HashCache(None, {})
    ref = resolve_model("org/name", tmp_path, hashes)
    assert (ref.id, ref.revision, ref.source) == ("org/name", commit, "hub")
    assert ref.path == str(repo / "snapshots" / commit)
    assert resolve_model(f"org/name@{commit}", tmp_path, hashes).revision == commit
    assert resolve_model("org/name@dev", tmp_path, hashes).revision == "unresolved:dev"
    assert resolve_model("org/other", tmp_path, hashes).revision == "unresolved:main"


def test_pipeline_config_ref(tmp_path, tiny_sd_folder):
    from sdbatch.sources.specs import pipeline_config_ref

    assert pipeline_config_ref("sdbatch/tiny-sd", [tmp_path]).source == "builtin"
    local = pipeline_config_ref(str(tiny_sd_folder), [tmp_path])
    assert (local.source, local.path) == ("folder", str(tiny_sd_folder))
    shutil.copytree(tiny_sd_folder / "unet", tmp_path / "b" / "cfg" / "unet")
    assert pipeline_config_ref("cfg", [tmp_path / "a", tmp_path / "b"]).path == str(tmp_path / "b" / "cfg")
    assert pipeline_config_ref("org/name", [tmp_path]).source == "hub-config"


# ------------------------------------------------------------------------------------ structure
def _sdbatch_imports(path: Path) -> set[str]:
    """Every sdbatch module ``path`` imports, at the top or inside functions (absolute names)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sdbatch"))
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            if module.startswith("sdbatch"):
                found.add(module)
    return found


def test_sources_never_imports_runtime_and_stays_light():
    for path in (REPO / "sdbatch" / "sources").rglob("*.py"):
        bad = sorted(m for m in _sdbatch_imports(path) if not m.startswith(("sdbatch.sources", "sdbatch.core.job",
                                                                             "sdbatch.errors", "sdbatch.io.hashing")))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    code = ("import sys, sdbatch.sources.specs, sdbatch.sources.weights, sdbatch.sources.hub; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'huggingface_hub') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_spec_logic_lives_in_sources_only():
    """runtime/models.py and runtime/depth.py find model files through sources, not with their own lookups."""
    for name in ("models.py", "depth.py"):
        text = (REPO / "sdbatch" / "runtime" / name).read_text()
        for needle in ("BUILTIN_MODELS", "builtin_model_path", "cached_hub_snapshot", "snapshot_download",
                       "hf_hub_download", "DiffusionPipeline.download", '.suffix.lower() != ".safetensors"'):
            assert needle not in text, f"runtime/{name} still has {needle}"
