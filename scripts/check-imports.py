#!/usr/bin/env python3
"""Checks that outbox-runtime's modules import one way.

Every top-level module of `outbox-runtime/src` has a place in LAYERS; code in
a module may name (`crate::x::...`) only modules in earlier layers, or its own,
never the crate root's re-exports. So
no two modules import each other, and no stage reaches a later one. Comments
(doc links included) are not imports and are skipped.

    scripts/check-imports.py              # exit 1 and list every offence
    scripts/check-imports.py --self-test  # shows that it catches one
"""

import re
import sys
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
]

SRC = Path(__file__).resolve().parent.parent / "outbox-runtime" / "src"
CRATE_PATH = re.compile(r"\bcrate::([A-Za-z_]+|\{)")
COMMENT = re.compile(r"//.*$")


def layer_of(module):
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    return None


def top_module(path):
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def offences(src):
    found = []
    for path in sorted(src.rglob("*.rs")):
        module = top_module(path)
        if module == "lib":
            continue
        own = layer_of(module)
        if own is None:
            found.append(f"{path.relative_to(src)}: module `{module}` has no layer in {__file__}")
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for name in CRATE_PATH.findall(COMMENT.sub("", line)):
                if name == module:
                    continue
                if not name.islower():
                    found.append(
                        f"{path.relative_to(src)}:{number}: `{module}` imports through the "
                        f"crate root; name the module"
                    )
                    continue
                theirs = layer_of(name)
                if theirs is None or theirs >= own:
                    found.append(
                        f"{path.relative_to(src)}:{number}: `{module}` imports `{name}`, "
                        f"which is not in an earlier layer"
                    )
    return found


def self_test():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "store").mkdir()
        (src / "store" / "mod.rs").write_text("use crate::relay::Relay; // store -> relay\n")
        (src / "relay.rs").write_text("use crate::store::Store;\n/// [`x`](crate::consume)\n")
        (src / "pump.rs").write_text("use crate::{Envelope, Relay};\n")
        global SRC
        SRC = src
        found = offences(src)
    assert len(found) == 2, found
    assert "`pump` imports through the crate root" in found[0], found
    assert "`store` imports `relay`" in found[1], found
    print("check-imports self-test: the backward import and the import through the root were caught, the doc link ignored")


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
