#!/usr/bin/env bash
# Start PostgreSQL on 127.0.0.1:5432 if it is installed here and not running, so the store tests
# run on it too. Never fails: the PostgreSQL tests skip with a visible reason if it stays down.
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL for the store tests"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do pg_up && break; sleep 0.5; done
fi
pg_up || echo "PostgreSQL is not reachable on 127.0.0.1:5432; its tests will be skipped"
exit 0
