#!/usr/bin/env python3
"""Rehearses the deploy of sample-app/template.yaml in emulated AWS: the SAM
translator (the package `sam deploy` relies on) turns the template into
plain CloudFormation, moto's server creates that stack (S3 for the code,
CloudFormation, SQS, Lambda, IAM, EventBridge, EC2 for the VPC parameters,
Secrets Manager for the database secret), and what came out is checked:

- every queue: FIFO; the main queue with content-based deduplication, a
  visibility timeout of at least six times its consumer's timeout, and a
  redrive to a FIFO queue of this stack after `MAX_RECEIVE_COUNT` receives
  (README, "Queue settings");
- the event source mapping: from the main queue to the consumer function,
  enabled, the template's batch size, `ReportBatchItemFailures`;
- the schedule: enabled, every minute, to the main queue in the pump's
  message group (`PUMP_GROUP`, read from outbox-runtime/src/pump.rs), with a
  body the consumer takes for a pump;
- each function's role: its inline statements exactly as the template
  declares them, resolved to the stack's own queue and secret, and the
  managed policies SAM adds (as translated: moto does not attach AWS's
  managed policies);
- each function's configuration: runtime, handler, timeout, VPC, and its
  environment exactly `ENVIRONMENT` (what the code reads: the queue URL,
  the secret, the role), resolved to the stack's own resources;
- the queue policy that lets the schedule send (as translated: moto keeps
  no queue policy from CloudFormation) and the function URL (moto does not
  create `AWS::Lambda::Url`: its translated properties are checked, and it
  and the output that reads it are left out of the emulated stack);
- an update: a second version of the template (batch size 5) updates the
  stack in place; the queues keep their URLs and the message in them.

The code in S3 is a placeholder: moto never runs it. moto plays an
enabled event source mapping itself, with a stub for the function, and
deletes what the stub took: the rehearsal disables the mapping once it is
checked (`stop_moto_delivery`). sample-app/tests/stack.rs
runs the sample's binary as both functions with the environment this stack
gives them (`--describe`).

    scripts/rehearse-stack.py              # create, check, update, check, delete
    scripts/rehearse-stack.py --describe   # create and check; print the stack as JSON, keep it
    scripts/rehearse-stack.py --self-test  # each broken copy of the template fails

Runs with the SAM CLI's Python (.venv-sam), against the server at
AWS_ENDPOINT_URL (scripts/services.sh starts one). The database secret
points at DATABASE_URL (or --database-url).
"""

import argparse
import ast
import copy
import io
import json
import logging
import os
import re
import sys
import time
import uuid
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import boto3
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.transform import transform

# The translator's metrics are never published here; it warns at exit.
logging.getLogger("samtranslator.metrics.metrics").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "sample-app" / "template.yaml"
PUMP_RS = ROOT / "outbox-runtime" / "src" / "pump.rs"
REGION = "us-east-1"
MAX_RECEIVE_COUNT = 10
MANAGED = "arn:aws:iam::aws:policy/service-role/"
# Each function's environment: what the sample's code reads on Lambda
# (outbox_runtime::aws, sample-app/src/lambda.rs), by logical id. Values:
# "queue" (the main queue's URL), "secret" (the database secret's ARN), or
# the literal value.
ENVIRONMENT = {
    "ApiFunction": {
        "DATABASE_SECRET_ARN": "secret",
        "OUTBOX_QUEUE_URL": "queue",
        "RUST_LOG": "info",
        "SAMPLE_APP_ROLE": "api",
    },
    "ConsumerFunction": {
        "DATABASE_SECRET_ARN": "secret",
        "OUTBOX_QUEUE_URL": "queue",
        "RUST_LOG": "info",
        "SAMPLE_APP_ROLE": "consumer",
    },
}
# The managed policies SAM adds to each role: logs, the VPC's network
# interfaces, and for the consumer the event source mapping's receives.
MANAGED_POLICIES = {
    "ApiFunction": {"AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole"},
    "ConsumerFunction": {
        "AWSLambdaBasicExecutionRole",
        "AWSLambdaVPCAccessExecutionRole",
        "AWSLambdaSQSQueueExecutionRole",
    },
}


def pump_group():
    found = re.search(r'pub const PUMP_GROUP: &str = "([^"]+)";', PUMP_RS.read_text())
    if not found:
        raise SystemExit(f"{PUMP_RS}: no `pub const PUMP_GROUP`; update {__file__}")
    return found.group(1)


PUMP_GROUP = pump_group()


class Aws:
    """Clients for the emulator at AWS_ENDPOINT_URL."""

    def __init__(self):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            raise SystemExit("AWS_ENDPOINT_URL is not set: run under scripts/services.sh (moto)")
        kw = dict(
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        )
        for name in ["s3", "ec2", "secretsmanager", "cloudformation", "sqs", "iam", "events"]:
            setattr(self, name, boto3.client(name, **kw))
        self.lambda_ = boto3.client("lambda", **kw)


def load(path=TEMPLATE):
    return yaml_parse(path.read_text())


def translate(template, code_uri):
    """The template as plain CloudFormation, as `sam deploy` has it
    transformed, with every function's code at `code_uri`."""
    template = copy.deepcopy(template)
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = code_uri

    class NoManagedPolicies:
        def load(self):
            return {}

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return transform(template, {}, NoManagedPolicies())


def prepare(aws, run, database_url):
    """What the stack needs from outside: the code in S3, a VPC's subnets and
    security group, and the database secret. Returns (code URI, parameters)."""
    bucket = f"{run}-artifacts"
    aws.s3.create_bucket(Bucket=bucket)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("bootstrap", "placeholder: the emulator does not run functions\n")
    aws.s3.put_object(Bucket=bucket, Key="sample-app.zip", Body=zipped.getvalue())
    vpc = aws.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        aws.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"]
        for i in (1, 2)
    ]
    group = aws.ec2.create_security_group(
        GroupName=f"{run}-functions", Description="the functions", VpcId=vpc
    )["GroupId"]
    url = urlparse(database_url)
    secret = aws.secretsmanager.create_secret(
        Name=f"{run}-database",
        SecretString=json.dumps(
            {
                "engine": "postgres",
                "host": url.hostname or "127.0.0.1",
                "port": url.port or 5432,
                "username": unquote(url.username or "postgres"),
                "password": unquote(url.password or ""),
                "dbname": url.path.lstrip("/") or "postgres",
            }
        ),
    )["ARN"]
    parameters = {
        "SubnetIds": ",".join(subnets),
        "SecurityGroupIds": group,
        "DatabaseSecretArn": secret,
    }
    return f"s3://{bucket}/sample-app.zip", parameters


def function_url_problems(cfn):
    """The function URL, which moto cannot create: its translated properties.
    Removes it, and the outputs that read it, from `cfn`."""
    found = []
    urls = {k: r for k, r in cfn["Resources"].items() if r["Type"] == "AWS::Lambda::Url"}
    if list(urls) != ["ApiFunctionUrl"]:
        found.append(f"function URLs {sorted(urls)}, expected ApiFunctionUrl")
    for name, url in urls.items():
        props = url["Properties"]
        if props.get("TargetFunctionArn") != {"Ref": "ApiFunction"}:
            found.append(f"{name}: targets {props.get('TargetFunctionArn')}, not ApiFunction")
        if props.get("AuthType") != {"Ref": "FunctionUrlAuthType"}:
            found.append(f"{name}: auth {props.get('AuthType')}, not the FunctionUrlAuthType parameter")
        del cfn["Resources"][name]
    for name, output in list(cfn.get("Outputs", {}).items()):
        if any(ref in json.dumps(output) for ref in urls):
            if name == "ApiUrl" and output["Value"] != {
                "Fn::GetAtt": ["ApiFunctionUrl", "FunctionUrl"]
            }:
                found.append(f"output ApiUrl is {output['Value']}, not the function URL")
            del cfn["Outputs"][name]
    return found


def wait(aws, stack, verb):
    """Waits for `stack` to finish `verb` (CREATE, UPDATE); returns its
    description, or raises naming what failed."""
    for _ in range(120):
        described = aws.cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
        if not described["StackStatus"].endswith("_IN_PROGRESS"):
            break
        time.sleep(0.25)
    if described["StackStatus"] != f"{verb}_COMPLETE":
        events = aws.cloudformation.describe_stack_events(StackName=stack)["StackEvents"]
        reasons = [
            f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
            for e in events
            if e.get("ResourceStatusReason")
        ]
        raise Problems([f"stack {described['StackStatus']}: {reasons}"])
    return described


class Problems(Exception):
    def __init__(self, found):
        super().__init__("; ".join(found))
        self.found = found


def create(aws, template, database_url):
    """Translates `template` and creates it in the emulator. Returns the
    run's context: stack name, translated template, parameters."""
    run = f"rehearsal-{uuid.uuid4().hex[:10]}"
    code_uri, parameters = prepare(aws, run, database_url)
    try:
        cfn = translate(template, code_uri)
    except Exception as err:  # the translator's errors have no common base
        raise Problems([f"the SAM translator refused the template: {err}"]) from err
    found = function_url_problems(cfn)
    try:
        aws.cloudformation.create_stack(
            StackName=run,
            TemplateBody=json.dumps(cfn),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        )
    except Exception as err:  # botocore's errors, or moto's 500 on a bad template
        raise Problems(found + [f"the emulator refused the stack: {err}"]) from err
    wait(aws, run, "CREATE")
    return {"stack": run, "cfn": cfn, "parameters": parameters, "problems": found}


def physical(aws, stack):
    return {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in aws.cloudformation.list_stack_resources(StackName=stack)[
            "StackResourceSummaries"
        ]
    }


def resolve(value, names):
    """A template value with Ref and GetAtt .Arn resolved by `names`
    (logical id or parameter -> value; queues by their ARN for GetAtt)."""
    if isinstance(value, dict):
        if "Ref" in value:
            return names.get(("Ref", value["Ref"]), value)
        if "Fn::GetAtt" in value:
            att = value["Fn::GetAtt"]
            att = att if isinstance(att, list) else att.split(".", 1)
            return names.get(("GetAtt", att[0], att[1]), value)
        return {k: resolve(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, names) for v in value]
    return value


def policy_document(document):
    """A role policy as get_role_policy returns it: a dict, JSON, or (moto,
    for a policy created by CloudFormation) the dict's Python repr."""
    if isinstance(document, dict):
        return document
    try:
        return json.loads(document)
    except ValueError:
        return ast.literal_eval(document)


def role_policies(aws, role_arn):
    """The inline policy documents of the role `role_arn`."""
    role_name = role_arn.rsplit("/", 1)[-1]
    return [
        policy_document(
            aws.iam.get_role_policy(RoleName=role_name, PolicyName=policy)["PolicyDocument"]
        )
        for policy in aws.iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    ]


def statements(document):
    """(sid, effect, sorted actions, resource) of each statement."""
    out = set()
    for s in document.get("Statement", []):
        actions = s.get("Action", [])
        actions = tuple(sorted([actions] if isinstance(actions, str) else actions))
        resource = s.get("Resource")
        out.add((s.get("Sid"), s.get("Effect"), actions, json.dumps(resource, sort_keys=True)))
    return out


def check(aws, context, template, expect_batch, enabled=True):
    """What is wrong with the created stack. Returns (problems, description)."""
    found = list(context["problems"])
    stack, cfn, parameters = context["stack"], context["cfn"], context["parameters"]
    ids = physical(aws, stack)
    resources = cfn["Resources"]

    queues = {}
    for name, r in resources.items():
        if r["Type"] != "AWS::SQS::Queue":
            continue
        url = ids[name]
        attributes = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
            "Attributes"
        ]
        queues[name] = {"url": url, "attributes": attributes}
        if attributes.get("FifoQueue") != "true":
            found.append(f"{name}: not a FIFO queue")
    by_arn = {q["attributes"]["QueueArn"]: name for name, q in queues.items()}
    names = {("Ref", k): v for k, v in parameters.items()}
    for name, q in queues.items():
        names[("Ref", name)] = q["url"]
        names[("GetAtt", name, "Arn")] = q["attributes"]["QueueArn"]

    functions = {}
    for name, r in resources.items():
        if r["Type"] == "AWS::Lambda::Function":
            functions[name] = aws.lambda_.get_function_configuration(FunctionName=ids[name])
            names[("Ref", name)] = ids[name]

    mappings = [
        aws.lambda_.get_event_source_mapping(UUID=ids[name])
        for name, r in resources.items()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
    ]
    if len(mappings) != 1:
        found.append(f"{len(mappings)} event source mappings, expected 1")
    consumer_name = main_name = None
    for mapping in mappings:
        consumer_name = next(
            (n for n, f in functions.items() if f["FunctionArn"] == mapping["FunctionArn"]), None
        )
        main_name = by_arn.get(mapping["EventSourceArn"])
        if consumer_name != "ConsumerFunction":
            found.append(f"the mapping invokes {mapping['FunctionArn']}, not ConsumerFunction")
        if main_name != "OrdersQueue":
            found.append(f"the mapping reads {mapping['EventSourceArn']}, not OrdersQueue")
        if mapping.get("State") != ("Enabled" if enabled else "Disabled"):
            found.append(f"the mapping is {mapping.get('State')}")
        if mapping.get("BatchSize") != expect_batch:
            found.append(f"the mapping's batch size is {mapping.get('BatchSize')}, not {expect_batch}")
        if "ReportBatchItemFailures" not in mapping.get("FunctionResponseTypes", []):
            found.append("the mapping does not report batch item failures")

    main = queues.get("OrdersQueue")
    if main is None:
        found.append("no OrdersQueue")
    else:
        attributes = main["attributes"]
        if attributes.get("ContentBasedDeduplication") != "true":
            found.append("OrdersQueue: no content-based deduplication (the scheduled pump needs it)")
        consumer = functions.get("ConsumerFunction")
        if consumer and int(attributes["VisibilityTimeout"]) < 6 * consumer["Timeout"]:
            found.append(
                f"OrdersQueue: visibility {attributes['VisibilityTimeout']} s under six times "
                f"the consumer's timeout ({consumer['Timeout']} s)"
            )
        redrive = json.loads(attributes.get("RedrivePolicy", "{}"))
        target = by_arn.get(redrive.get("deadLetterTargetArn"))
        if target is None or target == "OrdersQueue":
            found.append(f"OrdersQueue: redrives to {redrive.get('deadLetterTargetArn')}, not a DLQ of this stack")
        if redrive.get("maxReceiveCount") != MAX_RECEIVE_COUNT:
            found.append(
                f"OrdersQueue: maxReceiveCount {redrive.get('maxReceiveCount')}, "
                f"not the documented {MAX_RECEIVE_COUNT}"
            )

    for name, f in functions.items():
        declared = ENVIRONMENT.get(name)
        if declared is None:
            found.append(f"{name}: a function the rehearsal does not know")
            continue
        expected = {
            k: {"queue": main and main["url"], "secret": parameters["DatabaseSecretArn"]}.get(v, v)
            for k, v in declared.items()
        }
        actual = f.get("Environment", {}).get("Variables", {})
        if actual != expected:
            missing = sorted(set(expected) - set(actual))
            extra = sorted(set(actual) - set(expected))
            wrong = sorted(k for k in expected if k in actual and actual[k] != expected[k])
            found.append(f"{name}: environment missing {missing}, unexpected {extra}, wrong {wrong}")
        if (f.get("Runtime"), f.get("Handler")) != ("provided.al2023", "bootstrap"):
            found.append(f"{name}: runtime {f.get('Runtime')} handler {f.get('Handler')}")
        vpc = f.get("VpcConfig", {})
        if sorted(vpc.get("SubnetIds", [])) != sorted(parameters["SubnetIds"].split(",")) or vpc.get(
            "SecurityGroupIds"
        ) != [parameters["SecurityGroupIds"]]:
            found.append(f"{name}: VPC {vpc}, not the parameters' subnets and security groups")

        # The role: the inline statements the template declares, resolved.
        # Kept for action_problems.
        documents = context.setdefault("roles", {})[name] = role_policies(aws, f["Role"])
        inline = set()
        for document in documents:
            inline |= statements(document)
        source = template["Resources"][name]["Properties"].get("Policies", [])
        declared_statements = set()
        for policy in source:
            declared_statements |= statements(resolve(policy, names))
        if inline != declared_statements:
            found.append(
                f"{name}: role grants {sorted(inline - declared_statements)} beyond the template, "
                f"lacks {sorted(declared_statements - inline)}"
            )
        role = resources.get(f"{name}Role", {}).get("Properties", {})
        managed = {arn.removeprefix(MANAGED) for arn in role.get("ManagedPolicyArns", [])}
        if managed != MANAGED_POLICIES.get(name):
            found.append(f"{name}: managed policies {sorted(managed)}, expected {sorted(MANAGED_POLICIES.get(name, []))}")

    rules = [aws.events.describe_rule(Name=ids[n]) for n, r in resources.items() if r["Type"] == "AWS::Events::Rule"]
    if len(rules) != 1:
        found.append(f"{len(rules)} rules, expected the pump schedule")
    for rule in rules:
        if (rule.get("State"), rule.get("ScheduleExpression")) != ("ENABLED", "rate(1 minute)"):
            found.append(f"rule {rule['Name']}: {rule.get('State')} {rule.get('ScheduleExpression')}")
        targets = aws.events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        for t in targets:
            if main and t["Arn"] != main["attributes"]["QueueArn"]:
                found.append(f"rule target {t['Id']}: sends to {t['Arn']}, not OrdersQueue")
            group = t.get("SqsParameters", {}).get("MessageGroupId")
            if group != PUMP_GROUP:
                found.append(f"rule target {t['Id']}: group {group}, not {PUMP_GROUP}")
            body = t.get("InputTransformer", {}).get("InputTemplate", "").replace("<time>", "2026-12-07T00:00:00Z")
            try:
                if json.loads(body).get("outbox_pump") != 1:
                    raise ValueError("no outbox_pump")
            except ValueError as err:
                found.append(f"rule target {t['Id']}: body {body!r} is not a pump ({err})")
        if not targets:
            found.append(f"rule {rule['Name']}: no target")

    # The queue policy: moto keeps none from CloudFormation; as translated.
    policies = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::SQS::QueuePolicy"]
    allowed = [
        s
        for p in policies
        if {"Ref": "OrdersQueue"} in p.get("Queues", [])
        for s in p["PolicyDocument"]["Statement"]
        if s.get("Principal") == {"Service": "events.amazonaws.com"}
        and s.get("Action") == "sqs:SendMessage"
        and s.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn")
        == {"Fn::GetAtt": ["PumpSchedule", "Arn"]}
    ]
    if not allowed:
        found.append("no queue policy lets the pump schedule (and only it) send to OrdersQueue")

    # The stack as created (the mapping's state before the rehearsal
    # disables moto's own delivery).
    description = {
        "stack": stack,
        "queue_url": main and main["url"],
        "queue_arn": main and main["attributes"]["QueueArn"],
        "functions": {
            name: {"name": f["FunctionName"], "environment": f.get("Environment", {}).get("Variables", {}), "timeout": f["Timeout"]}
            for name, f in functions.items()
        },
        "event_source_mapping": mappings[0] and {
            "function": consumer_name,
            "queue_arn": mappings[0]["EventSourceArn"],
            "batch_size": mappings[0]["BatchSize"],
            "function_response_types": mappings[0].get("FunctionResponseTypes", []),
            "enabled": mappings[0].get("State") == "Enabled",
        }
        if mappings
        else None,
    }
    return found, description


# What each function's code calls, on which resource ("queue": the main
# queue's ARN, "secret": the database secret): the role must grant exactly
# these. Kept by hand: checked against the SDK calls in
# outbox-runtime/src (transport/sqs.rs, lambda.rs, aws.rs) when they change. The api pumps (SendMessage); the consumer publishes
# (SendMessageBatch, which SendMessage grants), delays retries
# (ChangeMessageVisibility, ChangeMessageVisibilityBatch) and finds the
# queue's URL from a record's ARN (GetQueueUrl); both read the secret.
ACTIONS = {
    "ApiFunction": {
        ("sqs:SendMessage", "queue"),
        ("secretsmanager:GetSecretValue", "secret"),
    },
    "ConsumerFunction": {
        ("sqs:SendMessage", "queue"),
        ("sqs:ChangeMessageVisibility", "queue"),
        ("sqs:GetQueueUrl", "queue"),
        ("secretsmanager:GetSecretValue", "secret"),
    },
}


def action_problems(context, description):
    """Each role against what its function's code calls."""
    found = []
    values = {
        "queue": description["queue_arn"],
        "secret": context["parameters"]["DatabaseSecretArn"],
    }
    for name, documents in context["roles"].items():
        granted = set()
        for document in documents:
            for s in document.get("Statement", []):
                if s.get("Effect") != "Allow":
                    continue
                actions = s.get("Action", [])
                resources = s.get("Resource", [])
                for action in [actions] if isinstance(actions, str) else actions:
                    for resource in [resources] if isinstance(resources, str) else resources:
                        granted.add((action, resource))
        needed = {(a, values[r]) for a, r in ACTIONS.get(name, set())}
        if granted != needed:
            found.append(
                f"{name}: its role grants {sorted(granted - needed)} the code does not call, "
                f"lacks {sorted(needed - granted)}"
            )
    return found


def rehearse(aws, template, database_url, expect_batch=10):
    """Creates and checks; returns (context, problems, description)."""
    context = create(aws, template, database_url)
    found, description = check(aws, context, template, expect_batch)
    found += action_problems(context, description)
    return context, found, description


def stop_moto_delivery(aws, mapping):
    """moto plays an enabled event source mapping itself: on every send it
    receives a batch, invokes a stub in place of the function, and deletes
    the batch when the stub "succeeds". Disabled here, so the messages stay
    for the real function (sample-app/tests/stack.rs plays the mapping)."""
    aws.lambda_.update_event_source_mapping(UUID=mapping, Enabled=False)


def second_version(template):
    """The template's next version: the consumer takes batches of 5."""
    template = copy.deepcopy(template)
    template["Resources"]["ConsumerFunction"]["Properties"]["Events"]["Orders"]["Properties"][
        "BatchSize"
    ] = 5
    return template


def update(aws, context, template, database_url):
    """Updates the stack to `second_version` with a message waiting in the
    queue; returns the problems."""
    stack = context["stack"]
    before = physical(aws, stack)
    url = before["OrdersQueue"]
    stop_moto_delivery(aws, before["ConsumerFunctionOrders"])
    aws.sqs.send_message(
        QueueUrl=url,
        MessageBody='{"outbox_pump":1,"at":"before the update"}',
        MessageGroupId=PUMP_GROUP,
    )
    newer = second_version(template)
    code_uri = context["cfn"]["Resources"]["ApiFunction"]["Properties"]["Code"]
    cfn = translate(newer, f"s3://{code_uri['S3Bucket']}/{code_uri['S3Key']}")
    function_url_problems(cfn)
    aws.cloudformation.update_stack(
        StackName=stack,
        TemplateBody=json.dumps(cfn),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[
            {"ParameterKey": k, "ParameterValue": v} for k, v in context["parameters"].items()
        ],
    )
    wait(aws, stack, "UPDATE")
    # The update keeps the state the rehearsal set (disabled, above).
    found, _ = check(aws, {**context, "cfn": cfn}, newer, expect_batch=5, enabled=False)
    after = physical(aws, stack)
    for name in ("OrdersQueue", "OrdersDeadLetterQueue"):
        if after.get(name) != before.get(name):
            found.append(f"{name} replaced by the update: {before.get(name)} -> {after.get(name)}")
    waiting = aws.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    if waiting != "1":
        found.append(f"OrdersQueue holds {waiting} messages after the update, not the 1 sent before")
    return found


def breakages():
    """Copies of the template, each broken in a way only creating the stack
    shows (the linters and scripts/check-template.py pass most of them),
    with what the rehearsal must say about it."""

    def res(t, name):
        return t["Resources"][name]["Properties"]

    def orders_event(t):
        return res(t, "ConsumerFunction")["Events"]["Orders"]["Properties"]

    yield "the consumer on the wrong queue (a wrong GetAtt)", "not OrdersQueue", lambda t: orders_event(
        t
    ).update(Queue={"Fn::GetAtt": ["OrdersDeadLetterQueue", "Arn"]})
    yield "a redrive to nothing (a GetAtt of a missing resource)", "references undefined resource Missing", lambda t: res(
        t, "OrdersQueue"
    )["RedrivePolicy"].update(deadLetterTargetArn={"Fn::GetAtt": ["Missing", "Arn"]})
    yield "no OUTBOX_QUEUE_URL", "environment missing ['OUTBOX_QUEUE_URL']", lambda t: t["Globals"][
        "Function"
    ]["Environment"]["Variables"].pop("OUTBOX_QUEUE_URL")
    # moto refuses a FIFO queue's redrive to a standard queue, as AWS does.
    yield "a standard (non-FIFO) dead-letter queue", "non fifo dead letter queues", lambda t: res(
        t, "OrdersDeadLetterQueue"
    ).update(FifoQueue=False, QueueName={"Fn::Sub": "${AWS::StackName}-orders-dlq"})
    # Both queues standard: the emulator accepts it, the rehearsal must not.
    yield "standard queues", "OrdersQueue: not a FIFO queue", lambda t: (
        res(t, "OrdersDeadLetterQueue").update(
            FifoQueue=False, QueueName={"Fn::Sub": "${AWS::StackName}-orders-dlq"}
        ),
        res(t, "OrdersQueue").update(
            FifoQueue=False, QueueName={"Fn::Sub": "${AWS::StackName}-orders"}
        ),
        res(t, "OrdersQueue").pop("ContentBasedDeduplication"),
    )
    yield "the API unable to pump", "lacks [('sqs:SendMessage'", lambda t: res(t, "ApiFunction")[
        "Policies"
    ][0]["Statement"].pop(0)
    yield "the consumer unable to delay retries", "lacks [('sqs:ChangeMessageVisibility'", lambda t: res(
        t, "ConsumerFunction"
    )["Policies"][0]["Statement"][0].update(Action=["sqs:SendMessage", "sqs:GetQueueUrl"])
    yield "no batch item failures", "does not report batch item failures", lambda t: orders_event(
        t
    ).update(FunctionResponseTypes=[])
    yield "no content-based deduplication", "no content-based deduplication", lambda t: res(
        t, "OrdersQueue"
    ).pop("ContentBasedDeduplication")
    yield "a function URL on the consumer", "expected ApiFunctionUrl", lambda t: res(
        t, "ConsumerFunction"
    ).update(FunctionUrlConfig={"AuthType": "AWS_IAM"})


def delete(aws, context):
    aws.cloudformation.delete_stack(StackName=context["stack"])


def database_url(args):
    return args.database_url or os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--describe", action="store_true", help="print the stack as JSON; keep it")
    parser.add_argument("--self-test", action="store_true", help="broken copies must fail")
    parser.add_argument("--database-url", help="what the database secret points to")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    args = parser.parse_args()
    aws = Aws()
    template = load(args.template)
    url = database_url(args)

    if args.self_test:
        for what, expected, breaking in breakages():
            broken = copy.deepcopy(template)
            breaking(broken)
            try:
                context, found, _ = rehearse(aws, broken, url)
                delete(aws, context)
            except Problems as err:
                found = err.found
            except Exception as err:  # botocore's, or moto's answer to a bad template
                raise SystemExit(f"self-test: {what}: the rehearsal broke: {err!r}") from err
            if not found:
                raise SystemExit(f"self-test: a template with {what} passed the rehearsal")
            said = [problem for problem in found if expected in problem]
            if not said:
                raise SystemExit(
                    f"self-test: a template with {what} failed, but not with {expected!r}: {found}"
                )
            print(f"caught: {what}: {said[0]}")
        return

    try:
        context, found, description = rehearse(aws, template, url)
    except Problems as err:
        raise SystemExit(f"{args.template}: the rehearsal failed: {err}") from err
    if found:
        raise SystemExit(
            f"{args.template}: the stack came out wrong:\n" + "\n".join(f"  {p}" for p in found)
        )
    if args.describe:
        stop_moto_delivery(aws, physical(aws, context["stack"])["ConsumerFunctionOrders"])
        json.dump(description, sys.stdout, indent=2)
        print()
        return
    found = update(aws, context, template, url)
    if found:
        raise SystemExit(
            f"{args.template}: the update came out wrong:\n" + "\n".join(f"  {p}" for p in found)
        )
    delete(aws, context)
    print(
        f"{args.template}: created in the emulator as {context['stack']}: FIFO queues with the "
        f"redrive after {MAX_RECEIVE_COUNT} receives, the mapping (batch 10, batch item failures), "
        "the pump schedule, each role exactly the actions listed for its code, each function's environment; "
        "function URL and queue policy as translated (moto creates neither); "
        "updated to batch 5 with the queues and their message kept: ok"
    )


if __name__ == "__main__":
    main()
