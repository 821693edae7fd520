"""The errors of the FM contract: what any FM raises, and what the method does about each.

The method (``baps_fed.method.spsa_step``) catches only these: a transient failure is retried
and then the step is skipped; a spent budget ends a run cleanly; a refusal or a bad query stops
it with the message. Every FM raises them, the remote one included (``fm/service/errors.py``
subclasses them with the service's own causes).
"""

from __future__ import annotations


class FMInputError(ValueError):
    """A query the FM cannot answer; the message says what was wrong and what to pass instead."""


class FMError(RuntimeError):
    """An FM call failed for a reason other than the query itself."""


class QueryBudgetExceeded(FMError):
    """The FM's query budget would be exceeded by this call; nothing was run."""


class FMTransientError(FMError):
    """A failure that may pass (network, overload, deadline): worth retrying the same query."""


class FMRefused(FMError):
    """The FM refuses this caller or this query size for good: retrying cannot help."""
