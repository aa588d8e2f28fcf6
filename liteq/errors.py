"""The exceptions liteq raises: one root, each with a docstring that is its default message."""

from __future__ import annotations


class LiteqError(Exception):
    """A liteq operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class JobNotFound(LiteqError, KeyError):
    """No job has that id."""

    def __str__(self) -> str:
        # KeyError's __str__ would wrap the message in quotes.
        return str(self.args[0])


class JobLocked(LiteqError):
    """Another holder has locked this job."""


class InvalidStateChange(LiteqError):
    """That status change is not allowed by the status machine."""


class InvalidState(LiteqError):
    """The job is not in a status that allows this operation."""


class LeaseLost(LiteqError):
    """This worker no longer owns the job: it was re-queued and may run elsewhere."""

    def __init__(self, message: str, *, job_id: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id  # (the job's, when the store knows it)


class UnknownJobType(LiteqError):
    """The job's type is not a registered Job class in this process."""


class PayloadError(LiteqError):
    """The job's stored payload cannot be turned back into a Job."""


class StoreError(LiteqError):
    """The store cannot be opened or used."""


class StoreCorrupt(StoreError):
    """The queue file is damaged: retrying cannot help; restore it or recover it."""


class StoreMoved(StoreError):
    """The queue file was deleted or replaced while open: nothing more is written to it."""


class StoreUnavailable(StoreError):
    """The store's server cannot be reached now (down, restarting, or the connection was
    lost): the operation did not happen, or, if the connection was lost as it committed,
    may have. Trying again later may succeed."""


class ResultNotReady(LiteqError):
    """The job has not finished yet (or not within the time given to wait for it)."""


class JobFailed(LiteqError):
    """The job failed for good: it has no result."""

    def __init__(self, message: str | None = None, *, job_id: int = 0, error: str | None = None):
        super().__init__(message)
        #: The job's id, and its last error.
        self.job_id = job_id
        self.error = error


class ResultExpired(LiteqError):
    """The job's result is gone: it expired and was purged, the job was deleted, or it
    completed without keep_result."""
