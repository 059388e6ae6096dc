"""LlamaIndex integration of baco: :class:`Baco`, BACO decoding as a LlamaIndex ``CustomLLM``.

Importing this package loads no model and downloads nothing.
"""

from .base import Baco

__all__ = ["Baco"]
