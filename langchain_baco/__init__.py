"""LangChain integration of BACO (base + aligned model collaboration decoding).

``ChatBaco`` is a drop-in ``BaseChatModel``; importing this package loads no model.
"""

from .chat_models import ChatBaco, convert_messages

__all__ = ["ChatBaco", "convert_messages"]
