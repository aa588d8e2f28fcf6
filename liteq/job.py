"""The Job base class, the registry of job types, and the payload codec.

A job is stored as JSON, `{"type": "<module>.<QualName>", "state": {...}}`, where the
state is the job's attributes. A process turns a payload back into a Job only through
the registry of Job subclasses it has imported: payloads are data, never code.
"""

from __future__ import annotations

import base64
import json
import pickle  # only for job classes that opt in with `pickle_state = True`
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, ParamSpec, TypeVar

from liteq.errors import PayloadError, UnknownJobType

if TYPE_CHECKING:
    from liteq.managed import ManagedJob, Status
    from liteq.options import EnqueueOptions
    from liteq.stores._base import BaseStore

_REGISTRY: dict[str, type[Job]] = {}
#: Per class: its stored name and the start of its payloads, made once.
_HEADS: dict[type[Job], tuple[str, str]] = {}
#: One encoder: json.dumps with options would build a new one on every call.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
#: Per thread, _ENCODER's C encoder, made once: JSONEncoder.encode makes one on every
#: call, which cost more than encoding a small state (see _state_json).
_C_ENCODERS = threading.local()
_MAKE_C_ENCODER: Callable[..., Any] | None = getattr(json.encoder, "c_make_encoder", None)


def _state_json(state: Any) -> str:
    """_ENCODER.encode(state), the same text, without building an encoder per call."""
    make = _MAKE_C_ENCODER
    if make is None:  # no C accelerator in this Python
        return _ENCODER.encode(state)
    try:
        encoder, markers = _C_ENCODERS.pair
    except AttributeError:
        markers = {}  # circular-reference marks: empty between calls
        encoder = make(
            markers,
            _ENCODER.default,
            json.encoder.encode_basestring_ascii,
            _ENCODER.indent,
            _ENCODER.key_separator,
            _ENCODER.item_separator,
            _ENCODER.sort_keys,
            _ENCODER.skipkeys,
            _ENCODER.allow_nan,
        )
        _C_ENCODERS.pair = encoder, markers
    try:
        return "".join(encoder(state, 0))
    except BaseException:
        markers.clear()  # an error can leave marks behind
        raise


def type_name(cls: type) -> str:
    """The name a job class is stored under: `module.QualName`."""
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_type(name: str) -> type[Job]:
    """Return the Job class stored as `name`, or raise UnknownJobType."""
    try:
        return _REGISTRY[name]
    except KeyError:
        module = name.rpartition(".")[0] or name
        hint = (
            "job classes run by `liteq work` must live in an importable module, not __main__"
            if module == "__main__"
            else f"import {module} in the worker (liteq work --import {module})"
        )
        raise UnknownJobType(
            f"unknown job type {name!r}: no Job subclass of that name is imported "
            f"in this process; {hint}"
        ) from None


def backoff(attempts: int, base: float = 2.0, cap: float = 3600.0) -> float:
    """About `base ** attempts` seconds, ±25 % jitter, at most `cap`, never zero."""
    nominal = min(cap, base ** min(attempts, 64))
    jittered = nominal * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not crypto
    return max(0.001, min(cap, jittered))


class Job:
    """Base class of a unit of work. Subclass it and implement `run`.

    Example::

        class SendEmail(liteq.Job):
            def __init__(self, to: str) -> None:
                self.to = to
            def run(self, job: liteq.ManagedJob) -> None:
                mailer.send(self.to)

        store.enqueue(SendEmail("ann@example.com"))

    The job's attributes are its state and must be JSON-encodable (set
    `pickle_state = True` on the class to store them with pickle instead).
    """

    #: Store the state with pickle instead of JSON (trusted data only).
    pickle_state: ClassVar[bool] = False
    #: Retry waits about `retry_backoff ** attempts` seconds, with jitter ...
    retry_backoff: ClassVar[float] = 2.0
    #: ... but never more than this many seconds.
    retry_backoff_max: ClassVar[float] = 3600.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = type_name(cls)
        _REGISTRY[name] = cls
        _HEADS[cls] = (name, f'{{"type":{json.dumps(name)},"state":')

    def run(self, job: ManagedJob) -> Status | None:
        """Do the work. Return None when done, or `Status.WAIT_ASYNC` to finish later.

        An exception fails the attempt: the job is retried while attempts remain.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def cleanup(self) -> None:
        """Called after every attempt, whatever its outcome."""

    def status_did_change(self, job: ManagedJob, old_status: Status, message: str | None) -> None:
        """Called after each status change of this job; an exception here is only logged."""

    def description(self) -> str:
        """A one-line description for logs and tables."""
        return type(self).__name__

    def coalesce_id(self) -> str | None:
        """A key: while a job with it is queued, running, waiting or failed, enqueue returns that job."""
        return None

    def enqueue_options(self) -> EnqueueOptions:
        """Default enqueue options for this job (explicit enqueue arguments win)."""
        return {}

    def resolve_wait_async(self, data: Any) -> Status:
        """Finish a WAIT_ASYNC job with `data` from a callback; return the new Status."""
        raise NotImplementedError(
            f"{type(self).__name__} returned WAIT_ASYNC but does not implement resolve_wait_async()"
        )

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait before the next attempt after `attempts` starts: never zero."""
        return backoff(attempts, self.retry_backoff, self.retry_backoff_max)

    # -- state -------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """The state to store: by default the instance's attributes."""
        return dict(vars(self))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Job:
        """Rebuild a job from its stored state; raise to say the state does not fit."""
        job = cls.__new__(cls)
        job.__dict__.update(state)
        return job


def encode(job: Job) -> tuple[str, str]:
    """Return (type name, payload text) for a job, or raise TypeError before anything is written."""
    return encode_as(job, how_to_encode(type(job)))


#: What encoding a job takes from its class: its stored name, the start of its payloads,
#: whether its state is its attributes (the default to_state), whether it is pickled.
HowToEncode = tuple[str, str, bool, bool]


def how_to_encode(cls: type) -> HowToEncode:
    """What encode_as needs of a job class (once per class in a batch); TypeError if its
    jobs cannot be stored."""
    if not issubclass(cls, Job):
        raise TypeError(f"can only enqueue liteq.Job instances, not {cls.__name__}")
    name, head = _HEADS.get(cls) or (type_name(cls), "")
    if _REGISTRY.get(name) is not cls:
        raise TypeError(f"{name} is not a registered Job class (was it redefined?)")
    return name, head, cls.to_state is Job.to_state, bool(cls.pickle_state)


def encode_as(job: Job, how: HowToEncode) -> tuple[str, str]:
    """encode(job), with what how_to_encode said of its class."""
    name, head, plain, pickled = how
    # The default to_state() copies the attributes; encoding only reads them.
    state = vars(job) if plain else job.to_state()
    if pickled:
        try:
            blob = base64.b64encode(pickle.dumps(state, protocol=5)).decode("ascii")
        except RecursionError:
            raise _too_deep(name) from None
        return name, json.dumps({"type": name, "pickle": blob})
    try:
        text = f"{head}{_state_json(state)}}}"  # {"type": name, "state": state}
    except (TypeError, ValueError) as exc:
        raise TypeError(_unencodable(name, state, exc)) from None
    except RecursionError:
        raise _too_deep(name) from None
    # A state MAX_DEPTH deep holds as many brackets: most are counted, not walked.
    if (
        len(text) > MAX_DEPTH
        and text.count("[") + text.count("{") > MAX_DEPTH
        and _depth(state) > MAX_DEPTH
    ):
        raise _too_deep(name)
    return name, text


_DECODER = json.JSONDecoder()

#: The deepest a state may nest (a dict in a list in a dict ... counts one per level).
#: Decoding takes a level of Python's recursion limit (1,000) per level, and a worker, far
#: down its own stack when it decodes, needs the rest: so states end well short of it.
MAX_DEPTH: Final = 100


def _depth(state: object) -> int:
    """How deeply `state` nests lists and dicts, walked without recursion."""
    deepest, todo = 0, [(state, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            items: Any = value.values()
        elif isinstance(value, list | tuple):
            items = value
        else:
            continue
        deepest = max(deepest, depth)
        todo.extend((item, depth + 1) for item in items)
    return deepest


def _too_deep(name: str) -> ValueError:
    return ValueError(
        f"cannot store {name}: its state nests lists and dicts more than {MAX_DEPTH} levels "
        "deep; store flatter data"
    )


def _parse(text: str) -> Any:
    """json.loads(text): the document liteq wrote takes raw_decode alone (0.5 µs rather
    than 2: loads also matches whitespace around it, twice, with a regular expression)."""
    try:
        try:
            doc, end = _DECODER.raw_decode(text)
        except (ValueError, TypeError):  # (loads says what is wrong, and reads bytes too)
            end = -1
        return doc if end == len(text) else json.loads(text)
    except RecursionError:  # written by hand, or by a liteq without MAX_DEPTH
        raise PayloadError(
            f"the stored payload nests too deeply to decode (states may nest {MAX_DEPTH} levels)"
        ) from None


def _unencodable(name: str, state: dict[str, Any], exc: Exception) -> str:
    for key, value in state.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return (
                f"cannot store {name}: attribute {key!r} holds a "
                f"{type(value).__name__} ({value!r:.60}), which JSON cannot hold; "
                "store plain data (str, int, float, bool, None, lists, dicts) "
                "or set pickle_state = True on the class"
            )
    return f"cannot store {name}: {exc}"


def decode(payload: str) -> Job:
    """Turn a stored payload back into a Job, or raise UnknownJobType / PayloadError."""
    try:
        doc = _parse(payload)
    except (ValueError, TypeError) as exc:
        raise PayloadError(f"the stored payload is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise PayloadError("the stored payload has no job type")
    cls = registered_type(doc["type"])
    if "pickle" in doc:
        if not cls.pickle_state:
            raise PayloadError(
                f"{doc['type']} does not allow pickled state (pickle_state is False)"
            )
        try:
            state = pickle.loads(base64.b64decode(doc["pickle"]))  # noqa: S301 - opted in by the class
        except Exception as exc:
            raise PayloadError(
                f"the pickled state of {doc['type']} cannot be loaded: {exc}"
            ) from None
    else:
        state = doc.get("state")
    if not isinstance(state, dict):
        raise PayloadError(f"the stored state of {doc['type']} is not an object")
    try:
        return cls.from_state(state)
    except Exception as exc:
        raise PayloadError(
            f"the stored state no longer fits {doc['type']}: {type(exc).__name__}: {exc}"
        ) from None


P = ParamSpec("P")
R = TypeVar("R")


class TaskJob(Job):
    """A call of a function decorated with `@store.task`; its state is the arguments."""

    func: ClassVar[Callable[..., Any]]

    def __init__(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs

    def run(self, job: ManagedJob) -> Status | None:
        """Call the function with the stored arguments."""
        result = type(self).func(*self.args, **self.kwargs)
        from liteq.managed import Status  # a cycle at import time otherwise

        return Status.WAIT_ASYNC if result is Status.WAIT_ASYNC else None

    def description(self) -> str:
        """`module.function(args)`."""
        parts = [repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{type(self).__qualname__}({', '.join(parts)})"


class Task(Generic[P, R]):
    """A function made into a job type by `@store.task(...)`.

    Call it to run it now; `enqueue(*args, **kwargs)` to run it in a worker.
    """

    def __init__(self, store: BaseStore, func: Callable[P, R], options: EnqueueOptions) -> None:
        if "<locals>" in func.__qualname__:
            raise TypeError(f"@task needs a module-level function; {func.__qualname__} is nested")
        self.store = store
        self.func = func
        self.options = options
        self.job_class: type[TaskJob] = type(
            func.__name__,
            (TaskJob,),
            {
                "func": staticmethod(func),
                "__module__": func.__module__,
                "__qualname__": func.__qualname__,
            },
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> ManagedJob:
        """Enqueue a call with these (JSON-encodable) arguments; return its ManagedJob."""
        return self.store.enqueue(self.job_class(list(args), dict(kwargs)), **self.options)

    def enqueue_with(
        self,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> ManagedJob:
        """Enqueue a call with enqueue options for this call only (they win over the decorator's)."""
        merged: dict[str, Any] = {**self.options, **options}
        return self.store.enqueue(self.job_class(list(args), dict(kwargs or {})), **merged)
