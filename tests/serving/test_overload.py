"""Overload: a bounded queue that sheds with 503 + Retry-After at once, queue timeouts that
answer promptly, health and metrics never shed, readiness steady, recovery afterwards."""
from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from typing import cast

import httpx
import pytest

from inprocess import InProcessServer, SlowModel
from servedmodel.serving import create_app
from servedmodel.serving.manifest import load_manifest
from servedmodel.serving.settings import Batching, Settings
from serverkit import metric_sum

INFER = "/v2/models/test-mlp/infer"
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                               "data": [0.25] * 784}]}).encode()
Q = 8


def make_app(contexts, seconds: float, **overrides):
    manifest = load_manifest(contexts["mlp"])
    batching = Batching(**{"max_batch_size": 4, "max_queue_delay_ms": 0.0, "max_queue_size": Q,
                           "queue_timeout_ms": 10_000.0, **overrides})
    settings = Settings(context=contexts["mlp"], log_level="warning", batching=batching)
    model = SlowModel(seconds)
    return create_app(settings, model, manifest), model


async def _wait(event, timeout=10.0):  # noqa: ASYNC109 - a poll with a deadline, as the tests read it
    deadline = time.monotonic() + timeout
    while not event.is_set():
        assert time.monotonic() < deadline, "the model never started"
        await asyncio.sleep(0.002)


async def _timed(client, method, path, **kw):
    t0 = time.perf_counter()
    r = await client.request(method, path, **kw)
    return r, time.perf_counter() - t0


def _raw_burst(port: int, n: int, body: bytes, timeout: float = 30.0):
    """Send n requests on n pre-opened connections as fast as possible; return, per request,
    (status, headers, body, seconds from its send to its full response). Raw sockets and a
    selector keep client overhead out of the timings."""
    import selectors

    request = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    sel = selectors.DefaultSelector()
    sent, bufs, done = {}, {}, {}
    for i, s in enumerate(socks):
        s.setblocking(True)
        s.sendall(request)
        sent[i] = time.perf_counter()
        bufs[i] = b""
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout
    while len(done) < n and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            i = key.data
            chunk = cast(socket.socket, key.fileobj).recv(65536)
            bufs[i] += chunk
            head, sep, rest = bufs[i].partition(b"\r\n\r\n")
            if sep:
                lines = head.split(b"\r\n")
                headers = {k.strip().lower().decode(): v.strip().decode() for k, _, v in
                           (line.partition(b":") for line in lines[1:])}
                if len(rest) >= int(headers.get("content-length", 0)) or not chunk:
                    done[i] = (int(lines[0].split()[1]), headers, rest,
                               time.perf_counter() - sent[i])
                    sel.unregister(key.fileobj)
    for s in socks:
        s.close()
    return [done[i] for i in sorted(done)]


@pytest.mark.parametrize("k", [1, 5])
def test_full_queue_sheds_exactly_k_with_retry_after(contexts, k):
    app, model = make_app(contexts, seconds=0.6)

    async def scenario(url, port):
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
            await asyncio.gather(*[c.get("/v2/health/live") for _ in range(Q + k + 8)])
            first = asyncio.create_task(c.post(INFER, content=BODY))
            await _wait(model.started)                  # one batch is running now
            burst = asyncio.create_task(asyncio.to_thread(_raw_burst, port, Q + k, BODY))
            await asyncio.sleep(0.1)
            # Under overload: health, readiness and metrics answer, and readiness stays true.
            probes = await asyncio.gather(*[_timed(c, "GET", p) for p in (
                "/v2/health/live", "/v2/health/ready", "/v2/models/test-mlp/ready", "/metrics")])
            results = await burst
            assert (await first).status_code == 200
            metrics = (await c.get("/metrics")).text
            after = await c.post(INFER, content=BODY)
            return results, probes, metrics, after

    with InProcessServer(app) as server:
        results, probes, metrics, after = asyncio.run(scenario(server.url, server.port))
    assert len(results) == Q + k
    shed = [r for r in results if r[0] == 503]
    ok = [r for r in results if r[0] == 200]
    assert len(shed) == k and len(ok) == Q, [r[0] for r in results]
    for _, headers, body, seconds in shed:
        assert headers["retry-after"] == "1"
        assert "overloaded" in json.loads(body)["error"]
        assert seconds < 0.050, f"503 took {seconds * 1000:.1f} ms"
    for r, seconds in probes:
        assert r.status_code == 200 and seconds < 0.25
    assert metric_sum(metrics, 'servedmodel_request_failures_total{model="test-mlp",'
                               'protocol="rest",reason="queue_full"}') == k
    assert after.status_code == 200                     # recovered
    assert 'servedmodel_queue_depth{model="test-mlp"} 0' in metrics


def test_queue_timeout_is_a_prompt_503_counted_by_reason(contexts):
    app, model = make_app(contexts, seconds=1.5, queue_timeout_ms=200.0)

    async def scenario(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            first = asyncio.create_task(c.post(INFER, content=BODY))
            await _wait(model.started)
            waiting = await asyncio.gather(*[_timed(c, "POST", INFER, content=BODY)
                                             for _ in range(3)])
            metrics = (await c.get("/metrics")).text
            return await first, waiting, metrics

    with InProcessServer(app) as server:
        first, waiting, metrics = asyncio.run(scenario(server.url))
    assert first.status_code == 200
    for r, seconds in waiting:
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "waited in the queue longer than 200 ms" in r.json()["error"]
        assert 0.19 < seconds < 0.5, seconds          # long before the 1.5 s batch ends
    assert metric_sum(metrics, 'servedmodel_request_failures_total{model="test-mlp",'
                               'protocol="rest",reason="queue_timeout"}') == 3


def test_memory_bounded_and_recovers_after_sustained_overload(contexts):
    app, _ = make_app(contexts, seconds=0.02)

    async def scenario(url):
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
            codes = []
            for _ in range(4):
                rs = await asyncio.gather(*[c.post(INFER, content=BODY) for _ in range(100)])
                codes += [r.status_code for r in rs]
                if len(codes) == 100:
                    rss[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            await asyncio.sleep(0.3)
            after = [await c.post(INFER, content=BODY) for _ in range(5)]
            return codes, after, (await c.get("/metrics")).text

    rss = [0]
    with InProcessServer(app) as server:
        codes, after, metrics = asyncio.run(scenario(server.url))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
    assert all(r.status_code == 200 for r in after)
    assert (peak - rss[0]) * 1024 < 32 * 1024 * 1024
    assert 'servedmodel_queue_depth{model="test-mlp"} 0' in metrics
    assert 'servedmodel_inflight_requests{model="test-mlp"} 0' in metrics


def test_request_that_cannot_start_within_the_budget_is_refused_at_once(contexts):
    """With the time per row measured, a request whose estimated wait is over the queue-time
    budget gets 503 at once (not after the budget), while one that fits is served."""
    app, model = make_app(contexts, seconds=0.3, max_batch_size=1, queue_timeout_ms=450.0,
                          max_queue_size=100)

    async def scenario(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            assert (await c.post(INFER, content=BODY)).status_code == 200   # learns ~0.3 s/row
            running = asyncio.create_task(c.post(INFER, content=BODY))
            deadline = time.monotonic() + 10
            while len(model.batches) < 2:                                   # B runs now
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
            queued = asyncio.create_task(_timed(c, "POST", INFER, content=BODY))  # waits ~0.3 s
            await asyncio.sleep(0.05)
            # would wait ~0.55 s: what is left of B, then C
            refused, seconds = await _timed(c, "POST", INFER, content=BODY)
            metrics = (await c.get("/metrics")).text
            return await running, await queued, refused, seconds, metrics

    with InProcessServer(app) as server:
        running, (queued, _), refused, seconds, metrics = asyncio.run(scenario(server.url))
    assert running.status_code == 200 and queued.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert "queue-time budget of 450 ms" in error and "SERVEDMODEL_QUEUE_TIMEOUT_MS" in error
    assert seconds < 0.1, f"the refusal took {seconds * 1000:.0f} ms"
    assert metric_sum(metrics, 'servedmodel_request_failures_total{model="test-mlp",'
                               'protocol="rest",reason="queue_timeout"}') == 1


@pytest.mark.slow
def test_64_closed_loop_clients_see_no_503_with_default_settings(tmp_path, start_server):
    """The default budget fits real clients: 64 concurrent closed-loop clients of a model as
    slow as minilm (a full batch of 32 takes ~0.35 s on 2 CPUs) queue for up to two batches and more
    on a shared CPU, and none of them is shed. The old defaults (a 1 s timeout, a queue of
    4 x max batch) shed a large share of such a loop."""
    import http.client
    import threading

    from contexts import write_context

    ctx = write_context(tmp_path / "ctx", "paced", max_batch_size=32, warmup=(1, 32))
    server = start_server(ctx)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32",
                                   "data": [0.5] * 512}]})
    statuses: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + 6.0

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while time.monotonic() < stop:
            conn.request("POST", "/v2/models/test-paced/infer", body=body,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            with lock:
                statuses.append(r.status)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    metrics = httpx.get(server.url + "/metrics").text
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(statuses) >= 2 * 64
    # Real queueing happened: requests waited behind running batches. Relative to the model's
    # own batch time, so the check holds on a fast machine and a loaded one alike.
    mean_wait = metric_sum(metrics, "servedmodel_queue_duration_seconds_sum") / metric_sum(
        metrics, "servedmodel_queue_duration_seconds_count")
    mean_batch = metric_sum(metrics, "servedmodel_compute_duration_seconds_sum") / metric_sum(
        metrics, "servedmodel_compute_duration_seconds_count")
    assert mean_wait >= 0.5 * mean_batch, (mean_wait, mean_batch)
    assert metric_sum(metrics, 'servedmodel_batch_size_sum') / metric_sum(
        metrics, 'servedmodel_batch_size_count') > 8
