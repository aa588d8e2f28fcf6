"""What `liteq enqueue` can tell before it writes a job: that a worker will rebuild it and
can run it (a task's arguments bind to its function; a class's state is what its
`__init__` sets). A job refused here would only have failed later, in a worker."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

from liteq.cli.common import Failure
from liteq.codec import decode, encode_as, how_to_encode
from liteq.errors import PayloadError
from liteq.job import Job
from liteq.task import TaskJob


def build(cls: type[Job], name: str, state: dict[str, Any]) -> Job:
    """The job of class `cls` (stored as `name`) with this state, rebuilt from its payload
    as a worker would rebuild it; Failure, in one line, if it cannot be or cannot run."""
    if issubclass(cls, TaskJob):
        _check_arguments(cls, name, state["args"], state["kwargs"])
    elif _restores_attributes(cls):
        _check_attributes(cls, name, state)
    try:
        job = cls.from_state(state)
    except Exception as exc:
        raise Failure(f"that state does not fit {name}: {type(exc).__name__}: {exc}") from exc
    try:
        return decode(encode_as(job, how_to_encode(cls))[1])
    except PayloadError as exc:
        raise Failure(f"a worker could not rebuild that {name} job: {exc}") from exc


def _check_arguments(
    cls: type[TaskJob], name: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    try:
        signature = inspect.signature(cls.func)
    except (TypeError, ValueError):
        return  # (a builtin, say: nothing to check against)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise Failure(f"those arguments do not fit {name}{signature}: {exc}") from None


def _restores_attributes(cls: type[Job]) -> bool:
    """Whether a worker rebuilds the job by setting its state as attributes (Job's own
    from_state), so that the state must be what the class's __init__ sets."""
    return getattr(cls.from_state, "__func__", None) is getattr(Job.from_state, "__func__", None)


def _check_attributes(cls: type[Job], name: str, state: dict[str, Any]) -> None:
    found = _attributes(cls)
    if found is None:
        return
    may, always = found
    unknown = sorted(key for key in state if key not in may and not hasattr(cls, key))
    if unknown:
        sets = ", ".join(sorted(may)) or "none"
        raise Failure(
            f"the state of {name} has {_names(unknown)}, which its __init__ never sets "
            f"(it sets: {sets})"
        )
    missing = sorted(key for key in always if key not in state and not hasattr(cls, key))
    if missing:
        raise Failure(
            f"the state of {name} lacks {_names(missing)}, which its __init__ always sets "
            "and its run() may read"
        )


def _names(keys: list[str]) -> str:
    return ", ".join(repr(k) for k in keys)


def _attributes(cls: type[Job]) -> tuple[set[str], set[str]] | None:
    """(the attributes the class's __init__ may set, those it always sets), or None when
    that cannot be told for sure: no __init__ of its own, no source to read, or an
    __init__ that hands `self` to other code (which may set anything)."""
    if _is_dataclass(cls):
        if hasattr(cls, "__post_init__"):
            return None
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        required = {
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        return {f.name for f in fields}, required
    inits = [
        klass.__dict__["__init__"]
        for klass in cls.__mro__
        if "__init__" in klass.__dict__ and klass not in (Job, object)
    ]
    if not inits:
        return None  # its attributes are set by whoever makes it: nothing to compare with
    may: set[str] = set()
    always: set[str] = set()
    chained = True  # whether each __init__ so far calls the next one unconditionally
    for init in inits:
        read = _read_init(init)
        if read is None:
            return None
        its_may, its_always, calls_super = read
        may |= its_may
        if chained:
            always |= its_always
        chained = chained and calls_super
    # An assignment that a property or a __setattr__ of the class handles may store its value
    # under any name: then the attributes are not what __init__ names.
    if any(_handled(cls, name) for name in may) or any(
        "__setattr__" in klass.__dict__ for klass in cls.__mro__ if klass is not object
    ):
        return None
    return may, always


def _handled(cls: type, name: str) -> bool:
    """Whether assigning `name` on an instance runs code of the class (a data descriptor)."""
    found = inspect.getattr_static(cls, name, None)
    return found is not None and hasattr(type(found), "__set__")


def _is_dataclass(cls: type) -> bool:
    return dataclasses.is_dataclass(cls)


def _read_init(init: Any) -> tuple[set[str], set[str], bool] | None:
    """(attributes an __init__ may set, those it sets in its top-level statements, whether
    it calls super().__init__ there) from its source; None if it uses `self` otherwise
    than to read or assign attributes."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
        return None
    func = tree.body[0] if tree.body else None
    if not isinstance(func, ast.FunctionDef) or not func.args.args:
        return None
    me = func.args.args[0].arg
    parents = {child: node for node in ast.walk(func) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and node.id == me:
            holder = parents.get(node)
            if not isinstance(holder, ast.Attribute) or holder.attr.startswith("__"):
                return None  # self passed on, or its __dict__ / __setattr__ used
            call = parents.get(holder)
            if isinstance(call, ast.Call) and call.func is holder:
                return None  # a method of its own may set attributes
    may = {name for node in ast.walk(func) for name in _assigned(node, me)}
    always: set[str] = set()
    calls_super = False
    for statement in func.body:
        always.update(_assigned(statement, me))
        calls_super = calls_super or _is_super_init(statement)
    return may, always, calls_super


def _assigned(node: ast.AST, me: str) -> set[str]:
    """The attributes of `me` that one statement assigns."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign | ast.AugAssign):
        targets = [node.target]
    else:
        return set()
    found: set[str] = set()
    todo: list[ast.expr] = list(targets)
    while todo:
        target = todo.pop()
        if isinstance(target, ast.Tuple | ast.List):
            todo.extend(target.elts)
        elif isinstance(target, ast.Starred):
            todo.append(target.value)
        elif (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == me
        ):
            found.add(target.attr)
    return found


def _is_super_init(statement: ast.stmt) -> bool:
    """Whether a statement is `super().__init__(...)`."""
    call = statement.value if isinstance(statement, ast.Expr) else None
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "__init__"
        and isinstance(call.func.value, ast.Call)
        and isinstance(call.func.value.func, ast.Name)
        and call.func.value.func.id == "super"
    )
