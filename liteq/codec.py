"""The payload codec: a Job to the text stored for it, and back.

A job is stored as JSON, `{"type": "<module>.<QualName>", "state": {...}}`, where the
state is the job's attributes; `{"type": ..., "pickle": ...}` for a class that opts in.
"""

from __future__ import annotations

import base64
import json
import pickle  # only for job classes that opt in with `pickle_state = True`
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, Final

from liteq.errors import PayloadError
from liteq.job import Job, lookup, registered_type, type_name

#: Per class: its stored name, the start of its payloads and its method names, made once.
_HEADS: dict[type, tuple[str, str, frozenset[str]]] = {}
#: One encoder: json.dumps with options would build a new one on every call.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_MAKE_C_ENCODER: Callable[..., Any] | None = getattr(json.encoder, "c_make_encoder", None)
#: _ENCODER's C encoder without its check for circular references (markers=None): made once
#: (JSONEncoder.encode makes one per call, which cost more than encoding a small state), it
#: keeps no state between calls, so threads share it. What it refuses, _ENCODER encodes
#: again to say what is wrong (a circular reference, which here is a RecursionError).
_FAST_ENCODE: Callable[[Any, int], Any] | None = (
    None
    if _MAKE_C_ENCODER is None
    else _MAKE_C_ENCODER(
        None,
        _ENCODER.default,
        json.encoder.encode_basestring_ascii,
        _ENCODER.indent,
        _ENCODER.key_separator,
        _ENCODER.item_separator,
        _ENCODER.sort_keys,
        _ENCODER.skipkeys,
        _ENCODER.allow_nan,
    )
)


def _state_json(state: Any) -> str:
    """_ENCODER.encode(state): the same text, or the same error."""
    if _FAST_ENCODE is not None:
        try:
            return "".join(_FAST_ENCODE(state, 0))
        except (TypeError, ValueError, RecursionError):
            pass  # (_ENCODER says which)
    return _ENCODER.encode(state)


#: What encoding a job takes from its class: its stored name, the start of its payloads,
#: whether its state is its attributes (the default to_state), whether it is pickled, and
#: its method names (a state key among them would hide a method once decoded).
HowToEncode = tuple[str, str, bool, bool, frozenset[str]]


def how_to_encode(cls: type) -> HowToEncode:
    """What encode_as needs of a job class (once per class in a batch); TypeError if its
    jobs cannot be stored."""
    known = _HEADS.get(cls)
    if known is None:
        if not issubclass(cls, Job):
            raise TypeError(f"can only enqueue liteq.Job instances, not {cls.__name__}")
        name = type_name(cls)
        known = _HEADS[cls] = (name, f'{{"type":{json.dumps(name)},"state":', _methods_of(cls))
    name, head, methods = known
    if lookup(name) is not cls:
        raise TypeError(f"{name} is not a registered Job class (was it redefined?)")
    return name, head, cls.to_state is Job.to_state, bool(cls.pickle_state), methods


def encode_as(job: Job, how: HowToEncode) -> tuple[str, str]:
    """(type name, payload text) of a job, with what how_to_encode said of its class;
    TypeError or ValueError before anything is written."""
    name, head, plain, pickled, methods = how
    # The default to_state() copies the attributes; encoding only reads them.
    state = vars(job) if plain else job.to_state()
    if not methods.isdisjoint(state):
        hidden = sorted(methods.intersection(state))[0]
        raise TypeError(
            f"{name}: its state's key {hidden!r} would hide the method {hidden}() of the job "
            "decoded from it: give that value another name"
        )
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
    if len(text) > MAX_DEPTH:
        _check_depth(name, state, text)
    return name, text


def encode_all(jobs: Sequence[Job], how: HowToEncode) -> list[str]:
    """The payload of each of `jobs`, all of the class how_to_encode gave `how` for: what
    encode_as gives, and raises (for the first job in order that it refuses)."""
    name, head, plain, pickled, methods = how
    encode = _FAST_ENCODE
    if plain and not pickled and encode is not None:
        states = list(map(vars, jobs))
        if methods.isdisjoint(chain.from_iterable(states)):
            try:
                payloads = [f"{head}{''.join(encode(state, 0))}}}" for state in states]
            except (TypeError, ValueError, RecursionError):
                pass  # one is refused: encode_as says which, below
            else:
                if max(map(len, payloads), default=0) > MAX_DEPTH:
                    for state, text in zip(states, payloads, strict=True):
                        if len(text) > MAX_DEPTH:
                            _check_depth(name, state, text)
                return payloads
    return [encode_as(job, how)[1] for job in jobs]


def _check_depth(name: str, state: object, text: str) -> None:
    """ValueError if `state` (encoded as `text`) nests deeper than MAX_DEPTH."""
    # A state MAX_DEPTH deep holds as many brackets: most are counted, not walked.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(state) > MAX_DEPTH:
        raise _too_deep(name)


def _methods_of(cls: type) -> frozenset[str]:
    return frozenset(
        name
        for name in dir(cls)
        if not name.startswith("__") and callable(getattr(cls, name, None))
    )


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
    """json.loads(text): the document liteq wrote takes raw_decode alone (loads also
    matches whitespace around it, twice, with a regular expression)."""
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
