#!/usr/bin/env python
"""Throughput of SD1.5 / SDXL text-to-image on one GPU, with sdbatch's GPU options.

The real architectures are built from the configs bundled in ``sdbatch/configs``
with RANDOM weights (nothing is downloaded; no tokenizer or text encoder is run:
the pipelines get ``prompt_embeds`` / ``negative_prompt_embeds`` (+ pooled
embeddings for SDXL) of the right shapes).  Timing covers the whole pipeline
call (denoising loop + VAE decode), after a warm-up call at the same shape.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one UNet
forward and one VAE decode at the measured shape.  Classifier-free guidance
doubles the UNet batch: one denoising step for a batch of B images is one UNet
forward at batch 2B.

Examples::

    python benchmarks/gpu_throughput.py --tiny                   # CPU smoke test, seconds
    python benchmarks/gpu_throughput.py --arch sd15 --batch 1 4 8 --compile both --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sdbatch.runtime.perf import GpuOptions, apply_gpu_options, describe, unwrap_unet

CONFIG_DIR = REPO / "sdbatch" / "configs"

ARCHS: dict[str, dict[str, Any]] = {
    "sd15": {"pipeline": "StableDiffusionPipeline", "size": 512, "encoders": ["text_encoder"]},
    "sdxl": {"pipeline": "StableDiffusionXLPipeline", "size": 1024, "encoders": ["text_encoder", "text_encoder_2"]},
}
TINY_SIZE = 64

# Named option sets.  "eager" / "compile" are the two rows of the main table;
# the others are for ablations (--variants).
VARIANTS: dict[str, GpuOptions] = {
    "plain": GpuOptions(attention="default"),
    "sdpa": GpuOptions(attention="sdpa"),
    "sdpa-cl": GpuOptions(attention="sdpa", channels_last=True),
    "sdpa-cl-fuse": GpuOptions(attention="sdpa", channels_last=True, fuse_qkv=True),
    "sdpa-cl-fuse-cudnn": GpuOptions(attention="sdpa", channels_last=True, fuse_qkv=True, cudnn_benchmark=True),
    # main-table row without compile: the fastest eager set measured on the H100 (docs/performance.md)
    "eager": GpuOptions(attention="sdpa"),
    # main-table row with compile: the eager set above + channels_last (helps once compiled) and
    # sdbatch's default compile mode (reduce-overhead); fuse_qkv / cudnn_benchmark measured neutral
    "compile": GpuOptions(attention="sdpa", channels_last=True, fuse_qkv=True, cudnn_benchmark=True, compile=True),
    "compile-default": GpuOptions(attention="sdpa", channels_last=True, fuse_qkv=True, cudnn_benchmark=True,
                                  compile=True, compile_mode="default"),
    "compile-nocl": GpuOptions(attention="sdpa", fuse_qkv=True, compile=True, compile_mode="default"),
    "compile-ro": GpuOptions(attention="sdpa", channels_last=True, fuse_qkv=True, cudnn_benchmark=True,
                             compile=True, compile_mode="reduce-overhead"),
    "compile-mat": GpuOptions(attention="sdpa", channels_last=True, fuse_qkv=True, cudnn_benchmark=True,
                              compile=True, compile_mode="max-autotune-no-cudagraphs"),
    "compile-max": GpuOptions(attention="sdpa", channels_last=True, fuse_qkv=True, cudnn_benchmark=True,
                              compile=True, compile_mode="max-autotune"),
}

# Dense (no sparsity) fp16/bf16 tensor-core peak with fp32 accumulation, TFLOP/s,
# from NVIDIA's datasheets.  Matched against torch.cuda.get_device_name().
PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIE"), 756.5),
    (("H100", "NVL"), 835.5),
    (("H100",), 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (("H200",), 989.4),
    (("H800",), 989.4),
    (("A100",), 312.0),
    (("L40S",), 362.1),
    (("L40",), 181.0),
    (("L4",), 121.0),
    (("A10G",), 70.0),
    (("A10",), 125.0),
    (("RTX 4090",), 165.2),
    (("V100",), 125.0),
]


def peak_tflops_for(name: str) -> float | None:
    up = name.upper()
    for keys, val in PEAK_TFLOPS:
        if all(k in up for k in keys):
            return val
    return None


def load_config(arch_dir: str, component: str) -> dict[str, Any]:
    with open(CONFIG_DIR / arch_dir / f"{component}.json") as f:
        return json.load(f)


# --------------------------------------------------------------------------- building


def build_pipeline(arch: str, tiny: bool, device: str, dtype: Any) -> tuple[Any, dict[str, Any]]:
    """Random-weight pipeline of ``arch`` and the shapes of its text conditioning."""
    import diffusers
    import torch

    cdir = f"tiny/{arch}" if tiny else arch
    ucfg, vcfg, scfg = (load_config(cdir, c) for c in ("unet", "vae", "scheduler"))
    enc = [load_config(cdir, e) for e in ARCHS[arch]["encoders"]]
    ctx_dim = sum(e["hidden_size"] for e in enc)  # SDXL concatenates both encoders' hidden states
    if ctx_dim != ucfg["cross_attention_dim"]:
        raise ValueError(f"{cdir}: text encoders give {ctx_dim} but unet wants {ucfg['cross_attention_dim']}")
    cond = {"seq_len": enc[0]["max_position_embeddings"], "ctx_dim": ctx_dim}
    if arch == "sdxl":
        cond["pooled_dim"] = enc[-1]["projection_dim"]

    torch.manual_seed(0)
    # Build directly on the target device: random init of 2.6 B parameters on the
    # host would take longer than the benchmark itself.
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel.from_config(ucfg)
        vae = diffusers.AutoencoderKL.from_config(vcfg)
    unet.to(dtype=dtype).eval().requires_grad_(False)
    vae.to(dtype=dtype).eval().requires_grad_(False)
    scheduler = getattr(diffusers, scfg["_class_name"]).from_config(scfg)
    cls = getattr(diffusers, ARCHS[arch]["pipeline"])
    if arch == "sd15":
        pipe = cls(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = cls(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                   unet=unet, scheduler=scheduler, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, cond


def make_conditioning(arch: str, cond: dict[str, Any], batch: int, device: str, dtype: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator("cpu").manual_seed(1234)

    def r(*shape: int) -> Any:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    kw = {
        "prompt_embeds": r(batch, cond["seq_len"], cond["ctx_dim"]),
        "negative_prompt_embeds": r(batch, cond["seq_len"], cond["ctx_dim"]),
    }
    if arch == "sdxl":
        kw["pooled_prompt_embeds"] = r(batch, cond["pooled_dim"])
        kw["negative_pooled_prompt_embeds"] = r(batch, cond["pooled_dim"])
    return kw


# --------------------------------------------------------------------------- FLOPs


def count_flops(pipe: Any, arch: str, cond: dict[str, Any], batch: int, size: int, device: str,
                dtype: Any) -> dict[str, float]:
    """FLOPs of one UNet forward at the CFG batch (2*batch) and of one VAE decode of ``batch`` latents."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    custom: dict[Any, Any] = {}
    try:  # CPU SDPA kernel has no formula in FlopCounterMode; use the generic SDPA one
        from torch.utils.flop_counter import sdpa_flop_count

        def _cpu_sdpa(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            return sdpa_flop_count(q, k, v)  # FlopCounterMode passes shapes, not tensors

        custom[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa
    except Exception:
        pass

    unet = unwrap_unet(pipe.unet)
    vae = pipe.vae
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    lat = size // f
    b2 = 2 * batch
    x = torch.randn(b2, unet.config.in_channels, lat, lat, device=device, dtype=dtype)
    ehs = torch.randn(b2, cond["seq_len"], cond["ctx_dim"], device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    kw: dict[str, Any] = {}
    if arch == "sdxl":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(b2, cond["pooled_dim"], device=device, dtype=dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * b2, device=device, dtype=dtype),
        }
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as fc:
        unet(x, t, encoder_hidden_states=ehs, return_dict=False, **kw)
    unet_flops = float(fc.get_total_flops())
    z = torch.randn(batch, vae.config.latent_channels, lat, lat, device=device, dtype=vae.dtype)
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as fc:
        vae.decode(z, return_dict=False)
    vae_flops = float(fc.get_total_flops())
    del x, ehs, z
    return {
        "unet_flops_per_step": unet_flops,  # one UNet forward at batch 2*B (CFG)
        "unet_flops_per_forward_per_image": unet_flops / b2,  # batch-1 forward, no CFG
        "vae_decode_flops": vae_flops,  # B images
    }


# --------------------------------------------------------------------------- timing


class _StepClock:
    """``callback_on_step_end`` that timestamps every denoising step without syncing."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[Any] = []

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())
        return kwargs


def run_once(pipe: Any, arch: str, kw: dict[str, Any], size: int, steps: int, device: str) -> dict[str, Any]:
    import torch

    cuda = device.startswith("cuda")
    clock = _StepClock(cuda)
    if cuda:
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    out = pipe(height=size, width=size, num_inference_steps=steps, guidance_scale=7.0, output_type="pt",
               callback_on_step_end=clock, return_dict=False, **kw)[0]
    if cuda:
        end.record()
        torch.cuda.synchronize()
        total = start.elapsed_time(end) / 1e3
        loop = clock.marks[0].elapsed_time(clock.marks[-1]) / 1e3 if len(clock.marks) > 1 else float("nan")
    else:
        total = time.perf_counter() - t0
        loop = clock.marks[-1] - clock.marks[0] if len(clock.marks) > 1 else float("nan")
    finite = bool(torch.isfinite(out).all().item())
    return {"total_s": total, "loop_s": loop, "loop_steps": len(clock.marks) - 1, "finite": finite}


def measure(pipe: Any, arch: str, cond: dict[str, Any], batch: int, size: int, steps: int, warmup_steps: int,
            repeats: int, device: str, dtype: Any) -> dict[str, Any]:
    import torch

    kw = make_conditioning(arch, cond, batch, device, dtype)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_once(pipe, arch, kw, size, warmup_steps, device)  # compile / autotune / cuDNN plans happen here
    run_once(pipe, arch, kw, size, warmup_steps, device)
    warmup_s = time.perf_counter() - t0
    runs = [run_once(pipe, arch, kw, size, steps, device) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["total_s"])
    res = {
        "warmup_s": warmup_s,
        "total_s": best["total_s"],
        "total_s_all": [r["total_s"] for r in runs],
        "loop_s": best["loop_s"],
        "loop_steps": best["loop_steps"],
        "finite": all(r["finite"] for r in runs),
    }
    if cuda:
        res["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


# --------------------------------------------------------------------------- driver


def env_info(device: str) -> dict[str, Any]:
    import diffusers
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": device,
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        info.update({
            "gpu": p.name,
            "sm_count": p.multi_processor_count,
            "gpu_mem_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        })
        try:
            import subprocess

            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=False).stdout.strip()
        except Exception:
            info["driver"] = None
    else:
        info["gpu"] = None
    return info


def matmul_ceiling_tflops(device: str, dtype: Any, n: int = 8192, iters: int = 20) -> float:
    """Achieved dense fp16 GEMM rate: the practical ceiling to compare the UNet with."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        a @ b
    e.record()
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (s.elapsed_time(e) / 1e3) / 1e12


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        torch._dynamo.reset()
    except Exception:
        pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="tiny configs on the CPU, 64x64, 2 steps, batch 1 2: a smoke test that takes seconds")
    p.add_argument("--arch", choices=["sd15", "sdxl", "all"], default="all")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 4 8; tiny: 1 2)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; tiny: 2)")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps of each of the 2 warm-up calls")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row, best kept (default 2; tiny: 1)")
    p.add_argument("--compile", dest="compile", nargs="?", const="on", choices=["on", "off", "both"], default=None,
                   help="rows with the compiled UNet (on), without (off) or both (default: both; tiny: off)")
    p.add_argument("--no-compile", dest="compile", action="store_const", const="off")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help="explicit option sets to measure (overrides --compile)")
    p.add_argument("--device", default=None, help="default: cuda if available (tiny: cpu)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                   help="default float16 on CUDA, float32 on CPU")
    p.add_argument("--size", type=int, default=None, help="override the resolution (default 512 / 1024; tiny 64)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense fp16 peak for the utilisation column (default: from the GPU name)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="skip rows that would start after this many seconds (keeps device runs bounded)")
    p.add_argument("--json", dest="json_out", default=None, help="write results here (rewritten after each row)")
    a = p.parse_args(argv)
    a.batch = a.batch or ([1, 2] if a.tiny else [1, 4, 8])
    a.steps = a.steps or (2 if a.tiny else 50)
    a.repeats = a.repeats or (1 if a.tiny else 2)
    a.compile = a.compile or ("off" if a.tiny else "both")
    if a.variants is None:
        a.variants = {"off": ["eager"], "on": ["compile"], "both": ["eager", "compile"]}[a.compile]
    return a


def fmt_table(rows: list[dict[str, Any]]) -> str:
    head = ["arch", "size", "batch", "variant", "s/image", "img/s", "it/s", "UNet TFLOP/s",
            "%peak UNet", "%peak e2e", "warmup s", "mem GiB"]
    lines = []
    for r in rows:
        if r.get("skipped") or r.get("error"):
            lines.append([r["arch"], str(r["size"]), str(r["batch"]), r["variant"],
                          "skipped" if r.get("skipped") else "ERROR"] + [""] * 7)
            continue

        def pct(v: Any) -> str:
            return "n/a" if v is None else f"{v:.1f}"

        lines.append([
            r["arch"], str(r["size"]), str(r["batch"]), r["variant"],
            f"{r['s_per_image']:.4f}", f"{r['images_per_s']:.2f}", f"{r['it_per_s']:.2f}",
            f"{r['unet_tflops_achieved']:.1f}", pct(r.get("pct_peak_unet")), pct(r.get("pct_peak_e2e")),
            f"{r['warmup_s']:.1f}", f"{r['max_mem_gib']:.1f}" if "max_mem_gib" in r else "-",
        ])
    w = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w[i]) for i, h in enumerate(head)), "  ".join("-" * x for x in w)]
    out += ["  ".join(c.rjust(w[i]) for i, c in enumerate(x)) for x in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.tiny:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    try:  # the random-weight models trigger harmless dtype / processor warnings
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except Exception:
        pass

    device = a.device or ("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    cuda = device.startswith("cuda")
    dtype = getattr(torch, a.dtype or ("float16" if cuda else "float32"))
    if not cuda:
        a.variants = [v for v in a.variants if not VARIANTS[v].compile] or a.variants
    archs = ["sd15", "sdxl"] if a.arch == "all" else [a.arch]

    env = env_info(device)
    peak = a.peak_tflops or (peak_tflops_for(env["gpu"]) if cuda else None)
    env["peak_dense_tflops"] = peak
    if cuda:
        env["matmul_fp16_tflops_8192"] = round(matmul_ceiling_tflops(device, dtype), 1)
    env["dtype"] = str(dtype).replace("torch.", "")
    result: dict[str, Any] = {"env": env, "args": {k: v for k, v in vars(a).items()}, "flops": {}, "rows": []}

    def dump() -> None:
        if a.json_out:
            tmp = a.json_out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)
            os.replace(tmp, a.json_out)

    print(f"# device: {env.get('gpu') or 'cpu'} | torch {env['torch']} | diffusers {env['diffusers']} | "
          f"dtype {env['dtype']} | peak dense fp16 {peak} TFLOP/s"
          + (f" | measured 8192^3 fp16 GEMM {env['matmul_fp16_tflops_8192']} TFLOP/s" if cuda else ""), flush=True)
    t_start = time.perf_counter()
    for arch in archs:
        size = a.size or (TINY_SIZE if a.tiny else ARCHS[arch]["size"])
        flops_by_batch: dict[int, dict[str, float]] = {}
        for vname in a.variants:
            opts = VARIANTS[vname]
            if a.deadline_s is not None and time.perf_counter() - t_start > a.deadline_s:
                for b in a.batch:
                    result["rows"].append({"arch": arch, "size": size, "batch": b, "variant": vname, "skipped": True})
                dump()
                continue
            pipe, cond = build_pipeline(arch, a.tiny, device, dtype)
            try:
                for b in a.batch:
                    if b not in flops_by_batch:
                        flops_by_batch[b] = count_flops(pipe, arch, cond, b, size, device, dtype)
                        result["flops"].setdefault(arch, {})[str(b)] = flops_by_batch[b]
                apply_gpu_options(pipe, opts, device)
                for b in a.batch:
                    row: dict[str, Any] = {"arch": arch, "size": size, "batch": b, "steps": a.steps,
                                           "variant": vname, "options": describe(opts)}
                    if a.deadline_s is not None and time.perf_counter() - t_start > a.deadline_s:
                        row["skipped"] = True
                        result["rows"].append(row)
                        dump()
                        continue
                    print(f"# {arch} b{b} {vname}: warm-up starts at t={time.perf_counter() - t_start:.0f} s",
                          flush=True)
                    try:
                        m = measure(pipe, arch, cond, b, size, a.steps, a.warmup_steps, a.repeats, device, dtype)
                    except Exception as e:  # keep going: one failing row must not lose the others
                        row["error"] = f"{type(e).__name__}: {e}"[:2000]
                        result["rows"].append(row)
                        dump()
                        print(f"# {arch} b{b} {vname}: {row['error'][:300]}", flush=True)
                        if cuda:
                            torch.cuda.empty_cache()
                        continue
                    fl = flops_by_batch[b]
                    flops_image = (fl["unet_flops_per_step"] * a.steps + fl["vae_decode_flops"]) / b
                    loop_steps = m["loop_steps"]
                    it_s = loop_steps / m["loop_s"] if loop_steps > 0 and m["loop_s"] > 0 else a.steps / m["total_s"]
                    unet_tf = fl["unet_flops_per_step"] * it_s / 1e12
                    e2e_tf = flops_image * b / m["total_s"] / 1e12
                    row.update(m)
                    if opts.compile:
                        try:
                            from torch._dynamo.utils import counters

                            row["dynamo_unique_graphs"] = int(counters["stats"]["unique_graphs"])
                            row["dynamo_graph_breaks"] = int(sum(counters["graph_break"].values()))
                        except Exception:
                            pass
                    row.update({
                        "s_per_image": m["total_s"] / b,
                        "images_per_s": b / m["total_s"],
                        "it_per_s": it_s,
                        "unet_flops_per_step": fl["unet_flops_per_step"],
                        "unet_flops_per_forward_per_image": fl["unet_flops_per_forward_per_image"],
                        "vae_decode_flops": fl["vae_decode_flops"],
                        "flops_per_image": flops_image,
                        "unet_tflops_achieved": unet_tf,
                        "e2e_tflops_achieved": e2e_tf,
                        "pct_peak_unet": 100 * unet_tf / peak if peak else None,
                        "pct_peak_e2e": 100 * e2e_tf / peak if peak else None,
                    })
                    result["rows"].append(row)
                    dump()
                    print(f"# {arch} {size}px b{b} {vname}: {row['s_per_image']:.4f} s/image, {it_s:.2f} it/s, "
                          f"UNet {unet_tf:.1f} TFLOP/s, warm-up {m['warmup_s']:.1f} s, finite={m['finite']}",
                          flush=True)
            finally:
                pipe = None
                free()

    print()
    print("FLOPs (FlopCounterMode, one forward at the measured shape; CFG doubles the UNet batch,")
    print("so one denoising step of B images = one UNet forward at batch 2B):")
    for arch, byb in result["flops"].items():
        for b, fl in sorted(byb.items(), key=lambda kv: int(kv[0])):
            print(f"  {arch} b{b}: UNet {fl['unet_flops_per_forward_per_image'] / 1e12:.4g} TFLOP per image-forward "
                  f"(batch 1, no CFG); {fl['unet_flops_per_step'] / 1e12:.4g} TFLOP per step (batch {2 * int(b)}); "
                  f"VAE decode {fl['vae_decode_flops'] / 1e12 / int(b):.4g} TFLOP per image")
    if peak:
        print(f"%peak = achieved FLOP rate / {peak} TFLOP/s (dense fp16 datasheet peak of {env.get('gpu')}); "
              f"'UNet' uses the denoising-loop time only, 'e2e' all FLOPs (UNet x steps + VAE) over the whole call.")
    print()
    print(fmt_table(result["rows"]))
    result["wall_s"] = time.perf_counter() - t_start
    dump()
    bad = [r for r in result["rows"] if r.get("error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
