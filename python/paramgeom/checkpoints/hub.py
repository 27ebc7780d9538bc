"""Hugging Face repo ids in place of paths: ``Qwen/Qwen3-8B`` or ``Qwen/Qwen3-8B@<revision>``,
as mergekit and WeightWatcher users type them.

:func:`resolve` turns such an id into the local snapshot folder, through ``huggingface_hub``:
the local cache first (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``), so a model already there is read without a network; a
download (only the weights, their index and ``config.json``) only when the model is not
cached and downloads are allowed. ``paramgeom diff --offline`` (or ``HF_HUB_OFFLINE=1``)
forbids them: a model missing from the cache is then one line saying so.

A path that exists always wins: ``org/name`` is a repo id only when no such file or folder
exists.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from paramgeom.checkpoints.errors import CheckpointError

__all__ = ["is_repo_id", "offline", "resolve"]

# org/name[@revision]: Hugging Face's own rules for the two names (letters, digits, "-", "_",
# "."; not starting or ending with "-" or "."; no "--" or ".."), a revision of branch, tag
# or commit characters.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(
    rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[A-Za-z0-9][\w./-]{{0,199}}))?$"
)
_TRUE = ("1", "true", "yes", "on")

# What a download fetches: the checkpoint and what pairing reads beside it.
_SAFETENSORS_FILES = ["*.safetensors", "*.safetensors.index.json", "config.json"]
_TORCH_FILES = ["*.bin", "*.bin.index.json", "*.pt", "*.pth", "config.json"]


def is_repo_id(spec: str) -> bool:
    """Whether ``spec`` is spelled like ``org/name`` or ``org/name@revision``."""
    m = _REPO_ID.match(spec)
    return bool(m) and ".." not in m.group("repo") and "--" not in m.group("repo")


def offline() -> bool:
    """True when downloads are forbidden (``HF_HUB_OFFLINE``; ``--offline`` sets it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _cache_dir() -> str | None:
    """The hub cache as the environment says now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def resolve(spec: str) -> Path:
    """The local snapshot folder of repo id ``spec`` (cache first, then a download where
    allowed); :class:`CheckpointError` naming ``spec`` otherwise."""
    m = _REPO_ID.match(spec)
    if m is None or not is_repo_id(spec):
        raise CheckpointError(spec, None, "no such file or directory")
    repo, revision = m.group("repo"), m.group("revision")
    try:
        import huggingface_hub
        from huggingface_hub.utils import LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError(
            spec, None, "no such file or directory, and huggingface_hub is not installed to "
            "resolve it as a Hugging Face repo id (pip install huggingface_hub)",
        ) from None  # fmt: skip
    cache = _cache_dir()
    try:
        # The cache first: no network, whatever HF_HUB_OFFLINE says.
        return Path(
            huggingface_hub.snapshot_download(
                repo, revision=revision, cache_dir=cache, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise CheckpointError(spec, None, f"Hugging Face cache unreadable: {exc}") from None
    where = cache or "the default Hugging Face cache"
    if offline():
        raise CheckpointError(
            spec, None, f"not a path, and the Hugging Face repo {repo}"
            f"{'@' + revision if revision else ''} is not in {where}; --offline / "
            "HF_HUB_OFFLINE=1 forbid downloading it",
        )  # fmt: skip
    # huggingface_hub logs each retry on stderr; the one line below says what failed.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        files = huggingface_hub.list_repo_files(repo, revision=revision)
        patterns = (
            _SAFETENSORS_FILES if any(f.endswith(".safetensors") for f in files) else (_TORCH_FILES)
        )
        return Path(
            huggingface_hub.snapshot_download(
                repo, revision=revision, cache_dir=cache, allow_patterns=patterns
            )
        )
    except Exception as exc:  # HTTP, connection (httpx's own types), disk: one line each
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            spec, None, f"not a path, and downloading Hugging Face repo {repo} failed: "
            f"{first[:200]}",
        ) from None  # fmt: skip
