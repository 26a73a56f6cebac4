"""Task families. Importing this package registers the built-in ones."""

from . import guess_item  # noqa: F401  (registers "guess-item-v0")
from . import open_chat  # noqa: F401  (registers "open-chat-v0")
