"""Chaos over real sockets: the simulator, a signature-checking webhook receiver, and two
`docgen-monitor run` replicas as subprocesses on one PostgreSQL schema (the machine's server),
with 300 jobs in 10 batches moving for minutes while the test kills, pauses or cuts off the
leader. Whatever happens, every final status arrives and no change gets a second event id.

`ha.lease_ttl` stays at its default (15 s): failover is measured as users get it."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from monitor.simulator import (
    RunningSimulator,
    SimulatorConfig,
    TimelineConfig,
    UserConfig,
    start_simulator,
)
from tests.harness import (
    TOKEN,
    DaemonProcess,
    SimControl,
    free_port,
    wait_until,
    write_config,
)
from tests.receiver import WebhookReceiver
from tests.store_fixtures import PostgresBackend
from tests.tcp_proxy import TcpProxy
from tests.test_e2e import check_delivered, start_batches

# Minutes of moving jobs, failovers of up to 2 x lease_ttl: longer than the 120 s default.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

LEASE_TTL_S = 15.0  # the default of ha.lease_ttl
ACCOUNT = "default"  # the one account of a top-level `box:` section
KILLS = 5


def sim_config(max_duration_s: float) -> SimulatorConfig:
    """Jobs that keep moving for `max_duration_s`: through every kill, pause or cut of a test."""
    return SimulatorConfig(
        seed=11, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(
            submitted_after_s=1.0, min_duration_s=5.0, max_duration_s=max_duration_s),
    )


class Replica(DaemonProcess):
    """One replica: its own directory (config, logs) and HTTP port, the shared state URL."""

    def __init__(self, directory: Path, *, box_url: str, hook_url: str, state_url: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        path = write_config(directory / "config.yaml", box_url=box_url, hook_url=hook_url,
                            http_port=port, state={"url": state_url})
        super().__init__(path, port)
        self.name = directory.name

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by `name{label=value,...}` (labels sorted)."""
        status, text = await self.get("/metrics")
        assert status == 200, text
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
        return samples

    async def role(self) -> tuple[bool, float]:
        """(leads the account, polls it has finished); (False, 0) when it does not answer."""
        if self.proc is None or self.proc.poll() is not None:
            return False, 0.0
        try:
            samples = await self.metrics()
        except (aiohttp.ClientError, TimeoutError, AssertionError):
            return False, 0.0
        leads = samples.get(f"box_docgen_leader{{account={ACCOUNT}}}") == 1
        polls = sum(v for k, v in samples.items() if k.startswith("box_docgen_polls_total{"))
        return leads, polls

    def log_lines(self, since: float = 0.0) -> list[dict[str, Any]]:
        """This replica's JSON log lines stamped at or after `since` (unix seconds)."""
        lines = []
        for raw in self.logs().splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            stamp = line.get("timestamp")
            if isinstance(stamp, str) and _unix(stamp) >= since:
                lines.append(line)
        return lines


def _unix(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Cluster:
    def __init__(self, sim: RunningSimulator, control: SimControl, receiver: WebhookReceiver,
                 replicas: list[Replica]) -> None:
        self.sim = sim
        self.control = control
        self.receiver = receiver
        self.replicas = replicas

    async def start(self) -> None:
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            await r.wait_ready()  # a standby is ready too

    async def polling_leader(self, timeout_s: float, exclude: Replica | None = None) -> Replica:
        """The replica that leads the account and has finished a poll since it started."""
        found: list[Replica] = []

        async def one_polls() -> bool:
            for r in self.replicas:
                if r is exclude:
                    continue
                leads, polls = await r.role()
                if leads and polls > 0:
                    found.append(r)
                    return True
            return False

        await wait_until(one_polls, timeout_s, "a replica leading and polling", interval_s=0.2)
        return found[0]

    async def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if (await r.role())[0]]

    async def all_delivered(self, batch_ids: set[str], timeout_s: float) -> None:
        last: list[str] = []

        async def done() -> bool:
            nonlocal last
            last = check_delivered(self.receiver.events(), await self.control.jobs(), batch_ids)
            return not last

        try:
            await wait_until(done, timeout_s, "every change delivered", interval_s=0.5)
        except AssertionError:
            tails = "\n".join(f"--- {r.name} ---\n{r.logs()[-3000:]}" for r in self.replicas)
            raise AssertionError(f"{last[:10]}\n{tails}") from None

    def repeats(self) -> Counter[str]:
        """Deliveries of one event id beyond the first, by id."""
        counts = Counter(d.event_id for d in self.receiver.deliveries)
        return Counter({i: n - 1 for i, n in counts.items() if n > 1})


async def cluster_on(
    tmp_path: Path, state_url: str, n: int, max_duration_s: float
) -> AsyncIterator[Cluster]:
    receiver = await WebhookReceiver().start()
    sim = await start_simulator(sim_config(max_duration_s))
    session = aiohttp.ClientSession()
    replicas = [Replica(tmp_path / f"r{i}", box_url=sim.url, hook_url=receiver.url,
                        state_url=state_url) for i in range(n)]
    try:
        yield Cluster(sim, SimControl(sim.url, session), receiver, replicas)
    finally:
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGCONT)  # a paused one must be able to die
            r.ensure_stopped()
        await session.close()
        await sim.close()
        await receiver.close()


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, pg_backend: PostgresBackend
) -> AsyncIterator[Cluster]:
    """Two replicas; jobs move for as long as the test's `moving_s` mark says."""
    async for c in cluster_on(tmp_path, pg_backend.url, 2, moving_s(request)):
        yield c


def moving_s(request: pytest.FixtureRequest) -> float:
    mark = request.node.get_closest_marker("moving_s")
    return float(mark.args[0]) if mark else 60.0


@pytest.fixture
async def proxied_cluster(
    tmp_path: Path, pg_backend: PostgresBackend, pg_proxy: TcpProxy
) -> AsyncIterator[Cluster]:
    """Both replicas reach PostgreSQL only through `pg_proxy`, which the test cuts."""
    async for c in cluster_on(tmp_path, pg_backend.url_through(pg_proxy.port), 2, 60.0):
        yield c


async def scenario(c: Cluster) -> set[str]:
    """A silent baseline of history, then 300 jobs in 10 batches that move for two minutes."""
    await c.control.call("POST", "/_sim/seed", {"count": 200})
    await c.start()
    await c.polling_leader(2 * LEASE_TTL_S)
    return await start_batches(c, 10, 30)  # type: ignore[arg-type]


async def stop_all(c: Cluster) -> None:
    for r in c.replicas:
        if r.proc is not None and r.proc.poll() is None:
            assert await r.stop(signal.SIGTERM) == 0


@pytest.mark.moving_s(120)  # five failovers of up to 30 s each, with work between
async def test_sigkill_of_the_leader_five_times_loses_nothing_and_mints_no_second_id(
    cluster: Cluster,
) -> None:
    c = cluster
    batch_ids = await scenario(c)
    rng = random.Random(20261207)
    failovers_s = []
    for _ in range(KILLS):
        leader = await c.polling_leader(2 * LEASE_TTL_S)
        # A random moment of its work: mid-sweep, mid-delivery burst, between polls.
        await asyncio.sleep(rng.uniform(0.5, 6.0))
        killed_at = time.monotonic()
        leader.kill()
        leader.start()  # back as a standby: two replicas all along
        await c.polling_leader(2 * LEASE_TTL_S + 5)
        failovers_s.append(time.monotonic() - killed_at)
    assert max(failovers_s) < 2 * LEASE_TTL_S, failovers_s
    print(f"failover s (SIGKILL to the new leader's first poll): {failovers_s}")
    await c.all_delivered(batch_ids, 240)
    assert c.receiver.bad_signatures == 0
    repeats = c.repeats()
    print(f"repeated deliveries: {sum(repeats.values())} of {len(repeats)} ids")
    assert all(n < KILLS for n in repeats.values()), repeats.most_common(5)
    assert sum(repeats.values()) < KILLS * 10, repeats.most_common(5)
    historic = {j for j, v in (await c.control.jobs()).items() if v["batch_id"] not in batch_ids}
    assert not historic & {e["job"]["id"] for e in c.receiver.events().values() if "job" in e}
    await stop_all(c)


@pytest.mark.moving_s(75)  # a pause of 45 s, and work after it
async def test_a_leader_paused_past_its_lease_commits_and_marks_nothing_when_it_wakes(
    cluster: Cluster,
) -> None:
    c = cluster
    batch_ids = await scenario(c)
    paused = await c.polling_leader(2 * LEASE_TTL_S)
    assert paused.proc is not None
    paused.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    standby = await c.polling_leader(2 * LEASE_TTL_S + 5, exclude=paused)
    await asyncio.sleep(max(0.0, stopped_at + 3 * LEASE_TTL_S - time.monotonic()))
    woke_at = time.time()
    paused.proc.send_signal(signal.SIGCONT)

    async def stepped_down() -> bool:
        leads, _ = await paused.role()
        return not leads and any(
            line["event"] == "lease_lost" for line in paused.log_lines(woke_at))

    await wait_until(stepped_down, 15, "the paused leader to step down")
    await c.all_delivered(batch_ids, 240)
    after = paused.log_lines(woke_at)
    assert not [x for x in after if x["event"] in ("events_committed", "events_delivered")]
    [lost] = [x for x in after if x["event"] == "lease_lost"]
    assert lost["reason"] in ("fenced", "expired", "lost") and lost["role"] == "standby"
    assert (await standby.role())[0] and [r.name for r in await c.leaders()] == [standby.name]
    assert all(n < 2 for n in c.repeats().values()), c.repeats().most_common(5)
    await stop_all(c)


async def test_postgresql_away_for_20_seconds_crashes_no_replica_and_loses_nothing(
    proxied_cluster: Cluster, pg_proxy: TcpProxy
) -> None:
    c = proxied_cluster
    batch_ids = await scenario(c)
    await c.receiver.wait_for(lambda r: len(r.ids()) >= 50, 60)
    await pg_proxy.cut()
    cut_until = time.monotonic() + 20
    while time.monotonic() < cut_until:  # the outage: jobs go on moving at Box
        for r in c.replicas:
            assert r.proc is not None and r.proc.poll() is None, r.logs()[-3000:]
            status, body = await r.get("/healthz")
            assert status == 200, body
        await asyncio.sleep(0.5)
    await pg_proxy.restore()
    await c.polling_leader(2 * LEASE_TTL_S + 10)
    await c.all_delivered(batch_ids, 240)
    assert all(r.proc is not None and r.proc.poll() is None for r in c.replicas)
    assert len(await c.leaders()) == 1
    await stop_all(c)


async def test_a_second_replica_on_a_sqlite_file_exits_2_and_the_first_runs_on(
    tmp_path: Path,
) -> None:
    async for c in cluster_on(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", 2, 10.0):
        first, second = c.replicas
        first.start()
        await first.wait_ready()
        second.start()
        assert second.proc is not None
        code = await asyncio.to_thread(second.proc.wait, 30)
        assert code == 2, second.logs()
        out = second.logs().strip().splitlines()
        assert len(out) == 1 and "another docgen-monitor" in out[0] and "SQLite" in out[0]
        assert f"pid {first.proc.pid}" in out[0]  # type: ignore[union-attr]
        status, _ = await first.get("/readyz")
        assert status == 200
        assert await first.stop(signal.SIGTERM) == 0


BETA_TOKEN, BETA_USER = "chaos-beta-token", "30000077"


async def test_two_accounts_on_three_replicas_have_one_leader_each_on_different_replicas(
    tmp_path: Path, pg_backend: PostgresBackend
) -> None:
    """ceil(2/3) = 1 lease per replica: the accounts go to two different replicas, the third
    stands by; at every sampled moment each account has exactly one leader."""
    receiver = await WebhookReceiver().start()
    sim = await start_simulator(SimulatorConfig(
        seed=12, developer_tokens=[SecretStr(TOKEN)],
        users=[UserConfig(id=BETA_USER, enterprise_id="beta-enterprise",
                          developer_tokens=[SecretStr(BETA_TOKEN)])],
    ))
    replicas = [Replica(tmp_path / f"r{i}", box_url=sim.url, hook_url=receiver.url,
                        state_url=pg_backend.url) for i in range(3)]
    try:
        for r in replicas:
            data = yaml.safe_load(r.config_path.read_text())
            box = data.pop("box")
            data["accounts"] = [
                {"name": "alpha", "box": box},
                {"name": "beta", "box": {**box, "auth": {"method": "developer_token",
                                                         "token": BETA_TOKEN}}},
            ]
            r.config_path.write_text(yaml.safe_dump(data))
            r.start()
        for r in replicas:
            await r.wait_ready()

        async def leaders() -> dict[str, list[str]]:
            found: dict[str, list[str]] = {"alpha": [], "beta": []}
            for r in replicas:
                samples = await r.metrics()
                for account, names in found.items():
                    if samples.get(f"box_docgen_leader{{account={account}}}") == 1:
                        names.append(r.name)
            return found

        async def spread() -> bool:
            found = await leaders()
            return all(len(n) == 1 for n in found.values()) and found["alpha"] != found["beta"]

        # A replica that started alone may lead both until the others register: it gives
        # one back within a round or two.
        await wait_until(spread, 4 * LEASE_TTL_S, "the accounts spread over two replicas", 0.5)
        for _ in range(20):  # 10 s of samples
            found = await leaders()
            assert all(len(names) == 1 for names in found.values()), found
            assert found["alpha"] != found["beta"], found
            await asyncio.sleep(0.5)
        for r in replicas:
            assert await r.stop(signal.SIGTERM) == 0
    finally:
        for r in replicas:
            r.ensure_stopped()
        await sim.close()
        await receiver.close()
