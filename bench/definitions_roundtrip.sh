#!/usr/bin/env bash
# Definitions between RabbitMQ and Warren (issue 15), both ways, in one go:
#   1. a throwaway RabbitMQ (../shared/tools/rabbitmq.sh; apt-get install -y rabbitmq-server)
#      gets a user, a vhost with limits, permissions, topic permissions, a policy and a
#      durable exchange, queue and binding; `rabbitmqctl export_definitions` writes them;
#   2. Warren starts with --load-definitions on that file: the user logs in with the hash
#      RabbitMQ made, a publish goes through the imported binding, the permissions and
#      the policy hold;
#   3. a user, a policy and an operator policy made in Warren (`warren ctl`) are
#      exported with `warren ctl export_definitions` and imported into RabbitMQ: the
#      user logs in there and the policies are listed.
# RabbitMQ's side also has a 3.x mirroring policy (ha-mode), an operator policy and a
# global parameter, which must come over too.
# Prints one line per check; exits non-zero if one fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rabbit="$root/../shared/tools/rabbitmq.sh"
python="$root/examples-python/.venv/bin/python"
warren="${WARREN:-$root/target/debug/warren}"
scratch=$(mktemp -d -t warren-defs.XXXXXX)
# rabbitmqctl reads and writes the files as RabbitMQ's own user.
chmod 777 "$scratch"
trap '"$rabbit" stop 5673 >/dev/null 2>&1 || true; kill $warren_pid 2>/dev/null || true; rm -rf "$scratch"' EXIT
warren_pid=
"$rabbit" start 5673 >/dev/null
R() { "$rabbit" ctl 5673 "$@" >/dev/null; }
R add_user labuser lab-pw-1
R add_vhost labv
R set_permissions -p labv labuser '^lab' '.*' '.*'
R set_topic_permissions -p labv labuser amq.topic '^lab\.' '.*'
R set_vhost_limits -p labv '{"max-queues": 7}'
R set_policy -p labv --apply-to queues --priority 1 cap '^lab-cap$' '{"max-length": 1}'
# What 3.x exports also hold: a mirroring policy, an operator policy, a global parameter.
R set_policy -p labv --apply-to queues ha-all '^lab-ha' '{"ha-mode": "all", "ha-sync-mode": "automatic"}'
R set_operator_policy -p labv --apply-to queues op-cap '^lab-op$' '{"max-length": 2}'
R set_global_parameter lab_param '{"k": [1, "x"]}'
"$python" - <<'PY'
import pika
c = pika.BlockingConnection(pika.URLParameters("amqp://labuser:lab-pw-1@127.0.0.1:5673/labv"))
ch = c.channel()
ch.exchange_declare("lab-x", "topic", durable=True)
ch.queue_declare("lab-q", durable=True, arguments={"x-max-length": 10})
ch.queue_bind("lab-q", "lab-x", "lab.#")
c.close()
PY
"$rabbit" ctl 5673 export_definitions "$scratch/rabbit.json" >/dev/null 2>&1
"$warren" --port 5707 --data-dir "$scratch/data" --load-definitions "$scratch/rabbit.json" \
  --log-level warn &
warren_pid=$!
for _ in $(seq 50); do [ -S "$scratch/data/warren.sock" ] && break; sleep 0.1; done
"$python" - <<'PY'
import pika
c = pika.BlockingConnection(pika.URLParameters("amqp://labuser:lab-pw-1@127.0.0.1:5707/labv"))
ch = c.channel()
ch.confirm_delivery()
ch.basic_publish("lab-x", "lab.eu", b"m")
n = ch.queue_declare("lab-q", durable=True, arguments={"x-max-length": 10}).method.message_count
assert n == 1, n
print("ok: RabbitMQ's user logs in to Warren; the imported binding routes")
try:
    ch.queue_declare("other-q")
    raise SystemExit("other-q was allowed")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 403, e
    print("ok: RabbitMQ's permissions hold in Warren")
ch = c.channel()
ch.confirm_delivery()
ch.queue_declare("lab-cap")
for _ in range(3):
    ch.basic_publish("", "lab-cap", b"m")
n = ch.queue_declare("lab-cap", passive=True).method.message_count
assert n == 1, n
print("ok: RabbitMQ's policy holds in Warren")
ch.queue_declare("lab-op")
for _ in range(4):
    ch.basic_publish("", "lab-op", b"m")
n = ch.queue_declare("lab-op", passive=True).method.message_count
assert n == 2, n
print("ok: RabbitMQ's operator policy holds in Warren")
PY
W() { "$warren" ctl --data-dir "$scratch/data" "$@"; }
if W list_policies -p labv --formatter json | grep -q '"name":"ha-all"' \
  && W list_global_parameters --formatter json | grep -q '"name":"lab_param"'; then
  echo "ok: RabbitMQ's mirroring policy and global parameter are in Warren"
else
  echo "FAILED: a mirroring policy or global parameter did not come over" >&2; exit 1
fi
"$warren" ctl --data-dir "$scratch/data" add_user warrenmade w-pw-2
"$warren" ctl --data-dir "$scratch/data" set_permissions -p labv warrenmade '.*' '.*' '.*'
"$warren" ctl --data-dir "$scratch/data" set_policy -p labv wpol '^lab-w$' '{"max-length": 2}'
"$warren" ctl --data-dir "$scratch/data" set_operator_policy -p labv wcap '^lab-w$' '{"max-length": 1}'
"$warren" ctl --data-dir "$scratch/data" export_definitions "$scratch/warren.json"
chmod 644 "$scratch/warren.json"
"$rabbit" ctl 5673 import_definitions "$scratch/warren.json" >/dev/null 2>&1
"$python" - <<'PY'
import time, pika
for _ in range(50):
    try:
        pika.BlockingConnection(pika.URLParameters("amqp://warrenmade:w-pw-2@127.0.0.1:5673/labv")).close()
        print("ok: Warren's user logs in to RabbitMQ")
        break
    except pika.exceptions.AMQPError:
        time.sleep(0.2)
else:
    raise SystemExit("Warren's export did not log in to RabbitMQ")
PY
if "$rabbit" ctl 5673 list_policies -p labv -q | grep -q '^labv[[:space:]]wpol'; then
  echo "ok: Warren's policy is in RabbitMQ"
else
  echo "FAILED: Warren's policy is not in RabbitMQ" >&2; exit 1
fi
if "$rabbit" ctl 5673 list_operator_policies -p labv -q | grep -q '^labv[[:space:]]wcap'; then
  echo "ok: Warren's operator policy is in RabbitMQ"
else
  echo "FAILED: Warren's operator policy is not in RabbitMQ" >&2; exit 1
fi
