"""Errors a remote FM raises, and the trailing metadata that tells them apart.

RESOURCE_EXHAUSTED means three different things (quota, rate limit, message size) that call for
different actions, so the server names which in the ``baps-fm-error`` trailing metadata.
"""

from __future__ import annotations

from baps_fed.fm.errors import FMError, FMRefused, FMTransientError, QueryBudgetExceeded

ERROR_KEY = "baps-fm-error"  # trailing metadata: "quota" | "rate" | "message-size"
RETRY_AFTER_KEY = "baps-fm-retry-after-s"


class FMServiceError(FMError):
    """A remote FM call failed; the message says why and what to do."""


class FMServiceFailure(FMServiceError, FMTransientError):
    """The call failed or timed out at the service (it may pass on a retry)."""


class FMAuthError(FMServiceError, FMRefused):
    """The service refused the token (missing, unknown or not allowed)."""


class FMUnavailable(FMServiceError, FMTransientError):
    """The service could not be reached, even after the configured retries."""


class FMMessageTooLarge(FMServiceError, FMRefused):
    """A request or response exceeds a gRPC message-size limit."""


class FMRateLimited(FMServiceError, FMTransientError):
    """The client's rate limit was still exceeded after the configured retries."""


class RemoteQuotaExceeded(QueryBudgetExceeded):
    """The service's quota for this client is used up; nothing was run."""
