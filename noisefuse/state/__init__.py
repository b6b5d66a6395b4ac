"""Compact optimizer state: ``state_dtype=noisefuse.state.Blockwise8bit()`` stores every state
buffer as 8-bit codes with one float32 scale per block (blockwise.py, maps.py)."""
from .blockwise import Blockwise8bit

__all__ = ["Blockwise8bit"]
