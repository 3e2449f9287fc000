"""CPU checks of the GPU benchmark script and of ``sdbatch.runtime.perf`` (no GPU, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "gpu_throughput.py"

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_throughput as gt

from sdbatch.runtime.perf import GpuOptions, apply_gpu_options, describe


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO),
                # the tiny models are too small to gain from threads; one thread also avoids
                # OpenMP spin-waiting when the 2 CI cores are shared
                "OMP_NUM_THREADS": "1"})
    return env


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_benchmark_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--json", str(out)], cwd=REPO,
                          env=_offline_env(), capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    # --tiny defaults: both archs, batch 1 and 2
    assert {(r["arch"], r["batch"]) for r in rows} == {("sd15", 1), ("sd15", 2), ("sdxl", 1), ("sdxl", 2)}
    for r in rows:
        assert not r.get("error") and not r.get("skipped"), r
        assert r["s_per_image"] > 0 and r["it_per_s"] > 0
        assert r["unet_flops_per_step"] > 0 and r["vae_decode_flops"] > 0 and r["flops_per_image"] > 0
        assert r["finite"]
        assert r["options"] == describe(gt.VARIANTS[r["variant"]])
    # the CFG batch is 2B: FLOPs per step scale with the batch
    fl = data["flops"]["sd15"]
    assert fl["2"]["unet_flops_per_step"] == pytest.approx(2 * fl["1"]["unet_flops_per_step"], rel=1e-6)
    assert "arch" in proc.stdout and "s/image" in proc.stdout


def _tiny_pipe(arch: str = "sd15"):
    pipe, cond = gt.build_pipeline(arch, tiny=True, device="cpu", dtype=torch.float32)
    return pipe, cond


def _render(pipe, arch: str, cond) -> torch.Tensor:
    kw = gt.make_conditioning(arch, cond, 2, "cpu", torch.float32)
    g = torch.Generator("cpu").manual_seed(7)
    img = pipe(height=64, width=64, num_inference_steps=2, guidance_scale=7.0, output_type="np",
               generator=g, return_dict=False, **kw)[0]
    return torch.from_numpy(img * 255.0).round()


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_apply_gpu_options_keeps_images_on_cpu(arch: str) -> None:
    ref_pipe, cond = _tiny_pipe(arch)
    fast_pipe, _ = _tiny_pipe(arch)
    fast_pipe.unet.load_state_dict(ref_pipe.unet.state_dict())
    fast_pipe.vae.load_state_dict(ref_pipe.vae.state_dict())

    ref = _render(ref_pipe, arch, cond)
    opts = GpuOptions(attention="sdpa", channels_last=True, fuse_qkv=True)
    apply_gpu_options(fast_pipe, opts, "cpu")
    assert fast_pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    out = _render(fast_pipe, arch, cond)
    assert (out - ref).abs().max().item() <= 1.0  # within one 8-bit level

    # classic attention gives the same images too
    plain = GpuOptions(attention="default")
    apply_gpu_options(fast_pipe, plain, "cpu")
    procs = {type(p).__name__ for p in fast_pipe.unet.attn_processors.values()}
    assert procs == {"AttnProcessor"}
    assert fast_pipe.unet.conv_in.weight.is_contiguous()
    assert (_render(fast_pipe, arch, cond) - ref).abs().max().item() <= 1.0


def test_apply_gpu_options_is_idempotent_and_cpu_safe() -> None:
    pipe, _ = _tiny_pipe()
    opts = GpuOptions(channels_last=True, fuse_qkv=True, offload="model", vae_tiling=True, tf32=True)
    before_tf32 = torch.backends.cuda.matmul.allow_tf32
    apply_gpu_options(pipe, opts, "cpu")  # offload / tf32 silently skipped on CPU
    assert torch.backends.cuda.matmul.allow_tf32 == before_tf32
    assert not hasattr(pipe.unet, "_hf_hook")
    assert pipe.device.type == "cpu"
    assert pipe.vae.use_tiling
    procs = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert procs == {"FusedAttnProcessor2_0"}
    w = pipe.unet.conv_in.weight
    apply_gpu_options(pipe, opts, "cpu")  # second call: nothing changes
    assert pipe.unet.conv_in.weight is w
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == procs
    apply_gpu_options(pipe, GpuOptions(), "cpu")  # back to defaults
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert not pipe.vae.use_tiling
    assert pipe.unet.conv_in.weight.is_contiguous()


def test_gpu_options_validation_and_describe() -> None:
    with pytest.raises(ValueError):
        GpuOptions(attention="xformers")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GpuOptions(attention="default", fuse_qkv=True)
    with pytest.raises(ValueError):
        GpuOptions(compile=True, offload="model")
    d = describe(GpuOptions())
    assert d["attention"] == "sdpa" and d["compile"] is False and d["compile_mode"] is None
    assert json.loads(json.dumps(d)) == d
    assert describe(GpuOptions(compile=True))["compile_mode"] == GpuOptions().compile_mode


def test_perf_import_is_cheap() -> None:
    # compare with the package alone, so that this only tests what sdbatch.runtime.perf itself imports
    code = ("import sys, sdbatch; b = [m in sys.modules for m in ('torch', 'diffusers')]; "
            "import sdbatch.runtime.perf; a = [m in sys.modules for m in ('torch', 'diffusers')]; print(b == a)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_offline_env(), capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]
