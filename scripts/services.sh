# Sourced by scripts/test and scripts/reliability: checks PostgreSQL,
# installs the local AWS stand-ins (scripts/aws-tools), starts moto's SQS
# server on a free port (stopped when the calling script exits) and exports
# what the tests read. Expects to run from the repository root.

root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
# The PostgreSQL the machine runs; `#[sqlx::test]` makes a fresh database per
# test on it. Override to use another server.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

step() { printf '\n==> %s\n' "$*"; }

if ! cargo nextest --version >/dev/null 2>&1; then
    step "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

step "checking PostgreSQL at $DATABASE_URL"
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -d "$DATABASE_URL" -t 10; then
    echo "PostgreSQL is not answering at $DATABASE_URL; start it (see README) or set DATABASE_URL" >&2
    exit 1
fi

step "local AWS stand-ins (moto's SQS server, cargo-lambda's runtime emulator)"
scripts/aws-tools
moto_port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$CARGO_TARGET_DIR"
.venv/bin/python -m moto.server -H 127.0.0.1 -p "$moto_port" >"$CARGO_TARGET_DIR/moto.log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$moto_port/moto-api/')" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
echo "moto listening on 127.0.0.1:$moto_port (log: $CARGO_TARGET_DIR/moto.log)"
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
# Never ask the EC2 metadata service for anything: there is none here.
export AWS_EC2_METADATA_DISABLED=true
export OUTBOX_CARGO_LAMBDA="$root/.venv/bin/cargo-lambda"
# The tests that need these stand-ins fail without them (a plain `cargo test`
# skips them, saying why).
export OUTBOX_SERVICES=required
# For tests that start (and stop) a moto server of their own.
export OUTBOX_PYTHON="$root/.venv/bin/python"
# The SAM CLI's Python, for the test that runs the sample from the
# rehearsed stack (scripts/rehearse-stack.py --describe).
export OUTBOX_SAM_PYTHON="$root/.venv-sam/bin/python"

