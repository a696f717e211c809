#!/usr/bin/env python3
"""Checks that outbox-runtime's modules import one way.

Every top-level module of `outbox-runtime/src` has a layer in LAYERS. Code in
a module may name another top-level module only if that module's layer comes
earlier (modules of one layer do not name each other), and never the crate
root's re-exports: `crate::x::...`, `super::x::...` that climbs to the root,
and every leaf of a `use` group are checked. Comments and string literals are
not code and are skipped.

    scripts/check-imports.py              # exit 1 and list every offence
    scripts/check-imports.py --self-test  # shows that it catches each kind
"""

import re
import sys
import tempfile
from pathlib import Path

# Earlier layers know nothing of later ones. ARCHITECTURE.md explains the order.
LAYERS = [
    ["backoff", "metrics"],  # utilities
    ["message"],  # the user's types
    ["envelope"],  # the wire format
    ["handler"],  # what a handler sees and returns
    ["registry"],  # what the macros register
    ["dispatch"],  # the table and the dispatcher
    ["store"],  # the outbox and inbox tables
    ["pump"],  # the signal from the app's commit to the relay
    ["transport"],  # queues
    ["relay"],  # store -> transport
    ["consume"],  # transport -> dispatch, inside the store's transaction
    ["lambda", "aws", "admin", "schema"],  # edges: AWS, operators, contracts
    ["local"],  # the whole pipeline in one process
    ["testing"],  # the harness, over the local pipeline
]

SRC = Path(__file__).resolve().parent.parent / "outbox-runtime" / "src"


def layer_of(module):
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    return None


def module_path(path, src):
    """`store/sqlite.rs` -> ["store", "sqlite"]; `store/mod.rs` -> ["store"]."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def strip(text):
    """The text with comments and string and char literals blanked (newlines
    kept, so line numbers stay)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif (raw := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not text[i - 1].isalnum()):
            close = '"' + raw.group(1)
            end = text.find(close, i + raw.end())
            end = n if end < 0 else end + len(close)
            out.append("\n" * text.count("\n", i, end) + '""')
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j) + '""')
            i = j + 1
        elif c == "'" and (lit := re.match(r"'(\\.[^']*|[^'\\])'", text[i:])):
            out.append("' '")
            i += lit.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def use_leaves(tree):
    """The full paths a use tree names: `crate::{a::X, b::{Y, Z}}` ->
    [crate::a::X, crate::b::Y, crate::b::Z]."""
    tokens = re.findall(r"::|\{|\}|,|\*|[A-Za-z_][A-Za-z0-9_]*", tree)
    pos = 0

    def parse(prefix):
        nonlocal pos
        leaves, path = [], list(prefix)
        while pos < len(tokens):
            tok = tokens[pos]
            if tok == "{":
                pos += 1
                while tokens[pos] != "}":
                    leaves += parse(path)
                    if tokens[pos] == ",":
                        pos += 1
                pos += 1
                return leaves
            if tok in (",", "}"):
                break
            if tok == "as":
                pos += 2
                continue
            if tok != "::":
                path.append(tok)
            pos += 1
        return leaves + [path]

    return [leaf for leaf in parse([]) if leaf]


def named_module(segments, file_module):
    """The top-level module a path names, "" for the crate root's items,
    or None when the path stays inside this crate's module tree or leaves it."""
    if segments[0] == "crate":
        rest = segments[1:]
    elif segments[0] == "super":
        here = list(file_module)
        rest = list(segments)
        while rest and rest[0] == "super":
            if not here:
                return None
            here.pop()
            rest.pop(0)
        if here:
            return None  # still inside this module's own tree
    else:
        return None
    if not rest or rest[0] == "*" or not rest[0].islower() or layer_of(rest[0]) is None:
        return ""
    return rest[0]


def inline_modules(code):
    """(start, end, name) of each `mod name { ... }` in stripped code."""
    spans = []
    for m in re.finditer(r"\bmod\s+([A-Za-z_]\w*)\s*\{", code):
        depth, i = 0, m.end() - 1
        while i < len(code):
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            if depth == 0:
                break
            i += 1
        spans.append((m.start(), i, m.group(1)))
    return spans


def module_at(file_module, spans, pos):
    """The module path at `pos`: the file's, then the inline modules around it."""
    return file_module + [name for start, end, name in spans if start < pos < end]


def offences(src):
    found = []
    for path in sorted(src.rglob("*.rs")):
        file_module = module_path(path, src)
        module = file_module[0]
        if module == "lib":
            continue
        own = layer_of(module)
        where = path.relative_to(src)
        if own is None:
            found.append(f"{where}: module `{module}` has no layer in {__file__}")
            continue
        code = strip(path.read_text())
        spans = inline_modules(code)
        named = []
        for use in re.finditer(r"\buse\s+([^;]+);", code):
            here = module_at(file_module, spans, use.start())
            line = code.count("\n", 0, use.start()) + 1
            named += [(line, here, leaf) for leaf in use_leaves(use.group(1))]
        rest = re.sub(r"\buse\s+[^;]+;", lambda m: " " * len(m.group(0).replace("\n", "")) + "\n" * m.group(0).count("\n"), code)
        for m in re.finditer(r"\b(?:crate|super)(?:\s*::\s*(?:super|[A-Za-z_]\w*))+", rest):
            here = module_at(file_module, spans, m.start())
            line = rest.count("\n", 0, m.start()) + 1
            named.append((line, here, re.split(r"\s*::\s*", m.group(0))))
        for line, here, segments in named:
            target = named_module(segments, here)
            if target is None or target == module:
                continue
            if target == "":
                found.append(
                    f"{where}:{line}: `{module}` names `{'::'.join(segments)}` through the "
                    f"crate root; name the module"
                )
            elif layer_of(target) >= own:
                found.append(
                    f"{where}:{line}: `{module}` imports `{target}`, which is not in an "
                    f"earlier layer"
                )
    return found


def self_test():
    cases = {
        "store/mod.rs": "use crate::{envelope::Envelope, relay::Relay};\n",
        "store/sqlite.rs": "fn f() { super::super::consume::Consumer::new(); }\n",
        "store/row.rs": "use crate::\n    transport::Delivery;\n",
        "pump.rs": 'use crate::{Envelope};\nconst URL: &str = "http://x"; use crate::relay::Relay;\n',
        "relay.rs": (
            "use crate::store::Store;\n/// [`x`](crate::consume)\n/* crate::consume */\n"
            'const S: &str = "crate::consume";\nmod tests { use super::*; }\n'
            "mod inner { use super::Relay; }\n"
        ),
        "backoff.rs": "use super::metrics::Metrics;\n",
    }
    expected = [
        "backoff.rs:1: `backoff` imports `metrics`",
        "pump.rs:1: `pump` names `crate::Envelope` through the crate root",
        "pump.rs:2: `pump` imports `relay`",
        "store/mod.rs:1: `store` imports `relay`",
        "store/row.rs:1: `store` imports `transport`",
        "store/sqlite.rs:1: `store` imports `consume`",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        for name, text in cases.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text)
        found = offences(src)
    assert len(found) == len(expected), "\n".join(found)
    for got, want in zip(found, expected):
        assert got.startswith(want), f"{got!r} does not start with {want!r}"
    print(
        "check-imports self-test: groups, multi-line uses, super chains, imports within a layer "
        "and through the root caught; comments, strings, doc links and inline modules' super "
        "ignored"
    )


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    found = offences(SRC)
    for offence in found:
        print(offence)
    if found:
        print(f"{len(found)} import(s) against the layers")
        return 1
    print("imports: every module imports only earlier layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
