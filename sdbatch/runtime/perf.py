"""GPU options applied by the renderer to every loaded diffusers pipeline.

``apply_gpu_options(pipe, opts, device)`` is the single entry point: it sets the
attention implementation, memory format, QKV fusion, VAE tiling, device
placement / CPU offload, TF32 and ``torch.compile`` of the UNet on an
SD1.5-style (``StableDiffusionPipeline``) or SDXL (``StableDiffusionXLPipeline``)
pipeline, i.e. anything with a ``unet`` and an ``AutoencoderKL`` ``vae``.

Properties the renderer relies on:

* **idempotent** - applying the same options to the same pipeline twice is a
  no-op; in particular the UNet is compiled once per loaded pipeline, and the
  compiled module (and its graph cache) is reused by every later job;
* **transitions** - applying different options to an already-configured
  pipeline moves it to the new configuration (e.g. un-compiles, un-fuses,
  removes offload hooks) instead of stacking changes;
* **harmless on CPU** - what only applies to CUDA (TF32, cuDNN autotuning,
  CPU offload) is skipped silently when ``device`` is not a CUDA device;
* **cheap import** - torch / diffusers are imported inside the functions only.

Measured effect of each option on an H100: see ``docs/performance.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "COMPILE_MODES",
    "INDUCTOR_FLAGS",
    "GpuOptions",
    "apply_gpu_options",
    "describe",
    "unwrap_unet",
]

AttentionKind = Literal["sdpa", "default"]
OffloadKind = Literal["none", "model", "sequential"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

#: ``torch._inductor.config`` flags set before compiling.  They are
#: process-global, so they are only touched when ``compile=True``.  diffusers'
#: speed-up guide also turns on ``coordinate_descent_tuning`` (and
#: ``coordinate_descent_check_all_directions``): on the H100 VM of
#: docs/performance.md the compile of ONE SD1.5 UNet shape had not finished
#: after ~4.5 minutes with them (55 s without), so they are left off here.
INDUCTOR_FLAGS: dict[str, Any] = {
    "conv_1x1_as_mm": True,
    "epilogue_fusion": False,
}

_STATE_ATTR = "_sdbatch_gpu_state"


@dataclass(frozen=True)
class GpuOptions:
    """Performance options for a loaded pipeline (hashable, JSON-describable).

    attention
        ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``
        (diffusers ``AttnProcessor2_0``; flash / memory-efficient kernels on
        CUDA).  ``"default"``: diffusers' classic ``AttnProcessor``
        (explicit ``baddbmm`` + softmax + ``bmm``), i.e. what
        ``set_default_attn_processor()`` selects.  Only the stock processors
        are replaced; custom ones (IP-Adapter, LoRA-specific, ...) are kept.
    channels_last
        NHWC memory format for the UNet and VAE weights.  Helps a compiled
        UNet a little (~1.5 % on an H100) but slows the eager one (~8 %), so it
        is off by default; turn it on together with ``compile``.
    compile
        ``torch.compile`` the UNet with ``compile_mode`` (``dynamic=False``:
        one specialised graph per batch size / resolution).  Done once per
        loaded pipeline; later ``apply_gpu_options`` calls with the same
        options reuse the compiled module.
    compile_mode
        torch.compile mode used when ``compile`` is set, on CUDA; on other
        devices ``"default"`` is always used.  ``"reduce-overhead"`` (CUDA
        graphs) measured fastest on an H100: as fast as ``"default"`` at
        batch 8 and 3x faster at batch 1, where eager/``"default"`` are bound
        by the CPU launching kernels.  Use ``"default"`` if CUDA graphs get in
        the way (pipelines called from several threads, tight GPU memory:
        each batch shape keeps its own graph memory pool).
        ``"max-autotune*"`` were not measured (compile time).
    fuse_qkv
        Fuse the Q/K/V (self-attention) and K/V (cross-attention) projections
        into one GEMM each (diffusers ``fuse_qkv_projections``).  Requires
        ``attention="sdpa"``.  No measurable effect on SD1.5 on an H100.
    vae_tiling
        Decode (and encode) in overlapping tiles: bounded VAE memory for large
        images, slightly slower, seams possible.
    offload
        ``"model"``: ``enable_model_cpu_offload`` (whole models move to the GPU
        when used); ``"sequential"``: ``enable_sequential_cpu_offload``
        (sub-module granularity, lowest memory, slowest).  CUDA only.
    tf32
        Allow TF32 tensor-core math for float32 matmuls / convolutions
        (process-global; matters for fp32 pipelines and the SDXL VAE, which
        diffusers upcasts to fp32).  CUDA only.
    cudnn_benchmark
        ``torch.backends.cudnn.benchmark``: let cuDNN time its convolution
        algorithms for each new input shape (one-off cost per shape;
        process-global).  CUDA only.  No measurable effect on SD1.5 on an H100.
    """

    attention: AttentionKind = "sdpa"
    channels_last: bool = False
    compile: bool = False
    compile_mode: CompileMode = "reduce-overhead"
    fuse_qkv: bool = False
    vae_tiling: bool = False
    offload: OffloadKind = "none"
    tf32: bool = True
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ("sdpa", "default"):
            raise ValueError(f"attention must be 'sdpa' or 'default', not {self.attention!r}")
        if self.offload not in ("none", "model", "sequential"):
            raise ValueError(f"offload must be 'none', 'model' or 'sequential', not {self.offload!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, not {self.compile_mode!r}")
        if self.fuse_qkv and self.attention != "sdpa":
            raise ValueError("fuse_qkv=True needs attention='sdpa' (the fused processor is SDPA-based)")
        if self.compile and self.offload != "none":
            raise ValueError("compile=True needs offload='none' (offload hooks move weights between calls)")

    # The parts of the options that change the UNet module itself; if any of
    # them changes, a compiled UNet must be unwrapped and compiled again.
    def _unet_key(self) -> tuple:
        return (self.attention, self.channels_last, self.fuse_qkv, self.compile, self.compile_mode)


def describe(opts: GpuOptions) -> dict[str, Any]:
    """JSON-serialisable record of ``opts`` for the run manifest."""
    d = asdict(opts)
    if not opts.compile:
        d["compile_mode"] = None  # not used; keeps manifests comparable
    return d


# --------------------------------------------------------------------------- helpers


def unwrap_unet(unet: Any) -> Any:
    """The plain module behind a (possibly) ``torch.compile``-d UNet."""
    return getattr(unet, "_orig_mod", unet)


def _is_compiled(module: Any) -> bool:
    return module is not None and hasattr(module, "_orig_mod")


def _models(pipe: Any) -> list[Any]:
    """The conv/attention models the options apply to (UNet and VAE), uncompiled."""
    out = []
    for name in ("unet", "vae"):
        m = getattr(pipe, name, None)
        if m is not None:
            out.append(unwrap_unet(m))
    return out


def _set_attention(model: Any, kind: str) -> None:
    """Replace the stock attention processors of ``model`` by ``kind``'s."""
    if not hasattr(model, "attn_processors") or not hasattr(model, "set_attn_processor"):
        return
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    stock = (AttnProcessor, AttnProcessor2_0)
    target = AttnProcessor2_0 if kind == "sdpa" else AttnProcessor
    procs = model.attn_processors
    if not procs:
        return
    changed = False
    new: dict[str, Any] = {}
    for name, proc in procs.items():
        if type(proc) in stock and type(proc) is not target:
            new[name] = target()
            changed = True
        else:
            new[name] = proc
    if changed:
        model.set_attn_processor(new)


def _is_fused(model: Any) -> bool:
    procs = getattr(model, "attn_processors", None) or {}
    return any(type(p).__name__.startswith("Fused") for p in procs.values())


def _set_fused(model: Any, fused: bool) -> None:
    if not hasattr(model, "fuse_qkv_projections"):
        return
    if fused and not _is_fused(model):
        procs = getattr(model, "attn_processors", None) or {}
        if any("Added" in type(p).__name__ for p in procs.values()):
            return  # diffusers does not support fusing added-KV attention
        model.fuse_qkv_projections()
    elif not fused and _is_fused(model):
        model.unfuse_qkv_projections()


def _set_memory_format(model: Any, channels_last: bool) -> None:
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)


def _set_cuda_globals(opts: GpuOptions) -> None:
    import torch

    # The legacy flags are honoured by every torch >= 1.7; torch >= 2.9 also
    # has ``fp32_precision``, but mixing both APIs in one process raises, and
    # diffusers / user code still use the legacy ones.
    torch.backends.cuda.matmul.allow_tf32 = bool(opts.tf32)
    torch.backends.cudnn.allow_tf32 = bool(opts.tf32)
    torch.backends.cudnn.benchmark = bool(opts.cudnn_benchmark)


def _configure_inductor() -> None:
    try:
        import torch._inductor.config as ic
    except Exception:  # pragma: no cover - torch without inductor
        return
    for k, v in INDUCTOR_FLAGS.items():
        if hasattr(ic, k):
            setattr(ic, k, v)


def _has_offload_hooks(pipe: Any) -> bool:
    for m in (getattr(pipe, "components", None) or {}).values():
        if hasattr(m, "_hf_hook"):
            return True
    return bool(getattr(pipe, "_all_hooks", None))


# --------------------------------------------------------------------------- entry point


def apply_gpu_options(pipe: Any, opts: GpuOptions, device: str) -> None:
    """Configure ``pipe`` for ``opts`` on ``device`` ("cuda", "cuda:1", "cpu", ...).

    Moves the pipeline to ``device`` unless an offload mode is active on CUDA.
    Idempotent; safe to call before every job.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    is_cuda = dev.type == "cuda"
    offload = opts.offload if is_cuda else "none"

    state = getattr(pipe, _STATE_ATTR, None)
    if state is not None and state["opts"] == opts and state["device"] == str(dev):
        unet = getattr(pipe, "unet", None)
        if not opts.compile or _is_compiled(unet):
            return  # nothing to do: same options, same device (compiled UNet reused)

    prev: GpuOptions | None = state["opts"] if state else None
    prev_offload = state["offload"] if state else "none"

    # 1. process-global numerics (CUDA only)
    if is_cuda:
        _set_cuda_globals(opts)

    # 2. a compiled UNet whose module-level options change is unwrapped first
    unet = getattr(pipe, "unet", None)
    if _is_compiled(unet) and (not opts.compile or prev is None or prev._unet_key() != opts._unet_key()):
        pipe.unet = unwrap_unet(unet)

    structure_changes = prev is None or (
        (prev.attention, prev.channels_last, prev.fuse_qkv) != (opts.attention, opts.channels_last, opts.fuse_qkv)
    )

    # 3. offload hooks must go before modules are edited or placement changes
    if _has_offload_hooks(pipe) and (structure_changes or offload != prev_offload or state is None):
        pipe.remove_all_hooks()
        prev_offload = "none"

    # 4. module structure: attention processors, QKV fusion, memory format
    if structure_changes:
        for model in _models(pipe):
            if not opts.fuse_qkv:
                _set_fused(model, False)
            _set_attention(model, opts.attention)
            if opts.fuse_qkv:
                _set_fused(model, True)
            _set_memory_format(model, opts.channels_last)

    # 5. placement / offload
    if offload == "none":
        pipe.to(dev)
    elif offload != prev_offload:
        if offload == "model":
            pipe.enable_model_cpu_offload(device=dev)
        else:
            pipe.enable_sequential_cpu_offload(device=dev)

    # 6. VAE tiling
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if opts.vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        elif not opts.vae_tiling and hasattr(vae, "disable_tiling"):
            vae.disable_tiling()

    # 7. compile the UNet (once per loaded pipeline)
    unet = getattr(pipe, "unet", None)
    if opts.compile and unet is not None and not _is_compiled(unet):
        _configure_inductor()
        # The autotuning / CUDA-graph modes are CUDA features; on the CPU
        # max-autotune picked kernels 100x slower than eager in our tests.
        mode = opts.compile_mode if is_cuda else "default"
        pipe.unet = torch.compile(unet, mode=mode, fullgraph=False, dynamic=False)

    setattr(pipe, _STATE_ATTR, {"opts": opts, "device": str(dev), "offload": offload})
