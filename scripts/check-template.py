#!/usr/bin/env python3
"""Checks the properties of sample-app/template.yaml that neither
`sam validate --lint` nor cfn-lint checks, and which break an outbox deploy
silently when wrong:

- every SQS queue is FIFO (the queue and its dead-letter queue);
- the main queue redrives to a FIFO dead-letter queue after more receives
  than the handlers' own attempts (read from the code: each handler's
  `max_attempts` from the sample's `table --json`, built and run through
  cargo, and for a handler that sets none the consumer's default,
  `ConsumerConfig::default_max_attempts` in
  outbox-runtime/src/consume/consumer.rs);
- every SQS event source reports batch item failures and has a batch size
  of at most 10 (the FIFO limit);
- every function is arm64 on provided.al2023, built with rust-cargolambda;
- a queue's visibility timeout is at least six times the timeout of the
  function consuming it;
- no IAM statement grants a wildcard action;
- the schedule sends the pump to the pump's message group (`PUMP_GROUP`,
  read from outbox-runtime/src/pump.rs);
- the workspace's release profile says `panic = "unwind"`: cargo-lambda
  (the build method) builds with `panic=abort` otherwise, and a panicking
  handler would end the function instead of failing its own run.

    scripts/check-template.py [TEMPLATE]      # check
    scripts/check-template.py --self-test     # prove each check fails on a broken copy

Runs with the Python that has cfn-lint (its YAML loader reads !Ref and co),
from anywhere in the repository, with cargo on the PATH (it builds the
sample if it must).
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "sample-app" / "template.yaml"
CARGO_TOML = ROOT / "Cargo.toml"
CONSUMER_RS = ROOT / "outbox-runtime" / "src" / "consume" / "consumer.rs"
PUMP_RS = ROOT / "outbox-runtime" / "src" / "pump.rs"


def pump_group(source):
    """`outbox_runtime::pump::PUMP_GROUP`, in pump.rs's source."""
    found = re.search(r'pub const PUMP_GROUP: &str = "([^"]+)";', source)
    if not found:
        raise SystemExit(
            f"{PUMP_RS}: no `pub const PUMP_GROUP: &str = \"...\";`; "
            "update scripts/check-template.py to read the pump group"
        )
    return found.group(1)


PUMP_GROUP = pump_group(PUMP_RS.read_text())


def default_max_attempts(source):
    """`ConsumerConfig::default_max_attempts` as `impl Default for
    ConsumerConfig` sets it, in consumer.rs's source."""
    found = re.search(
        r"impl Default for ConsumerConfig \{.*?default_max_attempts: (\d+),", source, re.DOTALL
    )
    if not found:
        raise SystemExit(
            f"{CONSUMER_RS}: no `default_max_attempts: N,` in `impl Default for ConsumerConfig`; "
            "update scripts/check-template.py to read the consumer's default attempts"
        )
    return int(found.group(1))


def sample_table():
    """The sample's dispatch table, as `sample-app table --json` prints it."""
    run = subprocess.run(
        ["cargo", "run", "--quiet", "--locked", "-p", "sample-app", "--", "table", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "RUST_LOG": "off"},
    )
    if run.returncode != 0:
        raise SystemExit(f"sample-app table --json failed:\n{run.stderr}")
    return json.loads(run.stdout)


def handler_attempts(table, default):
    """The most attempts any handler of the table makes: its `max_attempts`,
    or `default` (the consumer's) where it sets none (null)."""
    attempts = []
    for message in table:
        for handler in message["handlers"]:
            if "max_attempts" not in handler:
                raise SystemExit(f"sample-app table --json: handler {handler} has no max_attempts")
            own = handler["max_attempts"]
            attempts.append(default if own is None else own)
    if not attempts:
        raise SystemExit("sample-app table --json lists no handler")
    return max(attempts)


def load(path):
    template, matches = decode(str(path))
    if matches:
        raise SystemExit(f"{path}: cannot parse: {matches}")
    return template


def ref_name(value):
    """The logical id in !Ref X or !GetAtt X.Arn."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            att = value["Fn::GetAtt"]
            return att[0] if isinstance(att, list) else att.split(".")[0]
    return None


def function_property(template, props, name):
    """A function property, falling back to Globals."""
    if name in props:
        return props[name]
    return template.get("Globals", {}).get("Function", {}).get(name)


def iam_actions(node):
    """Every IAM Action value in the template, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("Action", "NotAction"):
                for action in value if isinstance(value, list) else [value]:
                    yield action
            else:
                yield from iam_actions(value)
    elif isinstance(node, list):
        for item in node:
            yield from iam_actions(item)


def problems(template, attempts):
    """What is wrong with the template, for handlers that make up to
    `attempts` attempts."""
    found = []
    resources = template.get("Resources", {})
    queues = {k: r for k, r in resources.items() if r.get("Type") == "AWS::SQS::Queue"}
    functions = {
        k: r for k, r in resources.items() if r.get("Type") == "AWS::Serverless::Function"
    }
    if not queues:
        found.append("no SQS queue")
    if not functions:
        found.append("no function")

    for name, queue in queues.items():
        props = queue.get("Properties", {})
        if props.get("FifoQueue") is not True:
            found.append(f"{name}: not a FIFO queue")
        redrive = props.get("RedrivePolicy")
        if redrive:
            target = ref_name(redrive.get("deadLetterTargetArn"))
            if target not in queues:
                found.append(f"{name}: redrives to {target!r}, not a queue of this template")
            receives = redrive.get("maxReceiveCount", 0)
            if not isinstance(receives, int) or receives <= attempts:
                found.append(
                    f"{name}: maxReceiveCount {receives} must exceed the handlers' "
                    f"{attempts} attempts"
                )

    consumed = 0
    for name, function in functions.items():
        props = function.get("Properties", {})
        if function_property(template, props, "Architectures") != ["arm64"]:
            found.append(f"{name}: not arm64")
        if function_property(template, props, "Runtime") != "provided.al2023":
            found.append(f"{name}: runtime is not provided.al2023")
        if function.get("Metadata", {}).get("BuildMethod") != "rust-cargolambda":
            found.append(f"{name}: not built with rust-cargolambda")
        timeout = function_property(template, props, "Timeout") or 3
        for event_name, event in props.get("Events", {}).items():
            if event.get("Type") != "SQS":
                continue
            consumed += 1
            where = f"{name}.{event_name}"
            eprops = event.get("Properties", {})
            if "ReportBatchItemFailures" not in eprops.get("FunctionResponseTypes", []):
                found.append(f"{where}: does not report batch item failures")
            batch = eprops.get("BatchSize")
            if not isinstance(batch, int) or not 1 <= batch <= 10:
                found.append(f"{where}: batch size {batch!r} is not 1 to 10 (FIFO)")
            queue = queues.get(ref_name(eprops.get("Queue")))
            if queue is None:
                found.append(f"{where}: its queue is not a queue of this template")
                continue
            visibility = queue.get("Properties", {}).get("VisibilityTimeout", 30)
            if not isinstance(visibility, int) or visibility < 6 * timeout:
                found.append(
                    f"{where}: queue visibility timeout {visibility} s is under six times "
                    f"the function timeout ({timeout} s)"
                )
    if functions and not consumed:
        found.append("no function consumes a queue")

    for action in iam_actions(resources):
        if not isinstance(action, str) or "*" in action:
            found.append(f"wildcard or computed IAM action: {action!r}")

    rules = [r for r in resources.values() if r.get("Type") == "AWS::Events::Rule"]
    pump_targets = [
        t
        for rule in rules
        for t in rule.get("Properties", {}).get("Targets", [])
        if ref_name(t.get("Arn")) in queues
    ]
    if not pump_targets:
        found.append("no schedule sends pumps to the queue")
    for target in pump_targets:
        group = target.get("SqsParameters", {}).get("MessageGroupId")
        if group != PUMP_GROUP:
            found.append(f"schedule target {target.get('Id')}: group {group!r}, not {PUMP_GROUP}")
        body = target.get("InputTransformer", {}).get("InputTemplate", "")
        if '"outbox_pump":1' not in body:
            found.append(f"schedule target {target.get('Id')}: its body is not a pump: {body!r}")
    return found


def build_problems(cargo_toml):
    """What is wrong with the release profile cargo-lambda builds with."""
    profile = tomllib.loads(cargo_toml).get("profile", {}).get("release", {})
    if profile.get("panic") != "unwind":
        return [
            f"[profile.release] panic = {profile.get('panic')!r}, not \"unwind\": "
            "cargo-lambda would build with panic=abort"
        ]
    return []


def breakages():
    """Copies of the template, each with one property broken."""

    def res(t, name):
        return t["Resources"][name]["Properties"]

    def event(t):
        return res(t, "ConsumerFunction")["Events"]["Orders"]["Properties"]

    def policy(t):
        return res(t, "ConsumerFunction")["Policies"][0]["Statement"][0]

    yield "a standard dead-letter queue", lambda t: res(t, "OrdersDeadLetterQueue").update(
        FifoQueue=False
    )
    yield "a batch of 11", lambda t: event(t).update(BatchSize=11)
    yield "no batch item failures", lambda t: event(t).update(FunctionResponseTypes=[])
    yield "x86_64", lambda t: res(t, "ApiFunction").update(Architectures=["x86_64"])
    yield "another runtime", lambda t: t["Globals"]["Function"].update(Runtime="provided.al2")
    yield "a short visibility timeout", lambda t: res(t, "OrdersQueue").update(
        VisibilityTimeout=60
    )
    yield "a wildcard action", lambda t: policy(t).update(Action=["sqs:*"])
    yield "few receives before the queue's DLQ", lambda t: res(t, "OrdersQueue")[
        "RedrivePolicy"
    ].update(maxReceiveCount=3)
    yield "the pump in a customer's group", lambda t: res(t, "PumpSchedule")["Targets"][0][
        "SqsParameters"
    ].update(MessageGroupId="customer-1")
    yield "no build method", lambda t: t["Resources"]["ConsumerFunction"]["Metadata"].update(
        BuildMethod="makefile"
    )


def refused(what, read, text):
    """Self-test: `read` must refuse `text`, a source with what it reads broken."""
    try:
        read(text)
    except SystemExit as err:
        print(f"caught: {what}: {err}")
    else:
        raise SystemExit(f"self-test: a {what} was read")


def self_test():
    table = sample_table()
    default = default_max_attempts(CONSUMER_RS.read_text())
    attempts = handler_attempts(table, default)
    template = load(TEMPLATE)
    base = problems(template, attempts)
    if base:
        raise SystemExit(f"the template itself fails: {base}")
    for what, breaking in breakages():
        broken = copy.deepcopy(template)
        breaking(broken)
        if not problems(broken, attempts):
            raise SystemExit(f"self-test: a template with {what} passed the checks")
        print(f"caught: {what}: {problems(broken, attempts)[0]}")
    # The attempts come from the code: a handler, or the consumer's default,
    # allowed as many attempts as the queue's receives fails the template.
    receives = template["Resources"]["OrdersQueue"]["Properties"]["RedrivePolicy"][
        "maxReceiveCount"
    ]
    own = copy.deepcopy(table)
    own[0]["handlers"][0]["max_attempts"] = receives
    defaulted = copy.deepcopy(table)
    for message in defaulted:
        for handler in message["handlers"]:
            handler["max_attempts"] = None
    for what, more in [
        (f"a handler with max_attempts = {receives}", handler_attempts(own, default)),
        (f"the consumer's default at {receives}", handler_attempts(defaulted, receives)),
    ]:
        caught = problems(template, more)
        if not caught:
            raise SystemExit(f"self-test: {what} passed the checks")
        print(f"caught: {what}: {caught[0]}")
    source = CONSUMER_RS.read_text()
    assert default_max_attempts(source) == default
    refused(
        "consumer.rs without the default",
        default_max_attempts,
        source.replace("default_max_attempts: ", "max_attempts_default: "),
    )
    pump_rs = PUMP_RS.read_text()
    assert pump_group(pump_rs) == PUMP_GROUP
    refused(
        "pump.rs without the pump group",
        pump_group,
        pump_rs.replace("pub const PUMP_GROUP", "pub const PUMP_QUEUE_GROUP"),
    )
    cargo_toml = CARGO_TOML.read_text()
    if build_problems(cargo_toml):
        raise SystemExit(f"the workspace itself fails: {build_problems(cargo_toml)}")
    unwinding = 'panic = "unwind"'
    assert unwinding in cargo_toml
    caught = build_problems(cargo_toml.replace(unwinding, ""))
    if not caught:
        raise SystemExit("self-test: a release profile without panic = unwind passed")
    print(f"caught: no unwinding: {caught[0]}")
    # And the linters do fail on a broken copy: a reference to nothing.
    text = TEMPLATE.read_text()
    assert "!GetAtt OrdersDeadLetterQueue.Arn" in text
    with tempfile.TemporaryDirectory() as tmp:
        broken = Path(tmp) / "template.yaml"
        broken.write_text(text.replace("!GetAtt OrdersDeadLetterQueue.Arn", "!GetAtt Missing.Arn"))
        lint = Path(sys.executable).parent / "cfn-lint"
        run = subprocess.run([str(lint), str(broken)], capture_output=True, text=True)
        if run.returncode == 0:
            raise SystemExit("self-test: cfn-lint passed a template that references nothing")
        print(f"caught by cfn-lint: {run.stdout.splitlines()[0]}")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return
    path = Path(argv[1]) if len(argv) > 1 else TEMPLATE
    attempts = handler_attempts(sample_table(), default_max_attempts(CONSUMER_RS.read_text()))
    found = problems(load(path), attempts) + build_problems(CARGO_TOML.read_text())
    for problem in found:
        print(f"{path}: {problem}", file=sys.stderr)
    if found:
        raise SystemExit(1)
    print(f"{path}: FIFO, batch item failures, batch <= 10, arm64, visibility >= 6x timeout, "
          f"DLQ after more than the handlers' {attempts} attempts, no wildcard actions, "
          "pump schedule, release profile unwinds: ok")


if __name__ == "__main__":
    main(sys.argv)
