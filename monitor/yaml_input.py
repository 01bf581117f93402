"""YAML that may hold secrets, read from a file or an environment variable, with bounds.

A configuration file is refused when it is larger than `MAX_FILE_BYTES`, is not UTF-8, or expands
(aliases followed, merge keys included) to more than `MAX_NODES` nodes: an alias bomb is refused
on the composed node graph, before anything copies it. An error names where (line, column) and
what kind of problem it is, never the text: the offending line may hold an inline secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

#: A configuration is a few kilobytes; anything this large is a mistake or an attack.
MAX_FILE_BYTES = 1 << 20
#: Nodes of the document with every alias expanded (what `${VAR}` expansion would walk).
MAX_NODES = 100_000

# Quoted parts of PyYAML's messages that are its own token names or a single character are kept;
# anything longer (a tag, an anchor name) is the user's text and is left out.
_QUOTED = re.compile(r"'([^']*)'")


class YAMLInputError(ValueError):
    """The text is not a YAML document we accept; the message holds none of the text."""


def read_config_text(path: Path) -> str:
    """The file's text; `OSError` when it cannot be read, `YAMLInputError` when it is too large
    or not UTF-8."""
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise YAMLInputError(f"larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data[: exc.start].decode("utf-8", "replace"))
        raise YAMLInputError(
            f"line {line}, column {column}: not UTF-8 text (byte 0x{data[exc.start]:02x})"
        ) from None


def parse_yaml(text: str) -> Any:
    """One document, safely constructed, within `MAX_NODES`. Raises `YAMLInputError`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise YAMLInputError(_describe(exc)) from None
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text[: exc.position])
        raise YAMLInputError(
            f"line {line}, column {column}: invalid YAML: character #x{exc.character:04x}"
            " is not allowed"
        ) from None
    except yaml.YAMLError as exc:
        raise YAMLInputError(f"invalid YAML: {type(exc).__name__}") from None
    except RecursionError:
        raise YAMLInputError("invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node) -> None:
    """Count nodes as a walk that follows aliases would meet them; stop at the limit. Aliases
    share node objects in the composed graph, so a bomb is small here and is caught early."""
    seen = 0
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise YAMLInputError(
                f"expands to more than {MAX_NODES:,} nodes (aliases followed): refused"
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)


def _describe(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    kind = " ".join(_scrub(part) for part in (exc.problem, exc.context) if part)
    return f"{where}invalid YAML: {kind or type(exc).__name__}"


def _scrub(message: str) -> str:
    def keep(m: re.Match[str]) -> str:
        inner = m.group(1)
        if len(inner) <= 2 or (inner.startswith("<") and inner.endswith(">")):
            return m.group(0)
        return "(text left out)"

    return _QUOTED.sub(keep, message)


def _line_column(before: str) -> tuple[int, int]:
    """1-based line and column of the character that follows `before`."""
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
