#!/usr/bin/env python3
"""The compose cluster test: a cart scenario through the API of a running compose cluster,
with a data node killed and a gateway cut off from the network, then checks that nothing
acknowledged was lost and that the replicas agree.

Run by scripts/compose-test.sh, which brings the cluster up before and tears it down after:

    compose_test.py --api URL --token TOKEN --replicas N [--prometheus URL] -- COMPOSE_COMMAND...

With --prometheus (the `monitoring` profile), it also checks that Prometheus scrapes every
cartdb process and holds the requests the scenario made.

The client keeps the expected cart of every user: each insert or delete carries its own
Idempotency-Key and is retried with that key until it gets a definite answer, so it is
applied exactly once and the expected quantities are exact. Every wait polls with a
deadline; nothing sleeps to synchronise. Uses the Python standard library only.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict

PHASE_TIMEOUT = 90  # seconds for one wait
OP_TIMEOUT = 60  # seconds to get a definite answer for one operation, retries included
HTTP_TIMEOUT = 20  # seconds for one request (the API may wait 3 s on a lost gateway)

CATEGORY = {
    "pork": "1", "soap": "1", "beef": "1", "yogurt": "2", "milk": "2", "cheese": "2",
    "cereals": "3", "bread": "3", "apples": "4", "tomatoes": "4", "coffee": "5", "tea": "5",
}
ITEMS = list(CATEGORY)
# Prometheus targets of docker/prometheus/prometheus.yml: the API server, 2 gateways, 6 data nodes.
PROMETHEUS_TARGETS = 9


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class CheckFailed(Exception):
    pass


class Api:
    """A JSON client of the REST API (no proxy: the API is on this machine)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body=None, headers=None, admin=False):
        """Returns (status, json or text); raises OSError when the API cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if admin and self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self.opener.open(request, timeout=HTTP_TIMEOUT) as reply:
                return reply.status, _decode(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, _decode(error.read())

    def get(self, path: str, admin=False):
        return self.call("GET", path, admin=admin)


def _decode(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def wait_until(what: str, check, timeout: float = PHASE_TIMEOUT):
    """Calls check() until it returns a value other than None or False (0 is a value), and
    returns that value. check() may return (value, reason): the last reason is in the error
    on time-out. An OSError or CheckFailed from check() counts as "not yet"."""
    deadline = time.monotonic() + timeout
    reason = "never checked"
    while True:
        try:
            result = check()
        except (OSError, CheckFailed) as error:
            result = (None, f"{error.__class__.__name__}: {error}")
        if isinstance(result, tuple):
            value, reason = result
        else:
            value, reason = result, "not yet"
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise CheckFailed(f"gave up after {timeout}s waiting for {what}: {reason}")
        time.sleep(0.5)


class Shoppers:
    """Users' carts as the client expects them, and every operation's outcome."""

    def __init__(self, api: Api, run: str) -> None:
        self.api = api
        self.run = run
        self.expected: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.acked = 0
        self.retried: list[str] = []
        self.counter = 0

    def user(self, n: int) -> str:
        return f"{self.run}-user{n}"

    def answered(self, what: str, phase: str, send):
        """Calls send() -> (status, body) until the API gives a definite answer (not 502,
        503, 504 or no connection) or OP_TIMEOUT passes; returns (status, body, seconds).
        Every retry is recorded under `phase`."""
        started = time.monotonic()
        attempts = []
        while True:
            try:
                status, body = send()
            except OSError as error:
                status, body = None, f"{error.__class__.__name__}: {error}"
            if status not in (None, 502, 503, 504):
                break
            attempts.append(f"{status} {body}")
            if time.monotonic() - started >= OP_TIMEOUT:
                raise CheckFailed(f"{what} ({phase}): no answer within {OP_TIMEOUT}s: {attempts}")
            time.sleep(0.2)
        if attempts:
            self.retried.append(
                f"{phase}: {what} needed {len(attempts) + 1} attempts ({attempts[0]})")
        return status, body, time.monotonic() - started

    def op(self, kind: str, user: str, item: str, phase: str) -> float:
        """Inserts or deletes one unit, retrying with the same Idempotency-Key until the API
        gives a definite answer (so it is applied exactly once); returns the seconds it took.
        A delete is only sent for an item the client knows is in the cart, so it must
        succeed."""
        self.counter += 1
        key = f"{self.run}-{self.counter}"
        status, body, took = self.answered(
            f"{kind} {user}/{item}", phase,
            lambda: self.api.call("POST", f"/api/{kind}", {"userid": user, "item_name": item},
                                  headers={"Idempotency-Key": key}))
        if status != 200:
            raise CheckFailed(f"{kind} {item} for {user} ({phase}): {status} {body}")
        self.expected[user][item] += 1 if kind == "insert" else -1
        self.acked += 1
        return took

    def write_some(self, count: int, phase: str, users=range(1, 5)) -> list[float]:
        """`count` operations spread over users and items: mostly inserts, and a delete
        every fourth operation when the cart has that item."""
        took = []
        users = list(users)
        for i in range(count):
            user = self.user(users[i % len(users)])
            item = ITEMS[(i * 7 + self.counter) % len(ITEMS)]
            if i % 4 == 3 and self.expected[user][item] > 0:
                took.append(self.op("delete", user, item, phase))
            else:
                took.append(self.op("insert", user, item, phase))
        return took

    def expected_cart(self, user: str) -> dict[str, int]:
        return {item: qty for item, qty in self.expected[user].items() if qty > 0}

    def check_cart(self, user: str, phase: str = "check") -> None:
        """list_all answers exactly the expected cart. A read the API could not serve (503)
        is retried (and recorded); an answer that lacks an acknowledged operation fails."""
        status, body, _ = self.answered(f"list_all {user}", phase,
                                        lambda: self.api.get(f"/api/list_all?userid={user}"))
        if status != 200:
            raise CheckFailed(f"list_all {user}: {status} {body}")
        got = {entry["name"]: entry["qty"] for entry in body["response"]}
        names = [entry["name"] for entry in body["response"]]
        if names != sorted(names):
            raise CheckFailed(f"list_all {user} is not sorted by name: {names}")
        want = self.expected_cart(user)
        if got != want:
            missing = {k: v for k, v in want.items() if got.get(k) != v}
            raise CheckFailed(f"list_all {user}: got {got}, expected {want} (differs: {missing})")

    def users(self) -> list[str]:
        return sorted(self.expected)


class Compose:
    """The docker side: containers of services, kill/start, network disconnect/connect."""

    def __init__(self, command: list[str]) -> None:
        self.command = command

    def container(self, service: str) -> str:
        out = run(self.command + ["ps", "-q", service]).strip()
        if not out:
            raise CheckFailed(f"no container for service {service}")
        return out.splitlines()[0]

    @staticmethod
    def inspect(container: str, template: str) -> str:
        return run(["docker", "inspect", "--format", template, container]).strip()

    @staticmethod
    def inspect_network(network: str, template: str) -> str:
        return run(["docker", "network", "inspect", "--format", template, network]).strip()

    def networks(self, container: str) -> dict:
        return json.loads(self.inspect(container, "{{json .NetworkSettings.Networks}}"))


def run(command: list[str]) -> str:
    log("$ " + " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CheckFailed(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def cluster_view(api: Api, gateway: int | None = None):
    """The cluster document (with the internal addresses: as an admin), as the sweep's
    leader sees it, or as gateway `gateway` does."""
    path = "/api/cluster" if gateway is None else f"/api/cluster?gateway={gateway}"
    status, body = api.get(path, admin=True)
    if status != 200:
        raise CheckFailed(f"{path}: {status} {body}")
    return body


def replica_states(api: Api, user: str) -> dict[str, dict[int, object]]:
    """product id -> device -> that device's own state of the item."""
    status, body = api.get(f"/api/admin/replicas?userid={user}", admin=True)
    if status != 200:
        raise CheckFailed(f"replicas of {user}: {status} {body}")
    items: dict[str, dict[int, object]] = defaultdict(dict)
    for replica in body["replicas"]:
        if replica.get("items") is None:
            raise CheckFailed(f"device {replica['device']} did not answer: {replica.get('error')}")
        for state in replica["items"]:
            items[state["product"]][replica["device"]] = state
    return items


def disagreement(api: Api, user: str, replicas: int) -> str | None:
    """None when every item of `user` is held identically by every device holding it, and
    by at least `replicas` devices; else what differs."""
    items = replica_states(api, user)
    if not items:
        return f"{user} has no items on any replica"
    for product, by_device in sorted(items.items()):
        states = list(by_device.values())
        if len(by_device) < replicas:
            return f"{user} product {product} is on {sorted(by_device)} only"
        if any(state != states[0] for state in states[1:]):
            detail = "; ".join(f"device {device}: {json.dumps(state, sort_keys=True)}"
                               for device, state in sorted(by_device.items()))
            return f"{user} product {product} differs between devices: {detail}"
    return None


class Test:
    def __init__(self, args) -> None:
        self.api = Api(args.api, args.token)
        self.replicas = args.replicas
        self.rejoin = args.rejoin
        self.writes_after_heal = args.writes_after_heal
        self.compose = Compose(args.compose)
        self.prometheus = args.prometheus.rstrip("/") if args.prometheus else None
        self.shoppers = Shoppers(self.api, "ct" + uuid.uuid4().hex[:8])
        self.results: list[tuple[str, bool, str]] = []

    def check(self, name: str, step) -> bool:
        started = time.monotonic()
        log(f"--- {name}")
        try:
            detail = step() or ""
        except Exception as error:  # noqa: BLE001 - any error fails the step, with its reason
            reason = str(error) if isinstance(error, CheckFailed) else repr(error)
            self.results.append((name, False, reason))
            log(f"FAIL {name}: {reason}")
            return False
        took = time.monotonic() - started
        self.results.append((name, True, f"{detail} ({took:.1f}s)".strip()))
        log(f"PASS {name} ({took:.1f}s) {detail}")
        return True

    # 1. the cart scenario -------------------------------------------------------------
    def scenario(self) -> str:
        s, api = self.shoppers, self.api
        for n in range(1, 5):
            user = s.user(n)
            for item in ["pork", "pork", "soap", "yogurt", "cereals", "apples", "coffee"][: 3 + n]:
                s.op("insert", user, item, "scenario")
            s.op("delete", user, "pork", "scenario")
        s.op("delete", s.user(1), "soap", "scenario")  # soap: 1 -> 0, gone from the cart
        status, body = api.call("POST", "/api/delete",
                                {"userid": s.user(1), "item_name": "soap"})
        if status != 404:
            raise CheckFailed(f"delete of an item not in the cart: {status} {body}, not 404")
        status, body = api.call("POST", "/api/insert",
                                {"userid": s.user(1), "item_name": "no-such-product"})
        if status != 404:
            raise CheckFailed(f"insert of an unknown product: {status} {body}, not 404")
        for user in s.users():
            s.check_cart(user)
        self.check_categories()
        if api.token:
            status, _ = api.get("/api/list_category?category=1")
            if status != 401:
                raise CheckFailed(f"list_category without the admin token: {status}, not 401")
            status, _ = api.get(f"/api/admin/replicas?userid={s.user(1)}")
            if status != 401:
                raise CheckFailed(f"admin/replicas without the admin token: {status}, not 401")
        return f"{s.acked} operations acknowledged, carts and categories as expected"

    # 1b. the monitoring profile ---------------------------------------------------------
    def prometheus_scrapes_every_process(self) -> str:
        def query(path: str):
            with urllib.request.urlopen(f"{self.prometheus}{path}", timeout=HTTP_TIMEOUT) as reply:
                return json.load(reply)["data"]

        def all_up():
            targets = query("/api/v1/targets?state=active")["activeTargets"]
            down = sorted(f"{t['labels']['instance']}: {t.get('lastError') or t['health']}"
                          for t in targets if t["health"] != "up")
            if len(targets) == PROMETHEUS_TARGETS and not down:
                return sorted(t["labels"]["instance"] for t in targets)
            return None, f"{len(targets)} targets, not up: {down}"

        up = wait_until("Prometheus to scrape every cartdb process", all_up)

        def inserts_counted():
            result = query("/api/v1/query?query=" + urllib.request.quote(
                'sum(cartdb_http_requests_total{endpoint="/api/insert"})'))["result"]
            counted = float(result[0]["value"][1]) if result else 0.0
            return counted if counted > 0 else (None, f"{counted} inserts counted")

        counted = wait_until("Prometheus to hold the scenario's inserts", inserts_counted)
        return f"{len(up)} targets up ({', '.join(up)}); {counted:.0f} inserts counted"

    def check_categories(self) -> None:
        for category in sorted(set(CATEGORY.values())):
            status, body, _ = self.shoppers.answered(
                f"list_category {category}", "check",
                lambda: self.api.get(f"/api/list_category?category={category}", admin=True))
            if status != 200:
                raise CheckFailed(f"list_category {category}: {status} {body}")
            listed = set(body["users"])
            for user in self.shoppers.users():
                holds = any(CATEGORY[item] == category
                            for item in self.shoppers.expected_cart(user))
                if holds and user not in listed:
                    raise CheckFailed(f"list_category {category} misses {user}: {sorted(listed)}")

    # 2. a data node killed --------------------------------------------------------------
    def kill_datanode(self) -> str:
        user = self.shoppers.user(1)
        holders = replica_states(self.api, user)["1"]  # pork, product 1
        self.victim = min(holders)
        service = f"datanode-{self.victim}"
        self.victim_container = self.compose.container(service)
        run(["docker", "kill", self.victim_container])
        state = self.compose.inspect(self.victim_container, "{{.State.Status}}")
        log(f"{service} (device {self.victim}, holds {user}'s pork) killed; state {state}")
        # Writes right after the kill, before the cluster noticed, then after.
        took = self.shoppers.write_some(12, "datanode killed") + [
            self.shoppers.op("insert", user, "pork", "datanode killed")]
        wait_until(f"device {self.victim} to be seen down",
                   lambda: self.device_up(self.victim) is False or (None, "still up"))
        took += self.shoppers.write_some(12, "datanode down")
        took.append(self.shoppers.op("insert", user, "pork", "datanode down"))
        self.fail_on_retries("datanode")
        return (f"device {self.victim} killed; {len(took)} writes acknowledged, "
                f"slowest {max(took):.2f}s")

    def device_up(self, device: int):
        for entry in cluster_view(self.api)["devices"]:
            if entry["id"] == device:
                return entry["up"]
        raise CheckFailed(f"device {device} not in /api/cluster")

    # 3. a gateway cut off ---------------------------------------------------------------
    def disconnect_gateway(self) -> str:
        self.gateway_container = self.compose.container("gateway-1")
        networks = self.compose.networks(self.gateway_container)
        if len(networks) != 1:
            raise CheckFailed(f"gateway-1 is on {len(networks)} networks, expected 1")
        self.network, endpoint = next(iter(networks.items()))
        self.aliases = [a for a in endpoint.get("Aliases") or [] if a]
        self.gateway_ip = endpoint["IPAddress"]
        run(["docker", "network", "disconnect", self.network, self.gateway_container])
        took = self.shoppers.write_some(8, "gateway disconnected")
        for user in self.shoppers.users():
            self.shoppers.check_cart(user, "gateway disconnected")
        wait_until("the API to see one gateway",
                   lambda: len(cluster_view(self.api)["api"]["gateways"]) == 1
                   or (None, "still two"))
        took += self.shoppers.write_some(12, "gateway gone")
        for user in self.shoppers.users():
            self.shoppers.check_cart(user, "gateway gone")
        self.fail_on_retries("gateway")
        return (f"gateway-1 off {self.network}; {len(took)} writes and "
                f"{2 * len(self.shoppers.users())} reads served, slowest write {max(took):.2f}s")

    def fail_on_retries(self, phase: str) -> None:
        retried = [r for r in self.shoppers.retried if phase in r]
        if retried:
            raise CheckFailed(f"requests not served on their first attempt: {retried}")

    # 4. both back -----------------------------------------------------------------------
    def restart_both(self) -> str:
        # The gateway first, so that the data node starting after it cannot take its address.
        address = self.gateway_ip if self.rejoin == "same-address" else self.unused_address()
        command = ["docker", "network", "connect", "--ip", address]
        for alias in self.aliases:
            command += ["--alias", alias]
        run(command + [self.network, self.gateway_container])
        log(f"gateway-1 back on {self.network} at {address} (it had {self.gateway_ip})")
        run(["docker", "start", self.victim_container])
        seen: dict[int, str] = {}

        def whole() -> tuple[bool | None, str]:
            # Each gateway has its own view: ask each one the API knows, until both have
            # answered with every device up and both gateways registered.
            state = "no answer yet"
            for entry in cluster_view(self.api)["api"]["gateways"]:
                try:
                    view = cluster_view(self.api, entry["id"])
                except CheckFailed as unreachable:
                    state = str(unreachable)
                    continue
                up = sum(1 for d in view["devices"] if d["up"] and d["reweight"] > 0)
                state = (f"{up}/{len(view['devices'])} devices up and in, "
                         f"{len(view['gateways'])} gateways, "
                         f"API knows {len(view['api']['gateways'])}")
                if up == len(view["devices"]) and len(view["gateways"]) == 2 \
                        and len(view["api"]["gateways"]) == 2:
                    seen[view["api"]["answered_by"]] = state
            return len(seen) == 2 or None, f"{state}; full view from gateways {sorted(seen)}"

        wait_until("every device and both gateways back, seen by both gateways", whole)
        # What the victim missed, before anything reads the carts (and so repairs them);
        # the anti-entropy sweep may already be at work. Polled: right after the network
        # comes back, the reconnected gateway's first requests on its old connections can
        # time out until TCP retransmits.
        self.stale = wait_until("every replica to answer the dump", self.count_stale)
        took = self.shoppers.write_some(self.writes_after_heal, "after restart")
        return (f"device {self.victim} and gateway-1 back; {self.stale} items differed between "
                f"replicas; {len(took)} writes right after")

    def unused_address(self) -> str:
        """The highest address of the network's subnet that no container uses."""
        subnet = json.loads(Compose.inspect_network(self.network, "{{json .IPAM.Config}}"))[0]
        used = {c["IPv4Address"].split("/")[0] for c in json.loads(
            Compose.inspect_network(self.network, "{{json .Containers}}")).values()}
        network = ipaddress.ip_network(subnet["Subnet"])
        for host in reversed(list(network.hosts())):
            if str(host) not in used and str(host) != subnet.get("Gateway"):
                return str(host)
        raise CheckFailed(f"no unused address in {network}")

    def count_stale(self) -> int:
        """The number of items whose replicas differ."""
        return sum(1 for user in self.shoppers.users()
                   for by_device in replica_states(self.api, user).values()
                   if len({json.dumps(s, sort_keys=True) for s in by_device.values()}) > 1)

    # 5. nothing lost, replicas agree ----------------------------------------------------
    def acknowledged_present(self) -> str:
        for user in self.shoppers.users():
            self.shoppers.check_cart(user)
        self.check_categories()
        units = sum(sum(self.shoppers.expected_cart(u).values()) for u in self.shoppers.users())
        return (f"{self.shoppers.acked} acknowledged operations: every cart exact "
                f"({len(self.shoppers.users())} users, {units} units)")

    def replicas_agree(self) -> str:
        def agreed():
            pending = []
            for user in self.shoppers.users():
                self.shoppers.check_cart(user)  # a read repairs what it finds stale
                problem = disagreement(self.api, user, self.replicas)
                if problem:
                    pending.append(problem)
            return not pending or None, "; ".join(pending)

        wait_until("every replica of every item to agree", agreed)
        victim_holds = sum(
            1 for user in self.shoppers.users()
            for by_device in replica_states(self.api, user).values() if self.victim in by_device)
        view = wait_until("/api/cluster", lambda: cluster_view(self.api))["maintenance"]
        sweep = view.get("anti_entropy") or {}
        return (f"all items identical on their replicas ({self.stale} differed after the "
                f"restart); device {self.victim} holds {victim_holds}; repairs so far: "
                f"{view.get('repairs')} by the answering gateway, {sweep.get('repairs')} by "
                f"the anti-entropy sweep")

    def run(self) -> int:
        steps = [
            ("cart scenario: inserts, deletes, list_all, list_category", self.scenario),
            *([("Prometheus scrapes every cartdb process", self.prometheus_scrapes_every_process)]
              if self.prometheus else []),
            ("docker kill a data node; writes still succeed", self.kill_datanode),
            ("network-disconnect a gateway; the other serves", self.disconnect_gateway),
            ("reconnect the gateway and restart the data node", self.restart_both),
            ("every acknowledged operation is present", self.acknowledged_present),
            ("the replicas agree", self.replicas_agree),
        ]
        for name, step in steps:
            if not self.check(name, step):
                break  # later steps depend on the earlier ones
        passed = sum(1 for _, ok, _ in self.results if ok)
        failed = len(self.results) - passed
        skipped = len(steps) - len(self.results)
        print("\ncompose test results:")
        for name, ok, detail in self.results:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
        for name, _ in steps[len(self.results):]:
            print(f"  SKIP  {name}")
        if self.shoppers.retried:
            print("  operations that needed a retry:")
            for line in self.shoppers.retried:
                print(f"    {line}")
        print(f"compose: {passed} passed, {failed} failed, {skipped} skipped")
        return 0 if failed == 0 and skipped == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True, help="base URL of the API server")
    parser.add_argument("--token", default="", help="the admin token")
    parser.add_argument("--replicas", type=int, default=3, help="RF")
    parser.add_argument("--rejoin", choices=["same-address", "new-address"],
                        default="new-address",
                        help="the address the disconnected gateway comes back with")
    parser.add_argument("--writes-after-heal", type=int, default=12,
                        help="writes made right after both are back, before the checks")
    parser.add_argument("--prometheus", default="",
                        help="base URL of Prometheus (the monitoring profile), to check it")
    parser.add_argument("compose", nargs="+", help="the compose command (after --)")
    return Test(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
