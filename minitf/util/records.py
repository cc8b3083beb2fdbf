"""Typed records (dataclasses) to and from JSON, keys in field order: how ``minitf.trace.Trace`` and its parts
write and read the documented schema.

A field's metadata says how: ``json=False`` keeps it in memory only, ``key`` renames it, ``omit_none`` leaves it
out when None, ``record`` names the record class it holds (``many``: a list of them), and ``flatten`` writes that
record's keys into its parent's object.
"""
from __future__ import annotations

from dataclasses import MISSING, field, fields, is_dataclass

from minitf.errors import MinitfError


def record_field(cls, many: bool = False, **kw):
    """A field holding a record of ``cls`` (``many``: a list of them)."""
    return field(metadata={"record": cls, "many": many}, **kw)


def optional_field(**metadata):
    """A field that is None unless given, left out of the JSON when None."""
    return field(default=None, metadata={"omit_none": True, **metadata})


class Record:
    """A dataclass with ``to_json()`` and ``from_json(data, where)`` (``where``: how errors name the data)."""

    def to_json(self) -> dict:
        return to_json(self)

    @classmethod
    def from_json(cls, data, where: str = "record"):
        return from_json(cls, data, where)


def to_json(obj):
    """A record (or a list of them, or a plain value) as JSON-ready dicts and lists."""
    if is_dataclass(obj):
        out = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if not f.metadata.get("json", True) or (value is None and f.metadata.get("omit_none")):
                continue
            if f.metadata.get("flatten"):
                out |= to_json(value)
            else:
                out[f.metadata.get("key", f.name)] = to_json(value)
        return out
    return [to_json(x) for x in obj] if isinstance(obj, list) else obj


def from_json(cls, data, where: str):
    """A ``cls`` record from its JSON object; a MinitfError naming ``where`` and the key for a missing one."""
    if not isinstance(data, dict):
        raise MinitfError(f"{where}: expected an object, got {type(data).__name__}")
    kwargs = {}
    for f in fields(cls):
        if not f.metadata.get("json", True):
            continue
        rec, key = f.metadata.get("record"), f.metadata.get("key", f.name)
        if f.metadata.get("flatten"):
            kwargs[f.name] = from_json(rec, data, where)
            continue
        if key not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise MinitfError(f"{where}: missing key {key!r}")
            continue
        value = data[key]
        if rec is not None and value is not None:
            value = ([from_json(rec, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)] if f.metadata["many"]
                     else from_json(rec, value, f"{where}.{key}"))
        kwargs[f.name] = value
    return cls(**kwargs)
