"""Redaction (SPEC section 14): each built-in rule on real-looking secrets and near misses, JSON that stays
JSON, secrets in every field and frame, gitleaks rule files, and records that say what was replaced."""

from __future__ import annotations

import base64
import random
import string

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libdir import cli
from persist.daemon import config
from persist.daemon.config import Config, ConfigError
from persist.daemon.journal import Journal
from persist.daemon.log import reader
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import Message, decode_frames, frames_sha256, is_exact
from persist.daemon.redact import Redactor, from_config, load_rules
from persist.daemon.redact.rules import BUILTIN_IDS, RuleError, builtin, from_gitleaks, go_regex

_rnd = random.Random(1405)
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"


def rs(alphabet: str, n: int) -> str:
    return "".join(_rnd.choice(alphabet) for _ in range(n))


def b64url(obj) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).decode().rstrip("=")


PEM = ("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(rs(B64, 64) for _ in range(6)) + "\n" + rs(B64, 20)
       + "==\n-----END RSA PRIVATE KEY-----")
JWT = ".".join([b64url({"alg": "HS256", "typ": "JWT"}), b64url({"sub": "1234567890", "name": "Ada", "iat": 1516239022}),
                rs(ALNUM + "-_", 43)])

# rule id -> (sample, the secret part of it): what an agent pastes
SAMPLES = {
    "anthropic-api-key": "sk-ant-api03-" + rs(ALNUM + "-_", 93) + "AA",
    "openai-api-key": "sk-" + rs(ALNUM, 20) + "T3BlbkFJ" + rs(ALNUM, 20),
    "openai-project-key": "sk-proj-" + rs(ALNUM + "-_", 120),
    "openrouter-api-key": "sk-or-v1-" + rs("0123456789abcdef", 64),
    "llm-api-key": "sk-" + rs("0123456789abcdef", 32),
    "google-api-key": "AIza" + rs(ALNUM + "-_", 35),
    "google-oauth": "GOCSPX-" + rs(ALNUM + "-_", 28),
    "huggingface-token": "hf_" + rs(string.ascii_letters, 34),
    "groq-api-key": "gsk_" + rs(ALNUM, 52),
    "xai-api-key": "xai-" + rs(ALNUM, 80),
    "replicate-api-token": "r8_" + rs(ALNUM, 37),
    "perplexity-api-key": "pplx-" + rs(ALNUM, 48),
    "aws-access-key-id": "AKIA" + rs(string.ascii_uppercase + "234567", 16),
    "aws-secret-access-key": ("aws_secret_access_key = ", rs(B64, 40)),
    "gcp-service-account": ('"private_key_id": "', rs("0123456789abcdef", 40)),
    "azure-storage-key": ("DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=", rs(B64, 86) + "=="),
    "azure-sas-token": ("https://acme.blob.core.windows.net/c/b.txt?sv=2022-11-02&sr=b&sig=", rs(ALNUM, 40) + "%3D"),
    "azure-client-secret": "abc8Q~" + rs(ALNUM + "_~.-", 34),
    "github-token": "ghp_" + rs(ALNUM, 36),
    "gitlab-token": "glpat-" + rs(ALNUM + "-_", 20),
    "slack-token": "xoxb-123456789012-1234567890123-" + rs(ALNUM, 24),
    "slack-webhook": "https://hooks.slack.com/services/T00000000/B00000000/" + rs(ALNUM, 24),
    "stripe-key": "sk_live_" + rs(ALNUM, 24),
    "jwt": JWT,
    "private-key": PEM,
    "url-password": ("postgresql://app:", "s3cr3t-Pa55@word"[:12]),
}
NEAR_MISSES = [
    "sk-ant-api03-short",  # too short to be a key
    "sk-learn and sk-image are libraries",
    "AKIA" + "ABCDEFGHIJKLMNO",  # 15, not 16
    "akia" + "abcdefghijklmnop",  # lowercase: not an AWS key id
    "AIza" + "x" * 20,
    "ghp_" + "a" * 20,
    "xoxb-1234",
    "eyJhbGciOiJIUzI1NiJ9 alone, no payload or signature",
    "https://user@example.com/path and https://example.com:8443/x",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "01a2198b-bef1-7f55-89ad-cdfee288bf82",  # a uuid
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # a sha256
    "thread-0042 sender_seq 7 retry loop in client.py",
    "aws_secret_access_key = ${AWS_SECRET}",
]


def secret_of(sample) -> tuple[str, str]:
    """``(text as pasted, the secret in it)``."""
    if isinstance(sample, tuple):
        head, secret = sample
        tail = "@db.internal:5432/prod" if head.startswith("postgresql") else ('"' if head.endswith('"') else "")
        return head + secret + tail, secret
    return sample, sample


def redactor(**kw) -> Redactor:
    return Redactor(builtin(**kw), key=b"k" * 32)


def redact(frames: list[bytes], r: Redactor | None = None):
    return (r or redactor()).message(Message.from_frames(frames, 0))


@pytest.mark.parametrize("rule", list(SAMPLES))
def test_each_builtin_rule_finds_its_secret_in_json_and_text(rule):
    text, secret = secret_of(SAMPLES[rule])
    for payload in (orjson.dumps({"sender": "planner", "text": f"use this: {text} thanks"}),
                    f"use this: {text} thanks".encode()):
        found = redact([b"agent.chat", payload])
        assert found is not None, f"{rule} missed in {payload[:80]!r}"
        out = found.message.payload
        assert secret.encode() not in out and secret[:12].encode() not in out
        assert f"[REDACTED:{rule}]".encode() in out
        assert [n["rule"] for n in found.notes] == [rule] and found.notes[0]["at"] in ("payload", "payload.text")
        assert len(found.notes[0]["fp"]) == 12 and secret not in orjson.dumps(found.notes).decode()
    if payload.startswith(b"{"):
        orjson.loads(out)


def test_every_builtin_rule_has_a_sample():
    assert set(SAMPLES) | {"secret-assignment", "high-entropy"} == set(BUILTIN_IDS)


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_left_alone(text):
    assert redact([b"agent.chat", orjson.dumps({"text": text})]) is None
    assert redact([b"agent.chat", text.encode()]) is None


def test_secrets_in_every_field_frame_and_the_topic_json_stays_json():
    aws, gh, ant = SAMPLES["aws-access-key-id"], SAMPLES["github-token"], SAMPLES["anthropic-api-key"]
    _, aws_secret = secret_of(SAMPLES["aws-secret-access-key"])
    payload = orjson.dumps({"sender": "planner", "creds": {"aws_access_key_id": aws, "aws_secret_access_key": aws_secret},
                            "history": [{"role": "user", "content": f"token {gh}"}, 7, None, True],
                            "note": "nothing here", "escaped": "key:\u00e9 " + ant})
    extra_json, extra_bin = orjson.dumps({"k": gh}), b"\x00\xff\xfe" + ant.encode() + b"\x80\x81"
    found = redact([f"keys.{gh}".encode(), payload, extra_json, extra_bin])
    frames = found.message.frames
    value = orjson.loads(frames[1])
    assert value["creds"] == {"aws_access_key_id": "[REDACTED:aws-access-key-id]",
                              "aws_secret_access_key": "[REDACTED:aws-secret-access-key]"}
    assert value["history"] == [{"role": "user", "content": "token [REDACTED:github-token]"}, 7, None, True]
    assert value["note"] == "nothing here" and value["escaped"] == "key:\u00e9 [REDACTED:anthropic-api-key]"
    assert frames[0] == b"keys.[REDACTED:github-token]"
    assert orjson.loads(frames[2]) == {"k": "[REDACTED:github-token]"}
    assert frames[3] == b"\x00\xff\xfe[REDACTED:anthropic-api-key]\x80\x81", "binary stays binary, byte for byte"
    where = sorted((n["at"], n["rule"]) for n in found.notes)
    assert where == [("extra[0].k", "github-token"), ("extra[1]", "anthropic-api-key"),
                     ("payload.creds.aws_access_key_id", "aws-access-key-id"),
                     ("payload.creds.aws_secret_access_key", "aws-secret-access-key"),
                     ("payload.escaped", "anthropic-api-key"), ("payload.history[0].content", "github-token"),
                     ("topic", "github-token")]
    joined = b"".join(frames) + orjson.dumps(found.notes)
    for secret in (aws, aws_secret, gh, ant):
        assert secret.encode() not in joined


def test_the_same_secret_has_the_same_keyed_fingerprint_and_another_key_gives_another():
    gh = SAMPLES["github-token"]
    a = redact([b"t", gh.encode()]).notes[0]["fp"]
    b = redact([b"t", orjson.dumps({"x": gh})]).notes[0]["fp"]
    c = Redactor(builtin(), key=b"z" * 32).message(Message.from_frames([b"t", gh.encode()], 0)).notes[0]["fp"]
    assert a == b != c


def test_opt_in_rules_only_when_enabled():
    text = "DB_PASSWORD=hunter2hunter2 and " + rs(ALNUM + "+/", 44)
    assert redact([b"t", text.encode()]) is None
    found = redact([b"t", text.encode()], redactor(enable=("secret-assignment", "high-entropy")))
    assert {n["rule"] for n in found.notes} == {"secret-assignment", "high-entropy"}
    assert b"hunter2" not in found.message.payload


SECRETS = st.sampled_from([secret_of(s)[0] for s in SAMPLES.values()])
PLAIN = st.text(alphabet=string.ascii_letters + " .,", max_size=20)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | PLAIN | SECRETS,
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(PLAIN, inner, max_size=4),
                       max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(JSONISH, SECRETS)
def test_json_stays_json_and_no_secret_survives(value, secret):
    value = {"a": value, "b": f"x {secret} y"}
    found = redact([b"agent.chat", orjson.dumps(value)])
    out = orjson.loads(found.message.payload)  # still JSON
    dumped = found.message.payload.decode()
    for s in SAMPLES.values():
        text, bare = secret_of(s)
        if text in orjson.dumps(value).decode():
            assert bare not in dumped

    def plain_strings(v):  # what is not a secret is kept as it was
        if isinstance(v, dict):
            return {k: plain_strings(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain_strings(x) for x in v]
        return None if isinstance(v, str) and ("REDACTED" in v or any(secret_of(s)[0] in v for s in SAMPLES.values())) else v

    assert plain_strings(out) == plain_strings(value)


GITLEAKS = r"""
title = "team rules"

[allowlist]
description = "global"
regexes = ['''^TEST-''']

[[rules]]
id = "acme-token"
description = "ACME internal tokens"
regex = '''\b(acme_(?i)[a-z0-9]{24})(?:[\x60'"\s;]|$)'''
secretGroup = 1
entropy = 3.0
keywords = ["acme_"]
[[rules.allowlists]]
stopwords = ["example"]

[[rules]]
id = "build-password"
regex = '''(?i)build[_-]?pass(?:word)?\s*[:=]\s*["']?([^\s"']{6,})'''
keywords = ["build_pass", "buildpass", "build-pass"]

[[rules]]
id = "path-only"
path = '''\.pem$'''
"""


def test_a_gitleaks_rule_file_is_read_as_gitleaks_writes_it(tmp_path):
    path = tmp_path / "gitleaks.toml"
    path.write_text(GITLEAKS)
    rules, allow = from_gitleaks(path, "redact.rules_file")
    assert [r.id for r in rules] == ["acme-token", "build-password"], "a path-only rule has nothing to match"
    r = Redactor(rules, allow, key=b"k" * 32)
    token = "acme_" + "Q7w9E2r4T6y8U1i3O5p7A9s2"
    found = r.message(Message.from_frames([b"t", f'{{"cmd": "deploy {token} now", "env": "BUILD_PASSWORD=s3cr3tpw"}}'.encode()], 0))
    assert orjson.loads(found.message.payload) == {"cmd": "deploy [REDACTED:acme-token] now",
                                                   "env": "BUILD_PASSWORD=[REDACTED:build-password]"}
    low_entropy = "acme_" + "a" * 24
    allowed_by_stopword = "acme_" + "example" + "Q7w9E2r4T6y8U1i3O"
    for text in (low_entropy, allowed_by_stopword, "build_pass=TEST-whatever1"):
        assert r.message(Message.from_frames([b"t", text.encode()], 0)) is None, text


def test_go_regex_flags_in_mid_pattern_become_scoped_groups():
    assert go_regex(r"\b(p8e-(?i)[a-z0-9]{32})(?:x|$)") == r"\b(p8e-(?i:[a-z0-9]{32}))(?:x|$)"
    assert go_regex(r"a(?i)b|c") == r"a(?i:b)|c"
    assert go_regex(r"[(?i)]x\z") == r"[(?i)]x\Z"


def test_bad_rules_are_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"redact\.rules\[0\] \(broken\)\.regex.*does not compile"):
        config.apply(Config(), {"redact": {"rules": [{"id": "broken", "regex": "(unclosed"}]}}, "test.toml")
    with pytest.raises(ConfigError, match=r"redact\.disable_rules.*no built-in rule 'nope'"):
        config.apply(Config(), {"redact": {"disable_rules": ["nope"]}}, "test.toml")
    cfg = Config()
    cfg.redact.rules_file = str(tmp_path / "missing.toml")
    with pytest.raises(RuleError, match=r"^redact\.rules_file: cannot read .*missing\.toml"):
        load_rules(cfg.redact)


def test_the_journal_records_redacted_frames_says_so_and_verify_checks_them(tmp_path):
    cfg = Config()
    cfg.daemon.fsync = "off"
    cfg.redact.enabled = True
    log = LogDir(tmp_path / "logs")
    log.create()
    from persist.daemon import enrich

    journal = Journal(log, cfg, enrich.pipeline(cfg.enrich), from_config(cfg, log.root))
    journal.open()
    gh = SAMPLES["github-token"]
    secret_msg = [b"agent.chat", orjson.dumps({"sender": "planner", "thread_id": gh, "text": f"my token {gh}"})]
    plain_msg = [b"agent.chat", b'{"sender":"planner","text":"nothing secret"}']
    journal.record([secret_msg, plain_msg])
    journal.commit()
    journal.close()
    raw = log.active.read_bytes()
    assert gh.encode() not in raw, "the secret never reaches the disk"
    secret_rec, plain_rec = [e for e in reader.records(log)]
    assert not is_exact(secret_rec.rec) and is_exact(plain_rec.rec)
    assert secret_rec.rec["meta"]["redacted"][0]["rule"] == "github-token"
    assert secret_rec.rec["meta"]["thread_id"] == "[REDACTED:github-token]", "enrichment sees the redacted message"
    assert frames_sha256(decode_frames(secret_rec.line)) == secret_rec.rec["meta"]["sha256"]
    assert decode_frames(plain_rec.line) == plain_msg, "a message without a secret is byte for byte"
    assert (log.root / "redact.key").stat().st_mode & 0o777 == 0o600
    ran = cli(log.root, "verify", "--json")
    assert ran.returncode == 0 and orjson.loads(ran.stdout)["redacted"] == 1, ran.stdout + ran.stderr
    human = cli(log.root, "verify")
    assert "1 of them redacted" in human.stdout


def test_with_redaction_off_the_journal_has_no_redactor_and_keeps_secrets(tmp_path):
    cfg = Config()
    assert from_config(cfg, tmp_path) is None
    assert not (tmp_path / "redact.key").exists()


# --- pathological input: one message must not freeze the recorder -----------------------

_PATHOLOGICAL = r'''
import sys, time
from persist.daemon.log.record import Message
from persist.daemon.redact import Redactor
from persist.daemon.redact.rules import OPT_IN, builtin

K = 65536
def fill(unit, head="", tail=""):
    return (head + unit * (K // len(unit) + 1))[: K - len(tail)] + tail

inputs = [fill("1-", "xoxb-", "_"), fill("sk-", "", "T3BlbkFJ"), fill("a", "sk-", "T3BlbkFJ!"), fill("a"),
          fill("a", "eyJ"), fill("eyJaaaaaaaaa."), fill("b", "a://"), fill("ab://x:"), fill("password"),
          fill("apikey="), fill("-----BEGIN PRIVATE KEY-----"), fill("aaa1Q~"), fill("a", "?sig="), fill("-", "", "!"),
          fill("glpat-"), fill("a-"), fill("sk-ant-api03-"), fill("GOCSPX-"), fill("ya29."), fill("a", "", "==="),
          fill(" ", "password:", "x"), fill("aws_secret_key=")]
rules = builtin(enable=OPT_IN)
red = Redactor(rules, key=b"k" * 32)
t = time.perf_counter()
for s in inputs:
    for r in rules:
        r.secrets(s)
    red.message(Message.from_frames([b"agent.chat", s.encode()], 0))
print(len(inputs), time.perf_counter() - t)
'''


def test_no_builtin_rule_backtracks_on_pathological_64_kib_input():
    """Each built-in rule (opt-ins too) against 64 KiB made to make a backtracking regex try every split
    (``"xoxb-" + "1-"*n + "_"`` took 83 s at 40 KB, a minute or more each for several others): the whole set,
    rule by rule and through ``Redactor.message``, well under 15 s on a loaded machine (about 1-5 s here).
    In a child process so a regression fails at the timeout instead of hanging the run."""
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", _PATHOLOGICAL], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the built-in rules took over 60 s on 64 KiB pathological inputs")
    assert out.returncode == 0, out.stderr
    n, seconds = out.stdout.split()
    assert int(n) == 22 and float(seconds) < 15, out.stdout


def test_a_long_text_is_searched_in_windows_and_nothing_at_an_edge_is_missed():
    """A text past ``WINDOW`` is searched in overlapping windows: a secret on every window edge, a PEM block
    longer than a window and a token run longer than one are all still replaced whole."""
    from persist.daemon.redact.rules import OVERLAP, WINDOW

    gh = SAMPLES["github-token"]
    filler = "lorem ipsum dolor "
    text = (filler * (3 * WINDOW // len(filler)))
    at = [WINDOW - 20, 2 * WINDOW - OVERLAP - 10, 2 * WINDOW - OVERLAP + 5, 3 * WINDOW - 2 * OVERLAP - 3]
    for i in sorted(at, reverse=True):
        text = text[:i] + f" {gh} " + text[i:]
    big_pem = ("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(rs(B64, 64) for _ in range(WINDOW // 50))
               + "\n-----END RSA PRIVATE KEY-----")
    long_token = "sk-proj-" + rs(ALNUM, WINDOW + 100)
    text = filler * 10 + big_pem + " and " + text + " then " + long_token + " end"
    r = redactor()
    notes: list = []
    out = r.text(text, "payload", notes)
    assert gh not in out and long_token[8:][-40:] not in out and "BEGIN RSA" not in out and "END RSA" not in out
    assert [n["rule"] for n in notes] == ["private-key"] + ["github-token"] * 4 + ["openai-project-key"]
    assert out.endswith("[REDACTED:openai-project-key] end")


# --- JSON keys --------------------------------------------------------------------------

def test_a_secret_used_as_a_json_key_is_redacted_and_never_copied_into_at():
    gh, gh2 = "ghp_" + rs(ALNUM, 36), "ghp_" + rs(ALNUM, 36)
    found = redact([b"agent.chat", orjson.dumps({"tokens": {gh: gh, gh2: "second", "plain": 1}})])
    out = found.message.payload
    assert gh.encode() not in out and gh2.encode() not in out and gh[4:16].encode() not in out
    value = orjson.loads(out)  # JSON stays JSON, and two keys that redact alike both keep their value
    assert value == {"tokens": {"[REDACTED:github-token]": "[REDACTED:github-token]",
                                "[REDACTED:github-token]#2": "second", "plain": 1}}
    notes = orjson.dumps(found.notes).decode()
    assert gh not in notes and gh2 not in notes and gh[4:16] not in notes
    assert [n["at"] for n in found.notes] == ["payload.tokens.[REDACTED:github-token]"] * 2 + [
        "payload.tokens.[REDACTED:github-token]#2"]


def test_a_long_key_is_not_copied_into_every_note():
    gh = "ghp_" + rs(ALNUM, 36)
    payload = orjson.dumps({"k" * 100_000: [gh] * 100})
    found = redact([b"agent.chat", payload])
    assert gh.encode() not in found.message.payload
    assert all(len(n.get("at", "")) <= 200 for n in found.notes)
    assert found.notes[0]["at"].endswith("…")
    assert len(orjson.dumps(found.notes)) < 60_000, "the notes stay small: the key is not repeated per hit"


def test_json_escapes_hide_nothing_from_the_gate_or_the_keyword_shortlist():
    """``\\u0040`` for ``@`` and ``\\u0070`` for ``p``: the raw bytes show neither the shape nor the keyword."""
    gh = "ghp_" + rs(ALNUM, 36)
    escaped_gh = gh.replace("p", "\\u0070", 1)
    for raw, secret, rule in [(b'{"url":"postgres://bob:hunter2pw\\u0040db.internal/prod"}', "hunter2pw", "url-password"),
                              (b'{"t":"' + escaped_gh.encode() + b'"}', gh, "github-token"),
                              (b'["x", {"k": "' + escaped_gh.encode() + b'"}]', gh, "github-token")]:
        assert b"\\u" in raw
        for frames in ([b"agent.chat", raw], [b"agent.chat", b"{}", raw]):
            found = redact(frames)
            assert found is not None, raw
            out = b"".join(found.message.frames[1:])
            assert secret.encode() not in out and secret[4:].encode() not in out and escaped_gh.encode() not in out
            assert [n["rule"] for n in found.notes] == [rule]
    assert redact([b"agent.chat", b'{"text":"caf\\u00e9 and nothing secret"}']) is None


# --- the fingerprint key ------------------------------------------------------------------

def test_the_fingerprint_key_is_made_whole_or_not_at_all_and_a_short_one_is_refused(tmp_path, monkeypatch):
    import threading

    from persist.daemon.log import fsutil
    from persist.daemon.redact import KeyFileError, fingerprint_key
    from procs import run

    root = tmp_path / "logs"
    root.mkdir()

    def crash(fd, data):  # the process dies between creating the key file and writing it
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(fsutil, "write_all", crash)
        with pytest.raises(OSError):
            fingerprint_key(root)
    assert list(root.iterdir()) == [], "no empty redact.key, no temporary file"
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(fingerprint_key(root))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got[0]) == 32, "one key, whoever made it"
    assert [p.name for p in root.iterdir()] == ["redact.key"]

    (root / "redact.key").write_bytes(b"")
    with pytest.raises(KeyFileError, match=r"redact\.key holds 0 bytes"):
        fingerprint_key(root)
    cfg = tmp_path / "persist.toml"
    cfg.write_text("[redact]\nenabled = true\n")
    ran = run("persist-daemon", "--config", str(cfg), "--log-dir", str(root), "--connect", "tcp://127.0.0.1:9")
    assert ran.returncode == 1 and len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "redact.key holds 0 bytes" in ran.stderr and "Traceback" not in ran.stderr
    (tmp_path / "paste.txt").write_text("nothing\n")
    check = cli(root, "redact", "--check", str(tmp_path / "paste.txt"))
    assert check.returncode == 1 and "redact.key holds 0 bytes" in check.stderr, check.stderr
