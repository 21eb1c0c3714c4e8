"""The router's Redis clients hold as many blocking reads as a process has requests waiting."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tasks.connections import redis_client

WAITING = 300  # redis-py 8's own default pool refuses a 101st connection
BLOCK_MS = 120_000  # far beyond the time 300 threads take to connect on a slow, shared machine


def test_hundreds_of_blocked_readers_share_one_client(r) -> None:  # type: ignore[no-untyped-def]
    kwargs = r.connection_pool.connection_kwargs
    client = redis_client(f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}")
    client.xadd("s", {"n": "0"}, id="1-0")

    def wait(_: int) -> int:
        found = client.xread({"s": "1-0"}, block=BLOCK_MS)
        return len(found[0][1])

    with ThreadPoolExecutor(WAITING) as pool:
        waiting = [pool.submit(wait, i) for i in range(WAITING)]
        while len(client.connection_pool._in_use_connections) < WAITING:  # all blocked
            assert not any(f.done() for f in waiting), [f.exception() for f in waiting][:1]
            time.sleep(0.01)  # leave the GIL to the threads still connecting
        client.xadd("s", {"n": "1"}, id="2-0")
        assert [f.result(timeout=60) for f in waiting] == [1] * WAITING
