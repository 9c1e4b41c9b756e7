"""Issue 18, finding 4: `pulumi up` returns when the canary's new revision is fully promoted and
fails when the canary aborts (components/rollout_wait.py).

The verdict is a pure function, tested on Rollout objects as Argo Rollouts v1.9.1 leaves them
(argo_status.py: upstream's own test data, and objects built from the controller's code); the
poller on whole sequences of them; the dynamic provider through the real Kubernetes client
against an API endpoint on 127.0.0.1; and the program under the mocks: the Rollout is not
awaited by the provider, the RolloutWait is, after it, whenever its spec changes."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

import argo_status as argo
from pulumi_harness import TEST_SECRET, run_program, variant_run
from servedmodel.components import canary, timeouts
from servedmodel.components.rollout_wait import (
    DONE,
    FAILED,
    TRIGGERS,
    WAIT,
    RolloutWaitError,
    RolloutWaitProvider,
    rollout_verdict,
    spec_hash,
    wait_for_rollout,
)

ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
WAITER = "pulumi-python:dynamic/servedmodel:RolloutWait"


# --- the verdict ---------------------------------------------------------------------------------

def test_upstream_objects_aborted_invalid_and_past_the_deadline_fail():
    aborted = rollout_verdict(argo.upstream("rollout-aborted"))
    assert aborted.state == FAILED and 'metric "web" assessed Failed' in aborted.message
    invalid = rollout_verdict(argo.upstream("rollout-invalid"))
    assert invalid.state == FAILED and "selector` does not match template" in invalid.message
    timed_out = rollout_verdict(argo.upstream("rollout-timed-out"))
    assert timed_out.state == FAILED and "has timed out progressing" in timed_out.message


def test_the_previous_revisions_healthy_is_not_this_ones():
    """What the provider's waitFor matched: phase Healthy, stable == current, of generation 4."""
    stale = argo.stale_after_update(5)
    assert stale["status"]["phase"] == "Healthy" and stale["status"]["observedGeneration"] == "4"
    assert rollout_verdict(stale).state == WAIT
    # Once observed, the same fields mean what they say.
    assert rollout_verdict(argo.healthy_stable(5)).state == DONE


@pytest.mark.parametrize("build", [argo.progressing, argo.paused_at_step, argo.unpausing])
def test_a_canary_on_its_way_is_waited_for(build):
    assert rollout_verdict(build(7)).state == WAIT


def test_promoted_is_done_and_only_then():
    assert rollout_verdict(argo.promoted(7)).state == DONE
    half = argo.promoted(7)
    half["status"]["stableRS"] = argo.STABLE_HASH  # Healthy-looking, but the canary is not stable yet
    assert rollout_verdict(half).state == WAIT


def test_an_aborted_canary_fails_with_argos_reason():
    verdict = rollout_verdict(argo.aborted(7))
    assert verdict.state == FAILED
    assert "aborted" in verdict.message and 'Metric "failure-ratio" assessed Failed' in verdict.message
    # An abort recorded for an older generation is not this spec's outcome (yet).
    assert rollout_verdict(argo.with_generation(argo.aborted(7), 8)).state == WAIT


def test_an_inconclusive_analysis_fails_at_once_naming_what_a_person_does():
    verdict = rollout_verdict(argo.inconclusive(7))
    assert verdict.state == FAILED and "kubectl argo rollouts promote" in verdict.message


# --- the poller ------------------------------------------------------------------------------------

class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reader(sequence):
    """Each read returns the next object; the last one stays (or raises, when it is an exception)."""
    items = list(sequence)

    def fetch():
        item = items.pop(0) if len(items) > 1 else items[0]
        if isinstance(item, Exception):
            raise item
        return item
    return fetch


def test_the_wait_returns_only_when_the_new_revision_is_promoted():
    t = FakeTime()
    sequence = argo.canary_that_is_promoted(5)
    verdict = wait_for_rollout(reader(sequence), 3600, poll_seconds=10, clock=t.clock, sleep=t.sleep)
    assert verdict.state == DONE and argo.CANARY_HASH in verdict.message
    assert t.now == 10 * (len(sequence) - 1)  # it read every state, the stale one first


def test_the_wait_fails_as_soon_as_the_canary_aborts():
    t = FakeTime()
    with pytest.raises(RolloutWaitError, match="aborted"):
        wait_for_rollout(reader(argo.canary_that_aborts(5)), 3600, poll_seconds=10, clock=t.clock, sleep=t.sleep)
    assert t.now == 30  # not the timeout


def test_the_wait_fails_as_soon_as_the_analysis_is_inconclusive():
    t = FakeTime()
    with pytest.raises(RolloutWaitError, match="inconclusive"):
        wait_for_rollout(reader(argo.canary_nobody_used(5)), 3600, poll_seconds=10, clock=t.clock, sleep=t.sleep)
    assert t.now == 30


def test_the_wait_gives_up_at_its_deadline_with_the_last_state():
    t = FakeTime()
    with pytest.raises(RolloutWaitError, match="within 600s; last state: Paused: CanaryPauseStep"):
        wait_for_rollout(reader([argo.paused_at_step(5)]), 600, poll_seconds=10, clock=t.clock, sleep=t.sleep)
    assert t.now == 600


def test_read_failures_and_a_missing_object_are_retried():
    t = FakeTime()
    verdict = wait_for_rollout(reader([ConnectionError("connection reset"), None, argo.promoted(5)]), 600,
                               poll_seconds=10, clock=t.clock, sleep=t.sleep)
    assert verdict.state == DONE and t.now == 20


# --- the dynamic provider, through the real Kubernetes client -------------------------------------

class FakeApiServer:
    """An HTTP endpoint on 127.0.0.1 answering GETs of one Rollout with the next object of a
    sequence, recording each request's path and Authorization header."""

    def __init__(self, sequence):
        self.items, self.requests = list(sequence), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server hook
                server.requests.append((self.path, self.headers.get("Authorization")))
                item = server.items.pop(0) if len(server.items) > 1 else server.items[0]
                body = json.dumps(item).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self) -> str:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{self.httpd.server_port}"}}],
            "users": [{"name": "u", "user": {"token": "token-for-the-test"}}],
            "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}]})


def props(kubeconfig: str) -> dict:
    return {"namespace": "servedmodel", "name": "classifier-rollout-c2285cb", "specHash": "a" * 64,
            "timeoutSeconds": 30, "pollSeconds": 0.05, "kubeconfig": kubeconfig}


def test_the_provider_reads_the_rollout_with_the_stacks_kubeconfig_until_promoted():
    with FakeApiServer(argo.canary_that_is_promoted(5)) as api:
        result = RolloutWaitProvider().create(props(api.kubeconfig()))
    assert result.id == "servedmodel/classifier-rollout-c2285cb"
    assert "kubeconfig" not in (result.outs or {}), "the secret must not reach the state"
    assert argo.CANARY_HASH in result.outs["verdict"]
    path, auth = api.requests[0]
    assert path == "/apis/argoproj.io/v1alpha1/namespaces/servedmodel/rollouts/classifier-rollout-c2285cb"
    assert auth == "Bearer token-for-the-test"
    assert len(api.requests) == len(argo.canary_that_is_promoted(5))


def test_the_provider_fails_the_update_when_the_canary_aborts():
    with FakeApiServer(argo.canary_that_aborts(5)) as api:
        with pytest.raises(RolloutWaitError, match="aborted"):
            RolloutWaitProvider().update("x", {}, props(api.kubeconfig()))


def test_the_provider_waits_again_only_for_a_new_spec():
    provider = RolloutWaitProvider()
    old = dict.fromkeys(TRIGGERS, "x") | {"timeoutSeconds": 600, "verdict": "done"}
    assert not provider.diff("id", old, old | {"timeoutSeconds": 900, "kubeconfig": "another"}).changes
    assert provider.diff("id", old, old | {"specHash": "y"}).changes
    assert provider.diff("id", old, old | {"name": "y"}).replaces == []


# --- the program ----------------------------------------------------------------------------------

def test_prod_waits_on_argos_view_not_on_the_providers_await(stack_runs):
    run = stack_runs["prod"]
    rollout, waiter = run.one(ROLLOUT), run.one(WAITER)
    annotations = rollout.inputs["metadata"]["annotations"]
    assert annotations[canary.SKIP_AWAIT_ANNOTATION] == "true" and "pulumi.com/waitFor" not in annotations
    assert waiter.waits_for(rollout)
    assert waiter.inputs["name"] == rollout.state["metadata"]["name"]
    assert waiter.inputs["namespace"] == rollout.inputs["metadata"]["namespace"]
    assert waiter.inputs["specHash"] == spec_hash(rollout.inputs["spec"])
    # The cluster of the stack's Kubernetes provider, kept secret.
    provider = run.one("pulumi:providers:kubernetes")
    assert waiter.inputs["kubeconfig"] == provider.inputs["kubeconfig"]
    assert "kubeconfig" in waiter.secret_paths
    # The deadline: the pauses (which outlast the analysis), every pod of the new version, margin.
    steps = tuple(run_steps(run))
    pauses = sum(canary.duration_seconds(s["pause"]["duration"]) for s in steps if "pause" in s)
    assert waiter.inputs["timeoutSeconds"] >= pauses + rollout.inputs["spec"]["progressDeadlineSeconds"]


def run_steps(run):
    return run.one(ROLLOUT).inputs["spec"]["strategy"]["canary"]["steps"]


def test_a_model_change_re_runs_the_wait_and_a_no_op_does_not(stack_runs, model_cache):
    base = stack_runs["prod"].one(WAITER).inputs["specHash"]
    assert variant_run("prod", {}).one(WAITER).inputs["specHash"] == base
    changed = variant_run("prod", {"servedmodel:compression": "none"})
    assert changed.one(WAITER).inputs["specHash"] != base


def test_an_indefinite_pause_is_left_to_a_person(model_cache):
    run = run_program("prod", {"servedmodel:canarySteps": ["setWeight:20", "pause:10m", "setWeight:50", "pause"]},
                      secrets={"servedmodel:authToken": TEST_SECRET})
    assert run.one(ROLLOUT).inputs["metadata"]["annotations"][canary.SKIP_AWAIT_ANNOTATION] == "true"
    assert not run.of_type(WAITER)


def test_the_deadline_is_sized_from_the_steps_and_the_pods():
    args = canary.RolloutArgs(strategy="canary", prometheus_address="http://p:9090",
                              steps=("setWeight:20", "pause:10m", "setWeight:50", "pause:5m"), analysis_count=8)
    assert canary.pause_seconds(args) == 900 and canary.pause_seconds(args, 2) == 300
    assert canary.analysis_seconds(args) == 9 * 60
    assert canary.rollout_timeout_seconds(args, 600, pods_seconds=1800) == \
        900 + 1800 + timeouts.ROLLOUT_WAIT_MARGIN_SECONDS
    # The progress deadline bounds from below what bringing the pods up may take.
    assert canary.rollout_timeout_seconds(args, 600, pods_seconds=60) == \
        900 + 600 + timeouts.ROLLOUT_WAIT_MARGIN_SECONDS
