"""The Hugging Face hub check: a hub id that cannot load (invalid, offline, unreachable) fails at once.

One quick probe and one line, instead of the hub client's retries (26 s offline).
"""

from __future__ import annotations

import os

from itda_core.errors import ITDAError
from itda_core.models.embedded import EMBEDDED_MODELS

HUB_PROBE_SECONDS = 3.0  # one quick connection to the hub before transformers' own retries (26 s offline)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network, read now, not at import."""
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # fmt: skip


def _hub_cached(name: str, revision: str | None) -> bool:
    """Whether the hub model's config.json is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)


def _hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """None when the hub's host accepts a connection within ``timeout`` seconds, else why not (one line)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError as err:
        return f"cannot reach {constants.ENDPOINT} ({type(err).__name__}: {str(err)[:100]})"
    return None


def check_hub_id(name: str, revision: str | None = None) -> None:
    """Fail at once, in one line, for a hub id that cannot load: not a valid id, or neither cached nor reachable
    (offline, HF_HUB_OFFLINE set, or no network), instead of after the hub client's retries."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    aliases = ", ".join(EMBEDDED_MODELS)
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ITDAError(f"{name[:80]!r} is not a model folder, a .gguf file, a valid hub id or an embedded alias "
                        f"({aliases})") from err
    if _hub_cached(name, revision):
        return
    if hub_offline():
        raise ITDAError(f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set (no "
                        f"network use); unset it to download, or use a local folder, a .gguf file or an embedded "
                        f"alias ({aliases})")
    problem = _hub_reachable()
    if problem:
        raise ITDAError(f"model {name!r} is not in the local Hugging Face cache and {problem}: check your network, "
                        f"or use a local folder, a .gguf file or an embedded alias ({aliases})")
