"""The tiled upscaler's cost per megapixel on the CPU (issue 13), at a few tile sizes.

Two tiny ESRGAN-family models with random weights (written by :mod:`sdbatch.sources.tiny.upscale`): an ESRGAN
(RRDBNet, 8 filters, 1 RRDB block) and a Real-ESRGAN Compact (SRVGGNetCompact, 8 features, 2 convolutions),
both 4x. Each upscales the same gradient image with :func:`sdbatch.runtime.upscalers.tiled` (the blended tiles
the ``upscale`` stage runs) at each tile size, and with ``tile: 0`` (the whole image at once); prints the
median seconds per megapixel of *output* over ``--repeats`` runs, and the tiles' overhead over the whole image.
Real models are far wider (64 filters, 23 blocks): their cost per megapixel scales with their size, the
overhead of tiling (the overlap computed twice) with ``(tile + overlap) ** 2 / tile ** 2``.

    python benchmarks/upscale_tiles.py [--size 384] [--tiles 0 64 128 256] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384, help="input image side in pixels (output is 4x)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[0, 64, 128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from sdbatch.runtime.upscalers import load_descriptor, tile_overlap, tiled, to_tensor
    from sdbatch.sources.tiny.upscale import save_tiny_compact, save_tiny_esrgan

    if args.threads:
        torch.set_num_threads(args.threads)
    y, x = np.mgrid[0:args.size, 0:args.size]
    image = Image.fromarray((np.stack([x, y, (x + y) // 2], -1) % 256).astype("uint8"))
    tensor = to_tensor(image)
    out_mp = (args.size * 4) ** 2 / 1e6
    print(f"input {args.size}x{args.size} -> output {args.size * 4}x{args.size * 4} ({out_mp:.2f} MP), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        files = {"ESRGAN (RRDBNet 8nf 1nb)": save_tiny_esrgan(Path(tmp) / "esrgan.safetensors"),
                 "Real-ESRGAN Compact (8nf 2nc)": save_tiny_compact(Path(tmp) / "compact.safetensors")}
        for name, path in files.items():
            model = load_descriptor(path, allow_pickle=False)

            def run(part, model=model):
                with torch.inference_mode():
                    return model(part)

            whole = None
            tiled(run, tensor[..., :64, :64], 4, 0)  # warm-up: the first call pays torch's one-off costs
            print(f"\n{name}")
            print(f"  {'tile':>6} {'overlap':>8} {'s/MP':>8} {'vs whole':>9}")
            for tile in args.tiles:
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    tiled(run, tensor, 4, tile)
                    times.append(time.perf_counter() - start)
                per_mp = statistics.median(times) / out_mp
                if tile == 0:
                    whole = per_mp
                ratio = f"{per_mp / whole:8.2f}x" if whole else "        -"
                label = "whole" if tile == 0 else str(tile)
                overlap = "-" if tile == 0 else str(tile_overlap(tile))
                print(f"  {label:>6} {overlap:>8} {per_mp:8.3f} {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
