"""Issue 12, "habits to meet", through the real CLI in-process (click's CliRunner over logs the library writes).

Global options before the command, ``--json`` everywhere and JSON errors, ``search`` exit 1 on no match,
local times with their zone and ``--utc``, one ``--since`` parser, ``recent``/``export`` filters, search
that takes ``client.py``, ``info`` without a scan, and ``stats --watch`` that reads only what was appended.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from libdir import Built, cli, run_cli
from persist.daemon import index
from persist.daemon.log import reader, times
from persist.daemon.log.record import encode, system_message
from procs import short_tmpdir

T0 = datetime(2026, 11, 24, 19, 22, 1, tzinfo=timezone.utc).timestamp()  # 2026-11-25 00:52:01 in Kolkata


def talk(root) -> Built:
    """Five records across two threads, three senders, kinds, topics, and a gap; a labelled checkpoint."""
    b = Built(root)
    sent = [
        (b"agent.chat", {"sender": "planner", "recipient": "coder", "thread_id": "fix-42",
                         "text": "please edit client.py now"}, "request"),
        (b"agent.chat", {"sender": "coder", "recipient": "planner", "thread_id": "fix-42",
                         "text": "fix-42 merged, retry with backoff"}, "response"),
        (b"agent.tool", {"sender": "coder", "thread_id": "plan-7", "text": "retry again later"}, "tool_call"),
    ]
    for i, (topic, payload, kind) in enumerate(sent):
        b.send(topic, orjson.dumps(payload), meta={"kind": kind}, at=T0 + 60 * i)
    b.seq += 1
    b.writer.append(encode(system_message("gap", {"reason": "not_running"}, int((T0 + 180) * 1e9)), b.seq, {}))
    b.send(b"agent.chat", b'{"sender":"reviewer","thread_id":"plan-7","text":"done"}', at=T0 + 240)
    b.checkpoint("manual", "first-look")
    b.close()
    index.update(b.log)
    return b


@pytest.fixture(scope="module")
def log():
    root = short_tmpdir()
    yield talk(root / "logs").log
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kolkata(monkeypatch):
    """Local time is UTC+05:30 (no daylight saving): local and UTC differ, even in the date."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def seqs(result) -> list[int]:
    assert result.returncode == 0, result.stderr
    return [orjson.loads(x)["seq"] for x in result.stdout.splitlines()]


# --- 1. global options, --version, a typo'd command ---------------------------------------------------------


def test_global_options_before_the_command_mean_the_same_as_after(log, tmp_path):
    after = cli(log.root, "recent", "--json")
    assert seqs(after) == [1, 2, 3, 4, 5]
    assert run_cli("--log-dir", log.root, "recent", "--json").stdout == after.stdout
    assert run_cli("--json", "--log-dir", log.root, "recent").stdout == after.stdout
    config = tmp_path / "persist.toml"
    config.write_text(f'[daemon]\nlog_dir = "{log.root}"\n')
    assert run_cli("--config", config, "--json", "recent").stdout == after.stdout
    nested = run_cli("--log-dir", log.root, "--json", "checkpoints", "list")  # a sub-command of a group too
    assert nested.returncode == 0 and orjson.loads(nested.stdout.splitlines()[0])["label"] == "first-look"
    assert run_cli("--log-dir", log.root, "recent", "--log-dir", "/nonexistent").returncode == 2, "after wins"


def test_a_typo_d_command_gets_the_closest_one(log):
    result = run_cli("--log-dir", log.root, "serch", "retry")
    assert result.returncode == 2 and "did you mean search?" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- 2. --json on every read command, JSON errors -------------------------------------------------------------


def test_read_commands_take_json(log, tmp_path):
    assert seqs(cli(log.root, "thread", "fix-42", "--json")) == [1, 2]
    assert orjson.loads(cli(log.root, "verify", "--json").stdout) == {"ok": True, "records": 5, "redacted": 0, "problems": []}
    assert seqs(cli(log.root, "export", "--json", "--no-system")) == [1, 2, 3, 5]
    assert seqs(cli(log.root, "replay", "--dry-run", "--json", "--thread", "plan-7")) == [3, 5]
    copy = tmp_path / "copy"
    shutil.copytree(log.root, copy)
    with open(copy / "current_session.jsonl", "ab") as f:
        f.write(b'{"v":1,"seq":6,')
    torn = cli(copy, "verify", "--json")
    assert torn.returncode == 1 and "torn" in orjson.loads(torn.stdout)["problems"][0]
    repaired = orjson.loads(cli(copy, "recover", "--json").stdout)
    assert repaired["repaired"]["torn_bytes"] == 15 and repaired["indexed"] == 0
    assert orjson.loads(cli(copy, "index", "rebuild", "--json").stdout)["indexed"] == 5


@pytest.mark.parametrize("args, code", [
    (["--json", "recent", "--log-dir", "/nonexistent"], 2),
    (["thread", "nope", "--json"], 2),
    (["thread", "nope", "--format", "json"], 2),
    (["--json", "--bogus", "recent"], 2),
    (["recent", "--json", "-n", "lots"], 2),
    (["--json", "replay", "--to", "nonsense"], 2),
])
def test_errors_with_json_are_one_json_object_on_stderr(log, args, code):
    result = run_cli(*args) if "--log-dir" in args else cli(log.root, *args)
    assert result.returncode == code and result.stdout == ""
    (line,) = result.stderr.splitlines()
    error = orjson.loads(line)
    assert error["exit_code"] == code and error["error"]


# --- 3. exit codes: search 1 on no match ----------------------------------------------------------------------


def test_search_exits_1_when_nothing_matches(log):
    assert cli(log.root, "search", "backoff").returncode == 0
    none = cli(log.root, "search", "xylophone")
    assert none.returncode == 1 and none.stdout == "" and "no match" in none.stderr
    quiet = cli(log.root, "search", "xylophone", "--json")
    assert quiet.returncode == 1 and quiet.stdout == "" and quiet.stderr == ""


# --- 4. times: local with their zone, --utc, one parser -------------------------------------------------------


def test_times_are_local_with_their_zone_and_utc_on_request(log, kolkata):
    local, utc = "2026-11-25 00:52:01.000 +05:30", "2026-11-24 19:22:01.000 UTC"
    assert local in cli(log.root, "recent").stdout
    assert utc in cli(log.root, "recent", "--utc").stdout
    assert utc in run_cli("--utc", "--log-dir", log.root, "recent").stdout
    assert local in cli(log.root, "search", "client.py").stdout
    assert "2026-11-25 00:54:01.000 +05:30" in cli(log.root, "threads").stdout  # plan-7's first turn
    assert f"planner → coder · {local}" in cli(log.root, "export", "--format", "markdown").stdout
    assert local in cli(log.root, "recent").stdout, "--utc lasted one run only"


def test_since_and_until_take_local_zoned_and_relative_times_alike(log, kolkata):
    assert seqs(cli(log.root, "recent", "--json", "--since", "2026-11-25 00:53")) == [2, 3, 4, 5]
    assert seqs(cli(log.root, "recent", "--json", "--until", "2026-11-25 00:53")) == [1]
    assert seqs(cli(log.root, "recent", "--json", "--since", "2026-11-24T19:25:00Z")) == [4, 5]
    assert seqs(cli(log.root, "recent", "--json", "--utc", "--since", "2026-11-24 19:25")) == [4, 5]
    assert seqs(cli(log.root, "export", "--json", "--since", "2026-11-25 00:53", "--until", "2026-11-25 00:54:30")) == [2, 3]
    hits = cli(log.root, "search", "retry", "--json", "--since", "2026-11-25T00:54:00+05:30")
    assert seqs(hits) == [3]


def test_today_and_yesterday_are_local_midnights(tmp_path, kolkata):
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    b = Built(tmp_path / "logs")
    b.send(b"t", b'{"text":"two days ago"}', at=(midnight - timedelta(days=2)).timestamp())
    b.send(b"t", b'{"text":"before midnight"}', at=(midnight - timedelta(minutes=1)).timestamp())
    b.send(b"t", b'{"text":"after midnight"}', at=(midnight + timedelta(minutes=1)).timestamp())
    b.close()
    assert seqs(cli(b.root, "recent", "--json", "--since", "today")) == [3]
    assert seqs(cli(b.root, "recent", "--json", "--since", "yesterday", "--until", "today")) == [2]
    assert seqs(cli(b.root, "export", "--json", "--since", "yesterday", "--until", "today")) == [2]


def test_relative_times(tmp_path):
    now = time.time()
    b = Built(tmp_path / "logs")
    for hours in (5, 3, 1):
        b.send(b"t", b'{"text":"%dh ago"}' % hours, at=now - hours * 3600)
    b.close()
    assert seqs(cli(b.root, "recent", "--json", "--since", "2h")) == [3]
    assert seqs(cli(b.root, "recent", "--json", "--since", "4 hours ago", "--until", "2h")) == [2]
    assert seqs(cli(b.root, "export", "--json", "--since", "240 minutes ago")) == [2, 3]


# --- 5. recent and export filters -----------------------------------------------------------------------------


def test_recent_filters_and_reverse(log):
    assert seqs(cli(log.root, "recent", "--json", "--thread", "fix-42")) == [1, 2]
    assert seqs(cli(log.root, "recent", "--json", "--kind", "tool_call")) == [3]
    assert seqs(cli(log.root, "recent", "--json", "--sender", "coder", "--topic", "agent.chat")) == [2]
    assert seqs(cli(log.root, "recent", "--json", "--reverse")) == [5, 4, 3, 2, 1]
    assert seqs(cli(log.root, "recent", "--json", "-r", "-n", "2", "--no-system")) == [5, 3]
    assert cli(log.root, "recent", "--reverse", "--follow").returncode == 2


def test_export_filters_match_recent(log):
    assert seqs(cli(log.root, "export", "--thread", "plan-7")) == [3, 5]
    assert seqs(cli(log.root, "export", "--kind", "response")) == [2]
    assert seqs(cli(log.root, "export", "--no-system")) == [1, 2, 3, 5]
    md = cli(log.root, "export", "--format", "markdown", "--thread", "fix-42").stdout
    assert "client.py" in md and "retry again" not in md


# --- 6. search takes what people type ----------------------------------------------------------------------------


@pytest.mark.parametrize("query, expected", [
    ("client.py", [1]),
    ("fix-42", [1, 2]),  # the thread id is in both payloads
    ("retry -backoff", [3]),
    ("sender:planner", [1]),
    ("kind:tool_call OR sender:reviewer", [3, 5]),
])
def test_search_takes_file_names_thread_ids_and_exclusions(log, query, expected):
    assert sorted(seqs(cli(log.root, "search", query, "--json"))) == expected


def test_search_help_documents_column_filters():
    text = run_cli("search", "--help").stdout
    assert "sender:planner" in text and "client.py" in text and "exit 1" in text


# --- 7. info ------------------------------------------------------------------------------------------------------


def test_info_from_the_index_and_the_manifests(log, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_scan(*a, **k):
        raise AssertionError("info read the whole log")

    monkeypatch.setattr(reader, "records", no_scan)
    monkeypatch.setattr(reader, "lines", no_scan)
    for _ in range(2):  # the second from the cached counts
        found = orjson.loads(cli(log.root, "info", "--json").stdout)
        assert found["records"] == 5 and (found["first_seq"], found["last_seq"]) == (1, 5)
        assert found["duration_s"] == pytest.approx(240, abs=0.01)
        assert found["topics"] == {"agent.chat": 3, "agent.tool": 1, "$persist/gap": 1}
        assert found["senders"] == {"coder": 2, "planner": 1, "reviewer": 1}
        assert found["gaps"] == {"count": 1, "by_reason": {"not_running": 1}}
        assert found["checkpoints"]["count"] == 1 and found["checkpoints"]["labelled"] == ["first-look"]
        assert len(found["segments"]) == 1 and found["log_bytes"] > 0 and found["index"]["behind"] == 0
    human = cli(log.root, "info").stdout
    assert "agent.chat" in human and "first-look" in human and "(4.0 min)" in human


def test_info_counts_stay_true_as_the_log_grows_and_without_an_index(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    b = talk(tmp_path / "logs")
    assert orjson.loads(cli(b.root, "info", "--json").stdout)["senders"]["coder"] == 2
    more = Built(b.root, start=T0 + 300)  # a new writer appending to the same log
    more.seq = 5
    more.send(b"agent.chat", b'{"sender":"coder","text":"one more"}')
    more.close()
    index.update(b.log)
    grown = orjson.loads(cli(b.root, "info", "--json").stdout)
    assert grown["records"] == 6 and grown["senders"]["coder"] == 3 and grown["topics"]["agent.chat"] == 4
    for p in index.index_dir(b.log).glob("index.sqlite*"):
        p.unlink()
    bare = cli(b.root, "info")
    assert bare.returncode == 0 and "index        none" in bare.stdout and "records      6" in bare.stdout
    assert orjson.loads(cli(b.root, "info", "--json").stdout)["index"] == {"present": False}
    assert orjson.loads(cli(b.root, "index", "rebuild", "--json").stdout)["indexed"] == 6
    assert orjson.loads(cli(b.root, "info", "--json").stdout)["senders"]["coder"] == 3


# --- 8. stats --watch reads only what was appended -------------------------------------------------------------


def test_stats_watch_reads_only_what_was_appended(tmp_path, monkeypatch):
    b = Built(tmp_path / "logs")
    for i in range(300):
        b.send(b"agent.chat", b'{"sender":"a","text":"turn %d"}' % i)
    parsed = []
    real_entry = reader.entry
    monkeypatch.setattr(reader, "entry", lambda line, path: parsed.append(1) or real_entry(line, path))
    rounds = []

    def tick(seconds):
        rounds.append(seconds)
        if len(rounds) == 3:
            raise KeyboardInterrupt
        for i in range(10):
            b.send(b"agent.chat", b'{"sender":"b","text":"more %d"}' % i)

    monkeypatch.setattr(time, "sleep", tick)
    result = cli(b.root, "stats", "--watch", "--json")
    b.close()
    assert [orjson.loads(x)["records"] for x in result.stdout.splitlines()] == [300, 310, 320]
    assert len(parsed) <= 320 + 3, f"{len(parsed)} records parsed for 320: the log was read again"


def test_recent_since_reads_from_the_tail_no_further_than_it_needs(tmp_path, monkeypatch):
    now = time.time()
    b = Built(tmp_path / "logs")
    for i in range(3):
        b.send(b"t", b'{"text":"last week %d"}' % i, at=now - 7 * 86400 + i)
    old = b.rotate()
    b.send(b"t", b'{"text":"just now"}', at=now - 60)
    b.close()
    real = reader.lines_backward
    taken = []

    def counted(path):
        for line in real(path):
            taken.append(path)
            yield line

    monkeypatch.setattr(reader, "lines_backward", counted)
    assert seqs(cli(b.root, "recent", "--json", "--since", "1h")) == [4]
    assert taken == [old], "one line of the week-old segment read, to see it is older: no more"
    assert seqs(cli(b.root, "recent", "--json", "--since", "8d", "-n", "2")) == [3, 4]
