"""Who may query the FM service: the tokens file and per-client policies.

A tokens file is TOML (or JSON with the same structure), one ``[[client]]`` table per client::

    [[client]]
    name = "hospital-a"             # the name metering and error messages use
    token = "3f9c...long random"    # sent as `authorization: Bearer TOKEN` metadata
    quota_images = 100000           # optional: images this client may ever query
    rate_images_per_s = 200         # optional: sustained rate; bursts of one second's worth

Generate tokens with ``python -c "import secrets; print(secrets.token_urlsafe(32))"``.
Without a tokens file the server is open: every caller is the client ``anonymous``, unlimited.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

ANONYMOUS = "anonymous"
_KEYS = {"name", "token", "quota_images", "rate_images_per_s"}


class TokensFileError(ValueError):
    """The tokens file is unreadable or malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class ClientPolicy:
    name: str
    quota_images: int | None = None
    rate_images_per_s: float | None = None


def _parse_client(entry: object, where: str) -> tuple[str, ClientPolicy]:
    if not isinstance(entry, dict):
        raise TokensFileError(f"{where}: expected a table with name and token")
    unknown = set(entry) - _KEYS
    if unknown:
        raise TokensFileError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    name, token = entry.get("name"), entry.get("token")
    if not isinstance(name, str) or not name:
        raise TokensFileError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(token, str) or not token:
        raise TokensFileError(f"{where} ({name}): 'token' must be a non-empty string")
    quota, rate = entry.get("quota_images"), entry.get("rate_images_per_s")
    if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool) or quota < 0):
        raise TokensFileError(f"{where} ({name}): 'quota_images' must be an integer >= 0")
    if rate is not None and (not isinstance(rate, int | float) or isinstance(rate, bool)):
        raise TokensFileError(f"{where} ({name}): 'rate_images_per_s' must be a number")
    if rate is not None and rate <= 0:
        raise TokensFileError(f"{where} ({name}): 'rate_images_per_s' must be > 0")
    return token, ClientPolicy(name, quota, None if rate is None else float(rate))


def token_digest(token: str) -> str:
    """Tokens are looked up by digest, so lookup time reveals nothing about a valid token."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path) -> dict[str, ClientPolicy]:
    """token digest -> policy, from a TOML (or .json) tokens file."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError as err:
        raise TokensFileError(f"tokens file {path} not found") from err
    except (OSError, ValueError) as err:
        raise TokensFileError(f"tokens file {path} cannot be read: {err}") from err
    clients = data.get("client") if isinstance(data, dict) else None
    if not isinstance(clients, list) or not clients:
        raise TokensFileError(
            f"tokens file {path}: expected one or more [[client]] tables (name, token, "
            "optional quota_images, rate_images_per_s)"
        )
    policies: dict[str, ClientPolicy] = {}
    names: set[str] = set()
    for i, entry in enumerate(clients):
        token, policy = _parse_client(entry, f"tokens file {path}, client #{i + 1}")
        digest = token_digest(token)
        if digest in policies:
            raise TokensFileError(f"tokens file {path}: {policy.name} reuses another's token")
        if policy.name in names:
            raise TokensFileError(f"tokens file {path}: client name {policy.name!r} repeated")
        policies[digest] = policy
        names.add(policy.name)
    return policies


def bearer_token(metadata: tuple | list | None) -> str | None:
    """The token of an ``authorization: Bearer TOKEN`` metadata entry, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
