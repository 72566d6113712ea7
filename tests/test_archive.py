"""The PostgreSQL archive (SPEC section 12) against a real PostgreSQL and real daemons: every node's
records exactly once, through a shipper killed by -9 and a connection cut by the server; a wrong URL
is one line in the daemon's log and costs no record; ``archive check``, search and thread across nodes.
Each test gets its own database (``persist_test_<random>``), dropped at teardown, so runs can overlap."""

from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import pytest
from libdir import run_cli
from pgdb import archived, ship_until
from pgdb import admin as _admin
from procs import eventually, heavy

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def nodes(start_daemon, publish, workdir, pg_url):
    """``nodes(*names)``: one daemon per name on the shared broker, each recording only its topic prefix
    ``<name>/`` into its own log dir and shipping to ``pg_url``; and a publisher all of them hear."""

    def make(*names, url=None, extra_env=None):
        daemons = {}
        pub = publish()
        for name in names:
            env = {"PERSIST_ARCHIVE_URL": url or pg_url, "PERSIST_ARCHIVE_NODE": name,
                   "PERSIST_SUBSCRIBE": f"{name}/,warmup", **(extra_env or {})}
            daemons[name] = start_daemon(log_dir=workdir / name, env=env)
            pub.join(daemons[name])
        return daemons, pub

    return make


def send(pub, node: str, i: int, thread: str = "t-shared", text: str = "hello") -> None:
    pub.send(f"{node}/chat".encode(), orjson.dumps({"sender": f"agent-{node}", "thread_id": thread,
                                                     "text": f"{text} {node} number {i}"}))


def settle(pub, daemons) -> None:
    """Send one last message to each node and wait until it is recorded: everything before it is too."""
    for name, d in daemons.items():
        pub.send(f"{name}/end".encode(), b'{"text": "the end"}')
    for name, d in daemons.items():
        assert eventually(lambda d=d, name=name: any(e.rec["topic"] == f"{name}/end" for e in d.records()),
                          timeout=20), name


def caught_up(url: str, daemons) -> bool:
    try:
        have = archived(url)
    except psycopg.Error:
        return False
    return all(have.get(n, (0, 0))[0] == len(d.records()) for n, d in daemons.items())


def shipper_pid(daemon) -> int | None:
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except (FileNotFoundError, PermissionError, ProcessLookupError, NotADirectoryError):
            continue
        if b"persist.daemon.archive.shipper" in cmd and str(daemon.log_dir).encode() in cmd:
            return int(pid)
    return None


def assert_exactly_once(url, daemons) -> None:
    assert eventually(lambda: caught_up(url, daemons), timeout=60), (archived(url), {
        n: len(d.records()) for n, d in daemons.items()})
    for name, (rows, keys) in archived(url).items():
        assert rows == keys == len(daemons[name].records()), name
        with psycopg.connect(url) as conn:
            seqs = [s for (s,) in conn.execute("SELECT seq FROM persist_records WHERE node = %s ORDER BY seq",
                                                (name,))]
        assert seqs == [e.seq for e in daemons[name].records()], name


def test_three_nodes_ship_exactly_once_and_answer_across_nodes(nodes, pg_url):
    daemons, pub = nodes("alpha", "beta", "gamma")
    for i in range(30):
        for name in daemons:
            send(pub, name, i, text="zebra" if i == 7 else "hello")
    settle(pub, daemons)
    assert_exactly_once(pg_url, daemons)

    for name, d in daemons.items():
        r = run_cli("archive", "check", "--log-dir", str(d.log_dir), "--archive", pg_url, "--node", name)
        assert r.returncode == 0, (r.stdout + r.stderr)
        assert "byte for byte" in (r.stdout + r.stderr)

    r = run_cli("--archive", pg_url, "search", "zebra")
    assert r.returncode == 0, (r.stdout + r.stderr)
    assert sorted(line.split()[0] for line in r.stdout.splitlines()) == ["alpha", "beta", "gamma"]
    r = run_cli("--archive", pg_url, "search", "zebra", "--node", "beta", "--sender", "agent-beta", "--topic", "be")
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["beta"], r.stdout + r.stderr
    r = run_cli("--archive", pg_url, "search", 'zebra "unclosed -or OR (')  # no query is a syntax error
    assert r.returncode in (0, 1), (r.stdout + r.stderr)
    r = run_cli("--archive", pg_url, "--json", "thread", "t-shared")
    assert r.returncode == 0, (r.stdout + r.stderr)
    turns = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert len(turns) == 90 and {t["node"] for t in turns} == {"alpha", "beta", "gamma"}
    times = [t["record"]["received_at"] for t in turns]
    assert times == sorted(times)  # recorded order across nodes

    with psycopg.connect(pg_url) as conn:  # the schema is versioned
        assert conn.execute("SELECT value FROM persist_meta WHERE key = 'version'").fetchone() == ("2",)


@heavy
def test_shipper_killed_and_connection_cut_under_load_still_exactly_once(nodes, pg_url):
    daemons, pub = nodes("one", "two")
    stop = threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            for name in daemons:
                send(pub, name, i)
            i += 1
            time.sleep(0.0005)

    t = threading.Thread(target=load)
    t.start()
    try:
        for _ in range(3):
            time.sleep(1.0)
            pid = eventually(lambda: shipper_pid(daemons["one"]), timeout=10)
            assert pid, "no shipper for node one"
            os.kill(pid, signal.SIGKILL)  # mid-batch: whatever it had not committed is rolled back
            time.sleep(0.5)
            with psycopg.connect(pg_url, autocommit=True) as conn:  # the server cuts node two's shipper off
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND application_name = 'persist'")
    finally:
        stop.set()
        t.join()
    settle(pub, daemons)
    assert_exactly_once(pg_url, daemons)
    for name, d in daemons.items():
        r = run_cli("archive", "check", "--log-dir", str(d.log_dir), "--archive", pg_url, "--node", name)
        assert r.returncode == 0, (r.stdout + r.stderr)


def test_wrong_url_is_one_line_in_the_daemons_log_and_recording_goes_on(nodes, pg_url):
    bad = pg_url + "_no_such_database"
    daemons, pub = nodes("lonely", url=bad)
    d = daemons["lonely"]
    for i in range(20):
        send(pub, "lonely", i)
    d.wait_records(20)
    time.sleep(4)  # several retries
    lines = [line for line in d.errors().splitlines() if "archive_unavailable" in line]
    assert len(lines) == 1, d.errors()
    assert "_no_such_database" in lines[0] and "does not exist" in lines[0]
    r = run_cli("archive", "check", "--log-dir", str(d.log_dir), "--archive", bad)
    assert r.returncode != 0 and "does not exist" in (r.stdout + r.stderr)

    name = bad.rsplit("/", 1)[1]  # the archive comes (back): the shipper catches up, exactly once
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        assert_exactly_once(bad, daemons)
        assert "archive_connected" in d.errors()
    finally:
        with _admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_server_that_stops_answering_is_cut_off_and_caught_up_with(nodes, pg_url):
    """A hung archive (here: its table locked, so the shipper's COPY waits for ever, as on a dead network or a
    stuck disk) costs one line after ``[archive] timeout_s``; recording goes on; once it answers, catch-up."""
    daemons, pub = nodes("stuck", extra_env={"PERSIST_ARCHIVE_TIMEOUT_S": "1.5"})
    d = daemons["stuck"]
    for i in range(20):
        send(pub, "stuck", i)
    settle(pub, daemons)
    assert_exactly_once(pg_url, daemons)
    blocker = psycopg.connect(pg_url)
    try:
        blocker.execute("LOCK TABLE persist_records IN ACCESS EXCLUSIVE MODE")  # held until the rollback
        before = len(d.user_records())
        for i in range(20, 220):
            send(pub, "stuck", i)
        d.wait_records(before + 200)  # recording is not held up
        assert eventually(lambda: "no answer from the archive in 1.5 s" in d.errors(), timeout=20), d.errors()
        time.sleep(4)  # several more tries, each cut off
        lines = [line for line in d.errors().splitlines() if "archive_unavailable" in line]
        assert len(lines) == 1, lines  # one line per distinct problem, not one per try
    finally:
        blocker.rollback()
        blocker.close()
    settle(pub, daemons)
    assert_exactly_once(pg_url, daemons)
    r = run_cli("archive", "check", "--log-dir", str(d.log_dir), "--archive", pg_url, "--node", "stuck")
    assert r.returncode == 0, r.stdout + r.stderr


def test_daemon_killed_under_load_then_restarted_ships_exactly_once(nodes, pg_url, start_daemon, workdir):
    daemons, pub = nodes("phoenix")
    for i in range(200):
        send(pub, "phoenix", i)
        if i == 100:
            daemons["phoenix"].kill9()  # the shipper dies with it, mid-batch or not
    env = {"PERSIST_ARCHIVE_URL": pg_url, "PERSIST_ARCHIVE_NODE": "phoenix", "PERSIST_SUBSCRIBE": "phoenix/,warmup"}
    daemons["phoenix"] = start_daemon(log_dir=workdir / "phoenix", env=env)
    pub.join(daemons["phoenix"])
    for i in range(200, 250):
        send(pub, "phoenix", i)
    settle(pub, daemons)
    assert_exactly_once(pg_url, daemons)
    r = run_cli("archive", "check", "--log-dir", str(workdir / "phoenix"), "--archive", pg_url, "--node", "phoenix")
    assert r.returncode == 0, r.stdout + r.stderr


def test_password_never_logged(nodes, pg_url):
    url = pg_url.replace("postgres@", "postgres:s3cret-pw@").replace("5432", "1")  # nothing listens on port 1
    daemons, _ = nodes("secretive", url=url)
    d = daemons["secretive"]
    assert eventually(lambda: "archive_unavailable" in d.errors(), timeout=10), d.errors()
    assert "s3cret-pw" not in d.errors()
    pid = shipper_pid(d)
    assert pid
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"s3cret-pw" not in f.read()


def test_a_restore_in_place_forks_the_key_and_nothing_collides(workdir, pg_url):
    from libdir import Built
    from persist.daemon.log import checkpoints, reader, restore
    from persist.daemon.log.record import Message, encode
    from persist.daemon.log.store import SegmentWriter

    b = Built(workdir / "forked")
    for i in range(5):
        b.send(b"chat", orjson.dumps({"sender": "a", "text": f"before {i}", "odd": "nul \u0000 here"}))
    b.checkpoint(label="A")
    for i in range(5):
        b.send(b"chat", orjson.dumps({"sender": "a", "text": f"abandoned {i}"}))
    b.close()
    ship_until(b.root, pg_url, "n1", 10)

    restore.restore_in_place(b.log, checkpoints.find(b.log, "A"))  # seq 6 is now the $persist/restore record
    writer = SegmentWriter(b.log, "off")
    writer.open(reader.first_record(b.log.active).seq)
    for seq in range(7, 10):
        msg = Message.from_frames([b"chat", orjson.dumps({"sender": "a", "text": f"after {seq}"})], time.time_ns())
        writer.append(encode(msg, seq, {}))
    writer.close()
    err = ship_until(b.root, pg_url, "n1", 10 + 4)  # the restore record and 3 more, under a new epoch
    assert "archive_rewind" in err

    with psycopg.connect(pg_url) as conn:
        epochs = dict(conn.execute("SELECT epoch, count(*) FROM persist_records GROUP BY epoch").fetchall())
        assert conn.execute("SELECT count(*) FROM persist_records WHERE persist_jsonb(line) IS NULL").fetchone() == (0,)
    assert epochs[""] == 10 and len(epochs) == 2 and sorted(epochs.values()) == [4, 10]
    r = run_cli("archive", "check", "--log-dir", str(b.root), "--archive", pg_url, "--node", "n1")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("--archive", pg_url, "search", "abandoned")  # what the restore set aside stays searchable
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 5

    with psycopg.connect(pg_url) as conn:  # the shipper stands in the fork's epoch, so what comes next lands there
        (standing,) = conn.execute("SELECT epoch FROM persist_position WHERE node = 'n1'").fetchone()
    assert standing.startswith("6@"), standing
    writer = SegmentWriter(b.log, "off")
    writer.open(reader.first_record(b.log.active).seq)
    for seq in range(10, 13):
        msg = Message.from_frames([b"chat", orjson.dumps({"sender": "a", "text": f"later {seq}"})], time.time_ns())
        writer.append(encode(msg, seq, {}))
    writer.close()
    ship_until(b.root, pg_url, "n1", 14 + 3)
    with psycopg.connect(pg_url) as conn:
        assert dict(conn.execute("SELECT epoch, count(*) FROM persist_records GROUP BY epoch").fetchall()) == {
            "": 10, standing: 7}
    r = run_cli("archive", "check", "--log-dir", str(b.root), "--archive", pg_url, "--node", "n1")
    assert r.returncode == 0, r.stdout + r.stderr


def test_two_logs_given_one_node_name_are_refused_not_mixed(workdir, pg_url):
    import subprocess
    import sys

    from libdir import Built
    logs = []
    for name in ("first", "second"):
        b = Built(workdir / name)
        for i in range(5):
            b.send(b"chat", orjson.dumps({"sender": name, "text": f"{name} {i}"}))
        logs.append(b.close())
    ship_until(logs[0].root, pg_url, "same", 5)
    proc = subprocess.Popen([sys.executable, "-m", "persist.daemon.archive.shipper", "--log-dir", str(logs[1].root),
                             "--node", "same"], env={**os.environ, "PERSIST_ARCHIVE_URL": pg_url},
                            stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.terminate()
    err = proc.communicate(timeout=10)[1]
    assert "is another log" in err and err.count("archive_unavailable") == 1, err
    assert archived(pg_url) == {"same": (5, 5)}
    with psycopg.connect(pg_url) as conn:
        assert {s for (s,) in conn.execute("SELECT sender FROM persist_records")} == {"first"}


def test_an_empty_archive_is_one_line(pg_url):
    r = run_cli("--archive", pg_url, "search", "anything")
    assert r.returncode == 1 and "no persist tables there yet" in r.stderr and "Traceback" not in r.stderr


def test_config_archive_section_names_its_key():
    from persist.daemon import config
    cfg = config.load(None, {"archive": {"url": "postgresql://db/x", "node": "n9"}})
    assert (cfg.archive.url, cfg.archive.node_name) == ("postgresql://db/x", "n9")
    assert config.load(None, {}).archive.node_name  # the host name
    with pytest.raises(config.ConfigError) as exc:
        config.load(None, {"archive": {"url": "mysql://root:hunter2@db/x"}})
    assert "archive.url" in str(exc.value) and "hunter2" not in str(exc.value)


def test_hostile_records_land_whole(workdir, pg_url):
    from libdir import Built
    b = Built(workdir / "hostile")
    b.send(b"bin", bytes(range(256)) * 10)  # not UTF-8: kept as base64 in the line
    b.send(b"big", orjson.dumps({"text": "x" * 3_000_000 + " needle " + "word " * 100_000}))
    b.send(b"deep", b"[" * 5000 + b"]" * 5000)
    b.send(b"nul", b'{"text": "a\\u0000b", "sender": "n\\u0000ul", "thread_id": "\\ud800"}')
    b.close()
    n = len(b.records())
    ship_until(b.root, pg_url, "h", n)
    r = run_cli("archive", "check", "--log-dir", str(b.root), "--archive", pg_url, "--node", "h")
    assert r.returncode == 0, r.stdout + r.stderr
    with psycopg.connect(pg_url) as conn:
        lines = [line for (line,) in conn.execute("SELECT line FROM persist_records ORDER BY seq")]
    assert [(x + "\n").encode() for x in lines] == [e.line for e in b.records()]


def test_status_shows_the_archive_and_retention_waits_for_it(nodes, pg_url):
    later = pg_url + "_later"
    daemons, pub = nodes("waiter", url=later, extra_env={"PERSIST_STORAGE_ROTATE_BYTES": "3000",
                                                         "PERSIST_STORAGE_RETENTION": "1KB"})
    d = daemons["waiter"]

    def burst(n: int) -> None:
        for i in range(n):
            send(pub, "waiter", i, text="x" * 100)
        time.sleep(1.2)  # the rotation check runs once a second

    for _ in range(3):
        burst(40)
    assert eventually(lambda: len(list(d.log.segments.glob("*.jsonl"))) >= 2, timeout=20), "rotations"
    a = eventually(lambda: (s := d.try_status().get("archive")) and s.get("last_error") and s, timeout=20)
    assert a and not a["connected"] and "does not exist" in a["last_error"] and a["records_behind"] > 0, a
    shown = run_cli("status", "--log-dir", str(d.log_dir))
    assert "archive" in shown.stdout and "NOT connected" in shown.stdout, shown.stdout
    assert not list(d.log.segments.glob("*.deleted")), "nothing the archive has not confirmed is deleted"

    name = later.rsplit("/", 1)[1]
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        assert eventually(lambda: caught_up(later, daemons), timeout=60)
        burst(40)  # a rotation, then retention: now it may delete what the archive holds
        assert eventually(lambda: list(d.log.segments.glob("*.deleted")), timeout=20), "retention went ahead"
        a = eventually(lambda: (s := d.try_status().get("archive")) and s["connected"] and s, timeout=20)
        assert a["last_error"] is None and a["shipped_seq"] > 0
    finally:
        with _admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_recent_threads_export_stats_and_info_answer_across_nodes(nodes, pg_url):
    daemons, pub = nodes("north", "south")
    for i in range(5):
        for name in daemons:
            send(pub, name, i, thread=f"t-{i % 2}")
    settle(pub, daemons)
    assert_exactly_once(pg_url, daemons)
    recent = run_cli("--archive", pg_url, "recent", "-n", "4", "--json")
    rows = [orjson.loads(x) for x in recent.stdout.splitlines()]
    assert recent.returncode == 0 and len(rows) == 4 and {r["node"] for r in rows} <= {"north", "south"}
    assert [r["record"]["received_at"] for r in rows] == sorted(r["record"]["received_at"] for r in rows)
    threads = [orjson.loads(x) for x in run_cli("--archive", pg_url, "threads", "--json").stdout.splitlines()]
    by_id = {t["thread_id"]: t for t in threads}
    assert by_id["t-0"]["turns"] == 6 and sorted(by_id["t-0"]["nodes"]) == ["north", "south"]
    export = run_cli("--archive", pg_url, "export", "--node", "south")
    exported = [orjson.loads(x) for x in export.stdout.splitlines()]
    assert [r["record"]["seq"] for r in exported] == [e.seq for e in daemons["south"].records()]
    for command in ("stats", "info"):
        data = orjson.loads(run_cli("--archive", pg_url, command, "--json").stdout)
        assert data["records"] == sum(len(d.records()) for d in daemons.values())
        assert set(data["nodes"]) == {"north", "south"}
