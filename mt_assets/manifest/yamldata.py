"""YAML into Python data exactly as `yaml.safe_load` gives it, built from the parser's events.

`yaml.safe_load` first composes the whole document into a tree of nodes (each with two marks),
then builds the data from it, in pure Python: 47 s for a manifest of 100,000 files, and most of an
audit's 840 MB (issue 20). Here the data is built straight from the parser's events, with libyaml's
C parser when PyYAML has it, reading a file a chunk at a time, so memory is the data's own. Mapping
keys and short values are shared, one string each: every file entry repeats the same few (`path`,
`kind: weights`, ...).

Built here: block and flow collections, plain and quoted scalars resolved by the safe loader's own
resolver and constructors (str, int, float, bool, null, timestamps, binary), anchors and aliases.
Anything else (another tag, a merge key `<<`, a collection as a key, a second document, a syntax
error) hands the text to `yaml.safe_load`, so the result or the error is always its own. One
difference stays: libyaml accepts a little that PyYAML's own parser refuses (a tab after `key:`,
which YAML 1.2 allows); the data is then what libyaml read.
"""

from __future__ import annotations

from typing import Any, TextIO

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_INT = "tag:yaml.org,2002:int"
# The safe loader's scalar constructors that return a value (the rest build collections or refuse).
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "binary", "timestamp")
)
SHARED_UP_TO = 16  # characters: strings this short are kept once (kinds, small names), longer ones as read


class _Unusual(Exception):
    """Something this builder leaves to yaml.safe_load."""


def load_yaml(document: str | TextIO) -> Any:
    """`yaml.safe_load(document)`: the same data, or the same error, in the memory of the data alone.

    A text file (open for reading, seekable) is read a chunk at a time; it is read whole, from
    the start, only when safe_load has to answer (errors reading it then come from its read()).
    """
    return load_yaml_owned(document)[0]


def load_yaml_owned(document: str | TextIO) -> tuple[Any, bool]:
    """`load_yaml`, and whether no list or mapping in the data is reached twice (no aliases to
    one), so that a reader may take it apart as it goes without changing what it reads later."""
    try:
        builder = _Builder(document)
        return builder.document(), not builder.aliased
    except Exception:  # anything unusual, or an error: let safe_load answer (or raise) as ever
        if isinstance(document, str):
            return yaml.safe_load(document), False
        document.seek(0)
        return yaml.safe_load(document.read()), False


class _Builder:
    def __init__(self, document: str | TextIO) -> None:
        self.loader = _Loader(document)
        if self.loader.yaml_path_resolvers:  # tags by position in the document: safe_load's business
            raise _Unusual
        self.next = self.loader.get_event
        self.resolvers = self.loader.yaml_implicit_resolvers
        self.anchors: dict[str, Any] = {}
        self.aliased = False  # an alias was read: some value is reached twice
        self.shared: dict[str, str] = {}

    def document(self) -> Any:
        try:
            self.next()  # the stream's start
            event = self.next()
            if isinstance(event, StreamEndEvent):
                return None
            if not isinstance(event, DocumentStartEvent):
                raise _Unusual
            data = self.value(self.next())
            self.next()  # the document's end
            if not isinstance(self.next(), StreamEndEvent):
                raise _Unusual  # several documents: safe_load's error
            return data
        finally:
            self.loader.dispose()

    def value(self, event: Any) -> Any:
        kind = type(event)
        if kind is ScalarEvent:
            return self.scalar(event)
        if kind is MappingStartEvent:
            if event.tag not in (None, "!", _MAP):
                raise _Unusual
            mapping: dict[Any, Any] = self.anchor(event, {})
            while True:
                event = self.next()
                kind = type(event)
                if kind is MappingEndEvent:
                    return mapping
                if kind is ScalarEvent:
                    if event.value == "<<" or event.value == "=":  # merge and value keys
                        raise _Unusual
                    key = self.scalar(event)
                elif kind is AliasEvent:
                    key = self.alias(event)
                    hash(key)  # unhashable: safe_load's error
                else:
                    raise _Unusual  # a collection as a key
                mapping[key] = self.value(self.next())
        if kind is SequenceStartEvent:
            if event.tag not in (None, "!", _SEQ):
                raise _Unusual
            sequence: list[Any] = self.anchor(event, [])
            while True:
                event = self.next()
                if type(event) is SequenceEndEvent:
                    return sequence
                sequence.append(self.value(event))
        if kind is AliasEvent:
            return self.alias(event)
        raise _Unusual

    def scalar(self, event: ScalarEvent) -> Any:
        value = event.value
        tag = event.tag
        if tag is None or tag == "!":
            implicit = event.implicit
            if not implicit[0] or (value[:1] not in self.resolvers and None not in self.resolvers):
                tag = _STR  # quoted, or no implicit resolver starts with this character
            else:
                tag = self.loader.resolve(ScalarNode, value, implicit)
        if tag == _STR:
            result: Any = self.shared.setdefault(value, value) if len(value) <= SHARED_UP_TO else value
        elif tag == _INT and value.isdigit() and (value[0] != "0" or value == "0"):
            result = int(value)  # plain decimal (sizes): what construct_yaml_int gives, sooner
        elif tag in _SCALAR_TAGS:
            node = ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
            result = self.loader.yaml_constructors[tag](self.loader, node)
        else:
            raise _Unusual
        return self.anchor(event, result)

    def anchor(self, event: Any, value: Any) -> Any:
        if event.anchor is not None:
            if event.anchor in self.anchors:
                raise _Unusual  # a duplicate anchor: safe_load's error
            self.anchors[event.anchor] = value
        return value

    def alias(self, event: AliasEvent) -> Any:
        self.aliased = True
        try:
            return self.anchors[event.anchor]
        except KeyError:
            raise _Unusual from None  # an undefined alias: safe_load's error
