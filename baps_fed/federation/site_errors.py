"""What a site may say when a round fails: a fixed error kind and a short reference, never the
exception's text.

Exception texts carry local paths, patient file names and tracebacks, and an error reply leaves
the site like any other. So the site keeps the full error in its own log under a random
reference, and the reply carries only ``"<kind> (site reference <ref>)"``, or
``"<kind> (site reference <ref>, site name <name>)"`` when the site knows its name (the name
every other reply carries too), which the outbox allow-list checks (``sites/outbox.py``).
"""

from __future__ import annotations

import re
import secrets

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
    "site-worker": "the site's long-lived process did not answer its SuperNode (see the site's "
    "terminal)",
}
_SITE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # a name an error reply may carry
_REASON = re.compile(
    rf"^(?P<kind>[a-z-]+) \(site reference (?P<ref>[0-9a-f]{{8}})"
    rf"(?:, site name (?P<site>{_SITE_NAME}))?\)$"
)
# Flower's own error codes (flwr.common.constant.ErrorCode; baps_fed does not import Flower):
# what the operator reads for errors that Flower, not the site's app, reported
FLOWER_ERRORS: dict[int, str] = {
    1: "the site could not load the app (is baps-fed installed there, at this version?)",
    3: "the site's reply was lost (it expired before it arrived)",
    4: "the site's reply was lost (it expired before it arrived)",
    5: "the site went offline before it replied (its SuperNode stopped answering)",
    8: "the site's app process crashed (see the site's log)",
}


def error_kind(err: BaseException, outbox_violation: type[BaseException] | None = None) -> str:
    """The fixed kind of an exception raised while a site handled a message."""
    # imported here: the site's relay (sites/app.py) uses this module without torch
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


def error_reason(kind: str, ref: str, site: str | None = None) -> str:
    """The one text an error reply may carry; ``site``, the site's name, is left out unless
    it is a plain name (letters, digits, ``_.-``, up to 64)."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown site error kind {kind!r}")
    named = site is not None and re.fullmatch(_SITE_NAME, site) is not None
    return (
        f"{kind} (site reference {ref}, site name {site})"
        if named
        else f"{kind} (site reference {ref})"
    )


def reason_parts(reason: str | None) -> tuple[str, str, str | None] | None:
    """(kind, reference, site name or None) of an allowed reason; None for any other text."""
    m = _REASON.match(reason or "")
    if m is None or m["kind"] not in ERROR_KINDS:
        return None
    return m["kind"], m["ref"], m["site"]


def is_allowed_reason(reason: str | None) -> bool:
    """Only ``error_reason``'s own form may leave a site."""
    return reason_parts(reason) is not None


def describe_error(reason: str | None, code: int) -> str:
    """What the coordinator records of a site's error reply, in one line: the kind, its meaning
    and the reference; for Flower's own errors, what the code means. Any other text (Flower's,
    which may hold a site's paths or a traceback) is not shown."""
    parts = reason_parts(reason)
    if parts is None:
        if code in FLOWER_ERRORS:
            return f"flower-error-{code}: {FLOWER_ERRORS[code]}"
        return f"Flower error code {code} (its text is withheld: see the site's log)"
    kind, ref, _ = parts
    return f"{kind}: {ERROR_KINDS[kind]} (site reference {ref})"
