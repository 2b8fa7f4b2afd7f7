"""Named plug-ins: every kind of extension (datasets, backbones, distances, losses, miners, augmentations,
schedules, test-time views, search back-ends) registers in a `Registry`, and everything that lists
or builds them (the CLI's choices, `--loss-arg name=value`, checkpoints) reads the registry.

A checkpoint stores a component as its registered name plus its keyword arguments, so any component
whose arguments are plain values rebuilds from the checkpoint, whether it was made on the command
line or in Python.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name no component of a registry's kind is registered under: a typo, or a plug-in whose module was not
    imported (the command lines' `--import MODULE`)."""

    def __init__(self, kind: str, name: Any, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


class Registry(Mapping[str, T], Generic[T]):
    """A name -> factory mapping with clear errors; `register` is a decorator.

    `injected` names the constructor parameters the framework fills in itself (a loss's `distance`,
    a distance's `dim`): they are not user arguments and are never listed or parsed as such.
    """

    def __init__(self, kind: str, injected: Sequence[str] = ()) -> None:
        self.kind = kind
        self.injected = tuple(injected)
        self._entries: dict[str, T] = {}

    def register(self, name: str, factory: T | None = None) -> Any:
        """Register `factory` as `name` (use as `@registry.register("name")` or call directly)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
                raise ValueError(f"{self.kind} {name!r} is already registered (by {_qualname(existing)})")
            self._entries[name] = obj
            return obj

        return add if factory is None else add(factory)

    def unregister(self, name: str) -> None:
        """Remove `name` (for plug-ins registered for a while, e.g. in a test)."""
        self.get_or_raise(name)
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def get_or_raise(self, name: str) -> T:
        """The factory registered as `name`, or a ValueError that lists the valid names."""
        if name not in self._entries:
            raise UnknownName(self.kind, name, self.unknown(name))
        return self._entries[name]

    def unknown(self, name: Any) -> str:
        return f"unknown {self.kind} {name!r}; valid names: {', '.join(self._entries)}"

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def signature(self, name: str) -> dict[str, inspect.Parameter]:
        """All constructor parameters of `name`, injected ones included."""
        return dict(_signature(self.get_or_raise(name)).parameters)

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """The user-settable constructor parameters of `name` (injected ones left out)."""
        return {k: p for k, p in _signature(self.get_or_raise(name)).parameters.items()
                if k not in self.injected and k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def describe_parameters(self, name: str) -> str:
        described = [f"{k} ({_type_name(p.annotation)}, default {p.default!r})" if p.default is not p.empty
                     else f"{k} ({_type_name(p.annotation)}, required)" for k, p in self.parameters(name).items()]
        return ", ".join(described) or "none"

    def check_arguments(self, name: str, arguments: Mapping[str, Any], flag: str) -> None:
        """Raise a ValueError naming any argument that `name` does not take."""
        valid = self.parameters(name)
        for key in arguments:
            if key not in valid:
                raise ValueError(f"unknown {flag} {key!r} for {self.kind} {name!r}; "
                                 f"valid: {self.describe_parameters(name)}")

    def parse_arguments(self, name: str, pairs: Sequence[str], flag: str) -> dict[str, Any]:
        """Turn `["margin=0.3", "miner=hard"]` into typed keyword arguments for `name`, by its signature."""
        valid = self.parameters(name)
        parsed: dict[str, Any] = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"{flag} {pair!r} is not of the form name=value")
            if key not in valid:
                raise ValueError(f"unknown {flag} {key!r} for {self.kind} {name!r}; "
                                 f"valid: {self.describe_parameters(name)}")
            if key in parsed:
                raise ValueError(f"{flag} {key!r} is given twice")
            parameter = valid[key]
            try:
                parsed[key] = coerce(text.strip(), parameter.annotation, parameter.default)
            except ValueError as error:
                raise ValueError(f"{flag} {key}={text!r} for {self.kind} {name!r}: {error}") from None
        return parsed

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Call the factory registered as `name` with `kwargs`."""
        return self.get_or_raise(name)(**kwargs)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _signature(factory: Any) -> inspect.Signature:
    try:
        return inspect.signature(factory, eval_str=True)
    except (NameError, TypeError):  # an annotation that cannot be evaluated here: fall back to strings
        return inspect.signature(factory)


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce(text: str, annotation: Any, default: Any = inspect.Parameter.empty) -> Any:
    """Parse `text` as a value of `annotation` (int, float, bool, str, tuples and lists of them,
    Optional[...] with "none"); without an annotation, the default's type decides."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        annotation = type(default) if default not in (inspect.Parameter.empty, None) else str
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in members and text.lower() == "none":
            return None
        errors = []
        for member in (m for m in members if m is not type(None)):
            try:
                return coerce(text, member)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(" or ".join(errors))
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        inner = members[0] if members else str
        values = [coerce(part.strip(), inner) for part in text.split(",") if part.strip()]
        return tuple(values) if origin is tuple or annotation is tuple else values
    if annotation is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if annotation is str:
        return text
    if isinstance(annotation, type) and issubclass(annotation, (int, float, str)):
        return annotation(text)
    raise ValueError(f"cannot parse a value of type {_type_name(annotation)} from the command line")


def call_with_injected(factory: Callable[..., T], arguments: Mapping[str, Any], **injected: Any) -> T:
    """`factory(**arguments, **injected)`, passing only the injected values its signature takes."""
    # Named parameters only: nn.Module's own (*args, **kwargs) must not count as taking everything.
    names = _signature(factory).parameters
    return factory(**arguments, **{k: v for k, v in injected.items() if k in names})
