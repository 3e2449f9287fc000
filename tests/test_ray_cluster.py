"""``--executor ray`` on a real multi-node cluster on one machine (``ray start --head`` and ``ray start --address``,
every address given as 127.0.0.1, dashboard off, token authentication with a token of the test's own).

A node whose raylet is SIGKILLed mid-run loses only its in-flight batch (the run finishes by itself, the local
executor's pixels, every output recorded once); with every worker node gone the run stops after
``--worker-timeout`` naming the lost node, and a rerun resumes; a node that joins mid-run renders outputs (each
output's ``node``); a node whose view of the output folder differs is refused before anything renders (exit 2);
a wrong token is refused with how to pass it.

Each node runs in its own working directory, so the test finds (and in the end kills) exactly the processes of
its cluster: ``ray stop`` would stop every Ray on the machine. Ray on Linux advertises a multi-node cluster's
loopback address as the machine's own address; the nodes still only talk to each other on this machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import manifest_records, output_pngs, run_cli
from helpers import assert_same_as_local, local_reference, manifest_so_far, ray_recipe

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

RECIPE = ray_recipe("cluster", steps=2)
JOBS = 24
RAY = str(Path(sys.executable).with_name("ray"))
TOKEN = secrets.token_hex(16)  # this test's cluster token (never ~/.ray/auth_token)
# one torch thread everywhere (driver, workers, the local reference): same pixels, and two cores suffice;
# the GCS notices a dead raylet within a few seconds instead of about fifteen
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_AUTH_MODE": "token",
       "RAY_AUTH_TOKEN": TOKEN, "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
       "RAY_USAGE_STATS_ENABLED": "0"}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **ENV)
    for name in ("RAY_ADDRESS", "SDBATCH_RAY_WORKERS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A Ray cluster of nodes started by ``ray start``, each in its own folder under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="sdray-", dir="/tmp")  # short: Unix socket paths are limited

    def node_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def start(self, name: str, cpus: int = 1, head: bool = False) -> None:
        args = [RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--disable-usage-stats"]
        if head:
            args += ["--head", f"--port={self.port}", f"--ray-client-server-port={_free_port()}",
                     "--include-dashboard=false", f"--temp-dir={self.temp}"]
        else:
            args += [f"--address={self.address}"]
        proc = subprocess.run(args, cwd=self.node_dir(name), env=_env(), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: run in a node's folder, or naming its temp folder or port."""
        found = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                ours = self.temp in cmdline or f":{self.port}" in cmdline
                if not ours:
                    ours = Path(proc.cwd()).is_relative_to(self.root)
            except (psutil.Error, OSError):
                continue
            if ours and proc.pid != os.getpid():
                found[proc.pid] = proc
        return list(found.values())

    def raylet(self, name: str) -> psutil.Process:
        folder = self.node_dir(name)
        for proc in self.processes():
            try:
                if proc.name() == "raylet" and Path(proc.cwd()) == folder:
                    return proc
            except psutil.Error:
                continue
        raise AssertionError(f"no raylet of node {name}")

    def workers(self, name: str, busy: bool = False) -> list[psutil.Process]:
        """The JobWorker actors of node ``name`` (``busy``: those rendering a batch now)."""
        folder = self.node_dir(name)
        found = []
        for proc in self.processes():
            try:
                title = " ".join(proc.cmdline())
                if title.startswith("ray::JobWorker") and Path(proc.cwd()) == folder:
                    if not busy or ".__call__" in title:
                        found.append(proc)
            except psutil.Error:
                continue
        return found

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path):
    made = Cluster(tmp_path / "cluster")
    made.root.mkdir()
    try:
        yield made
    finally:
        made.stop()
        assert not made.processes(), "the cluster left processes behind"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cluster-recipe") / "cluster.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def local_run(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return local_reference(recipe, tmp_path_factory.mktemp("cluster-local") / "out", _env())


def _run(recipe: Path, out: Path, log: Path, cluster: Cluster, *args: str, cwd: Path | None = None,
         **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sdbatch", "run", str(recipe), "--out", str(out), "--executor", "ray", *args]
    with log.open("w") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd,
                                env=_env(RAY_ADDRESS=cluster.address, **env))


def _recorded(out: Path) -> int:
    return sum(r.get("kind") == "output" for r in manifest_so_far(out))


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log.read_text()


def _until(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.05)


def test_lost_node_loses_only_its_batch(recipe: Path, local_run: dict[str, Path], cluster: Cluster,
                                        tmp_path: Path) -> None:
    cluster.start("head", head=True)
    cluster.start("node1")
    out, log = tmp_path / "out", tmp_path / "run.log"
    cli = _run(recipe, out, log, cluster, "--workers", "2")
    def node1_rendered_and_busy() -> bool:  # both nodes have outputs recorded, and node1 renders another batch
        nodes = {r.get("node") for r in manifest_so_far(out) if r.get("kind") == "output"}
        return len(nodes) >= 2 and bool(cluster.workers("node1", busy=True))

    _until(node1_rendered_and_busy, cli, log, "node1 rendered a batch and took another")
    for worker in cluster.workers("node1"):  # held, so its batch is still in flight when the node dies,
        worker.suspend()                     # however fast the renders are
    os.kill(cluster.raylet("node1").pid, signal.SIGKILL)  # a preempted spot instance
    recorded_at_kill = _recorded(out)
    code, text = _wait(cli, log)
    assert code == 0, text
    assert recorded_at_kill < JOBS
    assert "lost" in text and "retrying" in text, text  # its in-flight batch went to the head's worker
    assert_same_as_local(out, local_run)
    nodes = Counter(r["node"] for r in manifest_records(out, "output"))
    assert len(nodes) == 2, nodes  # both nodes rendered, each output says which
    ends = [r for r in manifest_records(out, "run") if r.get("event") == "end"]
    assert ends[-1]["exit_code"] == 0 and ends[-1]["rendered"] == JOBS


def test_no_live_worker_stops_then_resumes(recipe: Path, local_run: dict[str, Path], cluster: Cluster,
                                           tmp_path: Path) -> None:
    cluster.start("head", cpus=0, head=True)  # the head renders nothing: node1 is the only worker node
    cluster.start("node1")
    out, log = tmp_path / "out", tmp_path / "run.log"
    cli = _run(recipe, out, log, cluster, "--worker-timeout", "5")
    _until(lambda: _recorded(out) >= 1, cli, log, "an output was recorded")
    for worker in cluster.workers("node1"):  # held: the run cannot finish before the node is gone
        worker.suspend()
    lost = cluster.raylet("node1")
    os.kill(lost.pid, signal.SIGKILL)
    started = time.monotonic()
    code, text = _wait(cli, log, timeout=120)
    assert code == 1, text
    assert time.monotonic() - started < 90, "the run must stop, not wait for a worker forever"
    error = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error) == 1, text
    assert "Ray node" in error[0] and "was lost" in error[0] and "--worker-timeout" in error[0], error
    assert "resume" in error[0], error
    ends = [r for r in manifest_records(out, "run") if r.get("event") == "end"]
    assert ends[-1]["exit_code"] == 1 and "was lost" in ends[-1]["error"]
    assert 0 < len(manifest_records(out, "output")) < JOBS
    # a node comes back: the same command finishes what is missing
    cluster.start("node2")
    code, text = _wait(_run(recipe, out, tmp_path / "resume.log", cluster, "--worker-timeout", "5"),
                       tmp_path / "resume.log")
    assert code == 0, text
    assert_same_as_local(out, local_run)


def test_node_joining_mid_run_gets_work(recipe: Path, cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("head", head=True)
    ray_recipe = tmp_path / "cluster.yaml"  # resources per worker from the recipe; the flag wins
    ray_recipe.write_text(RECIPE + "ray: {num_gpus: 0, num_cpus: 2}\n")
    out, log = tmp_path / "out", tmp_path / "run.log"
    cli = _run(ray_recipe, out, log, cluster, "--workers", "2", "--num-cpus", "1")
    _until(lambda: _recorded(out) >= 1 and cluster.workers("head"), cli, log, "the head rendered an output")
    # the head's worker is held (SIGSTOP) until the new node has rendered something: however fast the renders
    # are, the run is still going when the node joins
    held = cluster.workers("head")[0]
    held.suspend()
    try:
        cluster.start("node1")  # an autoscaler adds a node
        _until(lambda: len({r.get("node") for r in manifest_so_far(out) if r.get("kind") == "output"}) > 1, cli, log,
               "the new node rendered an output")
    finally:
        held.resume()
    code, text = _wait(cli, log)
    assert code == 0, text
    first = next(r for r in manifest_records(out, "run") if r.get("event") == "cluster")["ray"]
    assert first["num_gpus"] == 0 and first["num_cpus"] == 1 and first["workers"] == 2
    assert len(first["nodes"]) == 1  # at the start, the head only
    nodes = Counter(r["node"] for r in manifest_records(out, "output"))
    joined = [node for node in nodes if node != first["nodes"][0]["id"]]
    assert joined and nodes[joined[0]] >= 1, (nodes, text)  # the new node rendered outputs
    assert sum(nodes.values()) == JOBS


def test_node_that_does_not_see_the_output_folder_is_refused(recipe: Path, cluster: Cluster,
                                                            tmp_path: Path) -> None:
    """Each process resolves ``/proc/self/cwd`` to its own working directory: node1's workers see their own
    ``out`` folder at the driver's path (a local disk where a shared one was meant)."""
    cluster.start("head", head=True)
    cluster.start("node1")
    driver = cluster.node_dir("head")  # the driver runs on the head node, in the head's folder
    (cluster.node_dir("node1") / "out").mkdir()
    log = tmp_path / "run.log"
    code, text = _wait(_run(recipe, Path("/proc/self/cwd/out"), log, cluster, "--workers", "2", cwd=driver), log)
    assert code == 2, text
    error = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "does not see the output folder" in error[0], text
    assert "Traceback" not in text
    for folder in (driver / "out", cluster.node_dir("node1") / "out"):  # the probe files are removed
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".sdbatch-probe")], folder
    assert not output_pngs(driver / "out")
    # a driver without the cluster's token is refused, told how to pass it
    log = tmp_path / "token.log"
    code, text = _wait(_run(recipe, tmp_path / "out", log, cluster, RAY_AUTH_TOKEN=secrets.token_hex(16)), log)
    assert code == 2, text
    error = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "refused" in error[0] and "RAY_AUTH_TOKEN" in error[0], text


def test_bad_ray_options_in_the_recipe(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(RECIPE + "ray: {num_gpus: -1, cpus: 2}\n")
    proc = run_cli("validate", path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert any(line.startswith(f"{path}:7: ray.num_gpus:") for line in lines), proc.stderr
    assert any(line.startswith(f"{path}:7: ray.cpus:") for line in lines), proc.stderr
