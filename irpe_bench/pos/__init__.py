"""Position encodings besides iRPE (RoPE, relative bias tables, PEG) and the 2D sin-cos absolute embedding.

``from irpe_bench.pos import PosConfig`` is light; the families themselves (timm modules) are in :mod:`.families`.
"""
from .config import PosConfig

__all__ = ["PosConfig"]
