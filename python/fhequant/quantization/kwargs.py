"""fill_from_kwargs: build options/stats/params from QuantizedArray keyword arguments (§1.5)."""

from __future__ import annotations

from typing import Any, TypeVar

from fhequant.errors import ArgumentError

__all__ = ["fill_from_kwargs"]

T = TypeVar("T")


def fill_from_kwargs(
    obj: T | None, klass: type[T], accept_missing: bool, **kwargs: Any
) -> tuple[T | None, dict[str, Any]]:
    """Move the kwargs that name fields of ``klass`` onto ``obj``.

    For each field of ``klass.FIELDS`` (in order) given in ``kwargs``: create ``klass()`` if
    ``obj`` is None, set the field and drop the kwarg. An ``obj`` given by the caller is
    mutated in place.

    Args:
        obj: the object to fill, or None.
        klass: QuantizationOptions, MinMaxQuantizationStats or UniformQuantizationParameters
            (any class with a ``FIELDS`` tuple).
        accept_missing: allow fields left None when no field is set at all.
        **kwargs: the keyword arguments to pick from.

    Returns:
        (obj, the kwargs that name no field of ``klass``).

    Raises:
        ArgumentError: ``obj`` ends up with some fields None (a TypeError); with
            accept_missing=True only when at least one field is set.
    """
    fields: tuple[str, ...] = klass.FIELDS  # type: ignore[attr-defined]
    given = [name for name in fields if name in kwargs]
    for name in given:
        if obj is None:
            obj = klass()
        setattr(obj, name, kwargs.pop(name))
    if obj is None:
        return obj, kwargs
    values = {name: getattr(obj, name, None) for name in fields}
    missing = [name for name in fields if values[name] is None]
    some_set = len(missing) < len(fields)
    if missing and (not accept_missing or some_set):
        present = [name for name in fields if values[name] is not None]
        raise ArgumentError(
            f"{klass.__name__}: missing {', '.join(missing)} (given: "
            f"{', '.join(present) if present else 'nothing'}); give all of "
            f"{', '.join(fields)} or none of them"
        )
    return obj, kwargs
