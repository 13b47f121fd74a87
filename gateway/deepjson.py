"""JSON nested deeper than Python's parser goes, read without recursion (ijson's event parser).

``json.loads`` stops at the interpreter's recursion limit (about 1,000 levels), so one row nested
5,000 deep would make the whole frame or batch around it unreadable. Read here instead, every
container deeper than KEEP_DEPTH is kept as ``[]``: a row reaching that depth is refused for its
depth anyway (``models.MAX_ROW_DEPTH``), while the rows beside it are read exactly as ``json.loads``
reads them (big integers stay ints, duplicate keys keep the last value). Known differences, for
such documents only: ijson's lexer is a little more lenient about number forms and whitespace, and a
``str`` holding a lone surrogate, or bytes in UTF-16/32, are refused.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import ijson

KEEP_DEPTH = 100
# The pure-Python backend: it reads integers of any size as json.loads does (the C one refuses them).
# It runs only for documents json.loads could not read, so its speed (~5 MB/s) does not matter.
_BACKEND = ijson.get_backend("python")


def loads_without_recursion(text: str | bytes) -> Any:
    """Parse standard JSON; ``ValueError`` when it is not."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    root: list[Any] = []
    stack: list[Any] = [root]  # open containers, innermost last
    keys: list[str | None] = [None]  # for each open container: the map key waiting for its value
    skipping = 0  # depth inside a container too deep to keep
    try:
        for event, value in _BACKEND.basic_parse(data):
            item: Any
            if skipping:
                if event in ("start_map", "start_array"):
                    skipping += 1
                elif event in ("end_map", "end_array"):
                    skipping -= 1
                continue
            if event == "map_key":
                keys[-1] = value
                continue
            if event in ("end_map", "end_array"):
                stack.pop()
                keys.pop()
                continue
            if event in ("start_map", "start_array"):
                if len(stack) > KEEP_DEPTH:
                    skipping, item = 1, []
                else:
                    item = {} if event == "start_map" else []
            else:
                item = float(value) if isinstance(value, Decimal) else value
            parent = stack[-1]
            if isinstance(parent, dict):
                parent[keys[-1]] = item
            else:
                parent.append(item)
            if event in ("start_map", "start_array") and not skipping:
                stack.append(item)
                keys.append(None)
    except ijson.JSONError as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if len(root) != 1 or len(stack) != 1:
        raise ValueError("not valid JSON: incomplete document")
    return root[0]
