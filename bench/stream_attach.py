"""Time from basic.consume to the first delivery, attaching at random offsets and times
in an existing stream (issue 14: attach at an offset or timestamp in a large stream
<= 10 ms to first delivery).

    bench/stream_attach.py PORT STREAM N T0 T1

N attaches at random offsets, then N at random times between T0 and T1 (Unix seconds,
within the stream's writing: a time after its last message would wait for the next
one). Run with examples-python's virtual environment (pika). See bench/streams.md.
"""
import random, sys, time, datetime
import pika

port, stream, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
# Times to attach at, in seconds: within the stream's writing (argv 4 and 5).
t0, t1 = int(sys.argv[4]), int(sys.argv[5])
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
ch = conn.channel()
count = ch.queue_declare(stream, passive=True).method.message_count
print(f"stream {stream}: {count} messages")

def attach(offset):
    c = conn.channel()
    c.basic_qos(prefetch_count=1)
    got = []
    start = time.perf_counter()
    def on(ch_, method, props, body):
        got.append((time.perf_counter(), props.headers.get("x-stream-offset")))
        ch_.stop_consuming()
    c.basic_consume(stream, on, arguments={"x-stream-offset": offset})
    c.start_consuming()
    took = (got[0][0] - start) * 1000
    c.close()
    return took, got[0][1]

for kind in ("offset", "timestamp"):
    times = []
    for _ in range(n):
        if kind == "offset":
            want = random.randrange(0, count)
            took, first = attach(want)
            assert first == want, (first, want)
        else:
            took, first = attach(datetime.datetime.fromtimestamp(random.randrange(t0, t1 + 1)))
        times.append(took)
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(f"{kind}: n={n} p50={p(0.5):.2f} ms p99={p(0.99):.2f} ms max={times[-1]:.2f} ms")
conn.close()
