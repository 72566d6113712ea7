"""Enrichment: built-ins from config, plugins from entry points, and no record ever lost to one."""

from __future__ import annotations

import time

from persist.daemon import enrich
from persist.daemon.config import EnrichSection
from persist.daemon.log.record import Message


def meta_for(payload: bytes, topic: bytes = b"agent.chat", **cfg) -> dict:
    return enrich.pipeline(EnrichSection(**cfg))(Message.from_frames([topic, payload], time.time_ns()))


def test_builtins_read_the_configured_fields():
    meta = meta_for(b'{"from":"gemini","to":"claude","continuation_id":"c-9","in_reply_to":"m-1",'
                    b'"type":"reply","ace_tier":2,"sender_seq":5}')
    assert meta == {"sender": "gemini", "recipient": "claude", "thread_id": "c-9", "parent_id": "m-1",
                    "kind": "response", "tier": 2, "sender_seq": 5, "tokens": meta["tokens"]}


def test_dotted_field_names_reach_inside():
    assert meta_for(b'{"envelope":{"who":"planner"}}', sender_fields=["envelope.who"])["sender"] == "planner"


def test_kind_from_topic_and_fallbacks():
    assert meta_for(b"{}", topic=b"agents.heartbeat")["kind"] == "heartbeat"
    assert meta_for(b'{"error":"boom"}')["kind"] == "error"
    assert meta_for(b'{"kind":"something-new"}')["kind"] == "other"
    assert meta_for(b"\xff")["kind"] == "other"


def test_tag_rules_keywords_and_regex():
    rules = [{"name": "security", "keywords": ["Password"]}, {"name": "cve", "regex": r"CVE-\d{4}-\d+"}]
    assert meta_for(b'{"text":"the PASSWORD is in CVE-2024-1234"}', tags=rules)["tags"] == ["security", "cve"]
    assert "tags" not in meta_for(b'{"text":"nothing here"}', tags=rules)


def test_disable_switches_off_a_builtin():
    assert "tokens" not in meta_for(b"{}", disable=["tokens"])


def test_an_enricher_that_raises_costs_only_a_note():
    def boom(msg):
        raise RuntimeError("kaput")

    pipe = enrich.Pipeline(enrich.builtin(EnrichSection()), [boom, lambda msg: {"after": True}])
    meta = pipe(Message.from_frames([b"t", b"{}"], time.time_ns()))
    assert meta["tokens"] == 1 and meta["after"] and "kaput" in meta["enrich_error"][0]
    assert enrich.Pipeline(boom, [])(Message.from_frames([b"t", b"{}"], time.time_ns())) == {
        "enrich_error": ["boom: RuntimeError('kaput')"]}


PLUGIN = '''
def shout(msg):
    return {"shout": msg.topic.upper()}

def boom(msg):
    raise ValueError("plugin exploded")

def unserialisable(msg):
    return {"obj": object()}

def not_a_dict(msg):
    return "just a string"
'''


def install_plugin(workdir, *names: str) -> dict:
    """A real distribution with ``persist.enrichers`` entry points; the env that finds it."""
    site = workdir / "site"
    dist = site / "persist_test_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: persist-test-plugin\nVersion: 1.0\n")
    lines = "".join(f"{n} = persist_test_plugin:{n}\n" for n in names)
    (dist / "entry_points.txt").write_text("[persist.enrichers]\n" + lines)
    (site / "persist_test_plugin.py").write_text(PLUGIN)
    return {"PYTHONPATH": str(site)}


def record_one(recorder, env) -> dict:
    daemon, p = recorder(None, env=env)
    p.send(b"agent.chat", b'{"sender":"x"}')
    (entry,) = daemon.wait_records(1)
    assert entry.frames() == [b"agent.chat", b'{"sender":"x"}'], "the record is kept, exactly"
    daemon.stop()
    return entry.rec["meta"]


def test_plugin_results_land_in_meta(workdir, recorder):
    meta = record_one(recorder, install_plugin(workdir, "shout", "boom"))
    assert meta["shout"] == "AGENT.CHAT" and meta["sender"] == "x"
    assert "plugin exploded" in meta["enrich_error"][0]


def test_a_plugin_returning_non_json_never_costs_a_record(workdir, recorder):
    meta = record_one(recorder, install_plugin(workdir, "unserialisable", "shout", "not_a_dict"))
    assert "unserialisable" in meta["enrich_error"][0] and "not_a_dict" in meta["enrich_error"][1]
    assert meta["sender"] == "x" and meta["kind"] == "other", "the built-ins' fields are kept"
    assert meta["shout"] == "AGENT.CHAT", "so are the other plugins'"
    assert "obj" not in meta
