"""Sends tasks to the celery_app worker and checks what comes back through rpc://.

    python -m celery_app.client [--count N] [--timeout SECONDS]

Sends N ``add(i, 10 * i)`` tasks and one ``fail`` task, then waits (at most
``--timeout`` seconds in all) for every result. Prints one line per result and a final
``ok`` line; exits 1 if a result is wrong or missing, 2 if the results do not all
arrive in time.
"""

import argparse
import sys
import time

from celery.exceptions import TimeoutError as ResultTimeout

from celery_app import add, app, fail

FAILURE_MESSAGE = "boom from celery_app.fail"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="add tasks to send")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for all results")
    args = parser.parse_args()

    deadline = time.monotonic() + args.timeout

    def left():
        return max(deadline - time.monotonic(), 0.1)

    sent = [((i, 10 * i), add.apply_async((i, 10 * i))) for i in range(args.count)]
    failing = fail.apply_async((FAILURE_MESSAGE,))
    print(f"sent {len(sent)} add tasks and 1 fail task", flush=True)

    wrong = 0
    try:
        for (x, y), result in sent:
            value = result.get(timeout=left())
            mark = "" if value == x + y else f"  WRONG, expected {x + y}"
            wrong += bool(mark)
            print(f"add({x}, {y}) = {value}{mark}", flush=True)
        try:
            value = failing.get(timeout=left())
        except ValueError as err:
            if str(err) == FAILURE_MESSAGE and failing.state == "FAILURE":
                print(f"fail raised ValueError({str(err)!r})", flush=True)
            else:
                wrong += 1
                print(f"fail raised ValueError({str(err)!r}), state {failing.state}  WRONG", flush=True)
        else:
            wrong += 1
            print(f"fail returned {value!r}  WRONG, expected ValueError", flush=True)
    except ResultTimeout:
        print(f"results did not all arrive within {args.timeout} s", flush=True)
        return 2
    finally:
        app.close()

    if wrong:
        print(f"{wrong} wrong results", flush=True)
        return 1
    print(f"ok: {len(sent)} sums and the failure came back through rpc://", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
