"""Reading small text files (configs, sweep files) safely, and numbers as people write them.

- `read_capped`: a regular file of at most `MAX_TEXT_BYTES`, as text (a device such as `/dev/zero`, a FIFO or a huge
  file is refused instead of read without end).
- `load_yaml`: YAML's safe loader with YAML 1.2 numbers (`1e-3`, `1E5`, `.5`, `1_000`, which YAML 1.1 reads as
  strings or not at all), refusing documents whose aliases expand past `MAX_YAML_NODES` nodes (an "alias bomb").
- `parse_scalar`: one `--set` value: `none`, a boolean, an integer, a number, a flow list, else the text.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_TEXT_BYTES = 1 << 20  # 1 MiB: config and sweep files are a few hundred bytes
MAX_YAML_NODES = 100_000  # nodes of a document with every alias expanded

INT_PATTERN = re.compile(r"[-+]?(?:0|[1-9](?:_?[0-9])*)")
FLOAT_PATTERN = re.compile(
    r"[-+]?(?:(?:[0-9](?:_?[0-9])*)?\.[0-9](?:_?[0-9])*(?:[eE][-+]?[0-9]+)?|[0-9](?:_?[0-9])*\.?(?:[eE][-+]?[0-9]+)?"
    r"|[0-9](?:_?[0-9])*\.)"
)


class TextFileError(ValueError):
    """A text file that cannot be read safely, or YAML that cannot be loaded; the message says which and why."""


def read_capped(path: str | Path, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    """The text of a regular file of at most `limit` bytes; TextFileError (naming `what` and the path) otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise TextFileError(f"{what} {str(path)!r} is not a regular file")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise TextFileError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise TextFileError(f"{what} {str(path)!r} is larger than {limit // 1024} KiB")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise TextFileError(
            f"cannot read {what} {str(path)!r}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2's numbers."""


# YAML 1.1's float pattern wants a dot and a signed exponent: replace it for the plain forms people write
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(rf"^(?:{FLOAT_PATTERN.pattern}|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).replace("_", "")
    lowered = text.lower()
    if lowered.lstrip("+-") == ".inf":
        return float("-inf") if lowered.startswith("-") else float("inf")
    if lowered == ".nan":
        return float("nan")
    return float(text)


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in `node` with every alias expanded (aliases share node objects: count each once per reference)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_YAML_NODES + 1)
    return memo[key]


def load_yaml(text: str) -> Any:
    """One YAML document, safely: plain data only, YAML 1.2 numbers, at most MAX_YAML_NODES nodes once aliases are
    expanded; yaml.YAMLError (malformed) or TextFileError (too many nodes) otherwise."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise TextFileError(f"its aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_scalar(text: str) -> Any:
    """A `--set` value as a person writes it: `none`/`null`/`~`/empty, `true`/`false`, an integer (`1_000`), a number
    (`1e-3`, `1E5`, `.5`, `nan`, `inf`), else the text itself."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("none", "null", "~", ""):
        return None
    if lowered in ("true", "false", "yes", "no", "on", "off"):
        return lowered in ("true", "yes", "on")
    if INT_PATTERN.fullmatch(stripped):
        return int(stripped.replace("_", ""))
    if FLOAT_PATTERN.fullmatch(stripped) or lowered.lstrip("+-") in ("inf", "infinity", "nan", ".inf", ".nan"):
        return float(lowered.replace("_", "").replace(".inf", "inf").replace(".nan", "nan"))
    if stripped[:1] in "[{":  # a flow list or mapping: `[300, 100]`
        try:
            return load_yaml(stripped)
        except (yaml.YAMLError, TextFileError, RecursionError):
            return text
    return text


def short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters (an error message names a value; it never dumps a huge one)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
