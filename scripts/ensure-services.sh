#!/usr/bin/env bash
# Start PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) if they are installed here and not
# running, so the store and shared-rate-limit tests run against them. Never fails: those tests
# skip with a visible reason if a service stays down.
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { for _ in $(seq 1 20); do up "$1" && return 0; sleep 0.5; done; return 1; }

if ! up 5432 && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL for the store tests"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
    wait_up 5432
fi
up 5432 || echo "PostgreSQL is not reachable on 127.0.0.1:5432; its tests will be skipped"

if ! up 6379 && command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis for the rate-limit tests"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 || true
    wait_up 6379
fi
up 6379 || echo "Redis is not reachable on 127.0.0.1:6379; its tests will be skipped"
exit 0
