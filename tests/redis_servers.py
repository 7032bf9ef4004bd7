"""Real Redis servers for tests and benchmarks: a throwaway redis-server on a free loopback port, and a
3-shard Redis Cluster, each in a tmp dir; the fixtures `server` and `cluster` skip when redis-server is
not installed. A server that does not come up raises RuntimeError."""

import shutil
import socket
import subprocess
import time

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A throwaway redis-server on a free loopback port in a tmp dir; ``persist``: an fsync-always
    append-only file, so a server killed and `restart`-ed comes back with every row."""

    def __init__(self, tmp_path, *extra, persist=False):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
        self.argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability,
                     "--dir", str(tmp_path), "--enable-debug-command", "local", *extra]
        self.restart()

    def restart(self):
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(250):
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.02)
        else:
            self.kill()
            raise RuntimeError(f"redis-server did not answer on {self.url}")
        client.close()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def need_redis():
    if not shutil.which(REDIS_SERVER):
        pytest.skip(f"no redis-server at {REDIS_SERVER}; install the Debian package redis-server to run these tests")


@pytest.fixture
def server(tmp_path):
    need_redis()
    srv = Server(tmp_path)
    yield srv
    srv.kill()


@pytest.fixture
def persistent_server(tmp_path):
    """A server that keeps its rows across a kill and `restart` (fsync-always AOF)."""
    need_redis()
    srv = Server(tmp_path, persist=True)
    yield srv
    srv.kill()


class Cluster:
    """A 3-shard Redis Cluster (no replicas) on free loopback ports, made with redis-cli --cluster create."""

    def __init__(self, tmp_path):
        self.nodes = []
        for i in range(3):
            (tmp_path / f"node{i}").mkdir()
            self.nodes.append(Server(tmp_path / f"node{i}", "--cluster-enabled", "yes", "--cluster-config-file",
                                     "nodes.conf", "--cluster-port", str(free_port())))  # not port + 10000: may pass 65535
        subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True)
        self.url = self.nodes[0].url
        for _ in range(250):
            if all(b"cluster_state:ok" in redis.Redis(port=n.port).execute_command("CLUSTER", "INFO")
                   for n in self.nodes):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def kill(self):
        for node in self.nodes:
            node.kill()


@pytest.fixture
def cluster(tmp_path):
    need_redis()
    made = Cluster(tmp_path)
    yield made
    made.kill()
