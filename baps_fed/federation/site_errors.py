"""What a site may say when a round fails: a fixed error kind and a short reference, never the
exception's text.

Exception texts carry local paths, patient file names and tracebacks, and an error reply leaves
the site like any other. So the site keeps the full error in its own log under a random
reference, and the reply carries only ``"<kind> (site reference <ref>)"``, which the outbox
allow-list checks (``sites/outbox.py``).
"""

from __future__ import annotations

import re
import secrets

from baps_fed.data.sample import DatasetError
from baps_fed.federation.contract import PrivacyBudgetExhausted
from baps_fed.flat_config import ConfigKeyError
from baps_fed.fm.errors import (
    FMError,
    FMInputError,
    FMRefused,
    FMTransientError,
    QueryBudgetExceeded,
)

# kind -> what the coordinator's operator reads: the cause, and whom to ask
ERROR_KINDS: dict[str, str] = {
    "privacy-budget-spent": "the site declined the round: it would pass its epsilon budget "
    "(its dp-epsilon-budget node config)",
    "configuration": "the run config or the site's node config is invalid (see the site's log)",
    "data": "the site's data could not be read (see the site's log)",
    "fm-unavailable": "the site's FM did not answer",
    "fm-budget": "the site's FM query budget is spent",
    "fm-refused": "the site's FM refused the query or the credentials",
    "outbox-violation": "the reply held something that may not leave the site; nothing was sent",
    "internal": "the site failed (see the site's log)",
}
_REASON = re.compile(r"^(?P<kind>[a-z-]+) \(site reference (?P<ref>[0-9a-f]{8})\)$")


def error_kind(err: BaseException, outbox_violation: type[BaseException] | None = None) -> str:
    """The fixed kind of an exception raised while a site handled a message."""
    if outbox_violation is not None and isinstance(err, outbox_violation):
        return "outbox-violation"
    if isinstance(err, PrivacyBudgetExhausted):
        return "privacy-budget-spent"
    if isinstance(err, QueryBudgetExceeded):
        return "fm-budget"
    if isinstance(err, FMTransientError | ConnectionError | TimeoutError):
        return "fm-unavailable"
    if isinstance(err, FMRefused | FMInputError | FMError):
        return "fm-refused"
    if isinstance(err, DatasetError | FileNotFoundError | NotADirectoryError):
        return "data"
    if isinstance(err, ConfigKeyError | ValueError):
        return "configuration"
    return "internal"


def new_reference() -> str:
    return secrets.token_hex(4)


def error_reason(kind: str, ref: str) -> str:
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown site error kind {kind!r}")
    return f"{kind} (site reference {ref})"


def is_allowed_reason(reason: str | None) -> bool:
    """Only ``error_reason``'s own form may leave a site."""
    m = _REASON.match(reason or "")
    return m is not None and m["kind"] in ERROR_KINDS


def describe_error(reason: str | None, code: int) -> str:
    """What the coordinator records of a site's error reply: the kind, its meaning and the
    reference; any other text (Flower's own, which may hold a site's paths) is not shown."""
    m = _REASON.match(reason or "")
    if m is None or m["kind"] not in ERROR_KINDS:
        return f"Flower error code {code} (its text is withheld: see the site's log)"
    return f"{m['kind']}: {ERROR_KINDS[m['kind']]} (site reference {m['ref']})"
