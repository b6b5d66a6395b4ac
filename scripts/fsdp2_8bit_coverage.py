"""What the row rule of 8-bit state under FSDP2 costs on real shapes (docs/integration.md,
"Checkpointing at scale"): a param cut along dim 0 keeps 8-bit state only when its rows are whole
blocks (Blockwise8bit.quantizes), else float32 state. Prints, per model and block size, the share
of params of each kind and the state bytes per param and buffer, beside the unsharded run's.

    python scripts/fsdp2_8bit_coverage.py
"""
import math

from noisefuse.bench import presets
from noisefuse.state import Blockwise8bit


def coverage(shapes, spec: Blockwise8bit):
    total = sum(math.prod(s) for s in shapes)
    small = sum(math.prod(s) for s in shapes if math.prod(s) < spec.min_numel)
    rows = sum(math.prod(s) for s in shapes if math.prod(s) >= spec.min_numel and spec.rows_are_whole_blocks(s))
    fallback = total - small - rows
    per_8bit = 1 + 4 / spec.block_size  # a code and its share of a float32 scale
    sharded = (rows * per_8bit + 4 * (fallback + small)) / total
    unsharded = ((rows + fallback) * per_8bit + 4 * small) / total
    return total, rows / total, fallback / total, sharded, unsharded


def main():
    print("| model | block | params with 8-bit state | with float32 state (rows) | bytes/param/buffer (unsharded) |")
    print("|---|---:|---:|---:|---:|")
    for name in ("gpt2-small", "gpt2-medium", "resnet50"):
        preset = presets.get(name)
        for block in (64, 256, 2048):
            total, eight, fallback, sharded, unsharded = coverage(preset.shapes, Blockwise8bit(block))
            print(f"| {name}, {total / 1e6:.1f}M | {block} | {100 * eight:.1f}% | {100 * fallback:.1f}% | "
                  f"{sharded:.3f} ({unsharded:.3f}) |")


if __name__ == "__main__":
    main()
