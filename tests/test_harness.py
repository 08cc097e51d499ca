"""The test harness itself: a redis-server on loopback TCP, and its restart on the same port."""

from __future__ import annotations

import pytest
import redis

from tests.harness import RedisServer


def test_redis_server_is_unix_socket_only_by_default() -> None:
    server = RedisServer()
    try:
        assert server.port is None
        with pytest.raises(ValueError, match="Unix socket only"):
            _ = server.tcp_url
    finally:
        server.cleanup()


def test_redis_server_on_tcp_comes_back_on_the_same_port() -> None:
    server = RedisServer(tcp=True)
    try:
        server.start()
        host, port = server.tcp_address
        assert host == "127.0.0.1" and port > 0
        assert server.tcp_url == f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(server.tcp_url) as conn:
            assert conn.ping()
            conn.set("k", "v")
        server.kill()
        server.start()
        assert server.tcp_address == (host, port)
        with redis.Redis(host=host, port=port) as conn:
            assert conn.get("k") is None  # no persistence: a restart is empty
        with redis.Redis(unix_socket_path=str(server.socket_path)) as conn:
            assert conn.ping()
    finally:
        server.cleanup()
