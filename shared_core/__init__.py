"""baco's framework-free engine: BACO decoding of a base + aligned model pair.

BACO (Base-Aligned Model Collaboration, arXiv 2511.05650) samples each token from either the
base or the aligned model, chosen per token by a cheap router, to get outputs that are more
diverse than the aligned model's while keeping its quality.

Importing this package loads no model and downloads nothing.
"""

from .engine import BacoEngine
from .pair import ModelPair
from .params import GenerationParams
from .prompts import PlainTemplate
from .remote import RemotePair
from .remote_client import RemoteServerError
from .routers import ROUTER_NAMES, RouterSignals, RouterSpec, resolve_router
from .types import Generation, StreamEvent, Usage

__all__ = [
    "ROUTER_NAMES",
    "BacoEngine",
    "Generation",
    "GenerationParams",
    "ModelPair",
    "PlainTemplate",
    "RemotePair",
    "RemoteServerError",
    "RouterSignals",
    "RouterSpec",
    "StreamEvent",
    "Usage",
    "resolve_router",
]
__version__ = "0.1.0"
