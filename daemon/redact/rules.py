"""Redaction rules (SPEC section 14): what a secret looks like, and the cheap words that come before it.

A ``Rule`` is an id, a regex, the lowercase ``keywords`` of which at least one
must appear in a text before the regex is tried at all (a rule with none is
always tried), an optional ``secret_group`` (the part of the match that is the
secret; by default the first group that took part, else the whole match), a
minimum Shannon ``entropy`` of the secret and ``allowlists`` (a match they
allow is left alone). The shapes are gitleaks' (``from_gitleaks`` reads its
TOML as it is); ``BUILTIN`` are the secrets agents paste into their messages.

Regexes are compiled with ``re.ASCII``: ``\\w``, ``\\d`` and ``\\s`` mean what
they mean in Go's RE2, which gitleaks rules are written for.
``go_regex`` carries over the little of RE2's syntax Python reads otherwise
(flags such as ``(?i)`` in mid-pattern, ``\\z``, POSIX classes).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = re.ASCII
WINDOW = 32768  # characters: the most of a text one regex search is given (``Rule.secrets``)
OVERLAP = 8192  # characters two windows share: a secret up to this long is seen whole in one of them


class RuleError(ValueError):
    """A rule (from the config or a rule file) cannot be used: ``key`` names it, ``problem`` says why."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Allowlist:
    """What a rule (or a whole file) lets pass: a regex on the secret, the match or the line; a stop word."""

    regexes: tuple[re.Pattern, ...] = ()
    stopwords: tuple[str, ...] = ()
    target: str = "secret"  # "secret", "match" or "line"
    all_of: bool = False  # condition AND: both a regex and a stop word must say so

    def allows(self, secret: str, match: str, line: str) -> bool:
        text = {"secret": secret, "match": match, "line": line}[self.target]
        by_regex = any(r.search(text) for r in self.regexes) if self.regexes else None
        lower = secret.lower()
        by_word = any(w in lower for w in self.stopwords) if self.stopwords else None
        said = [x for x in (by_regex, by_word) if x is not None]
        return bool(said) and (all(said) if self.all_of else any(said))


@dataclass(frozen=True)
class Rule:
    id: str
    regex: re.Pattern
    keywords: tuple[str, ...] = ()
    secret_group: int | None = None
    entropy: float = 0.0
    allowlists: tuple[Allowlist, ...] = ()
    gate: bool = False  # built-in: every secret it finds passes the redactor's token gate (``Redactor.worth_a_look``)

    def secrets(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` of each secret this rule finds in ``text``, in order, not overlapping.

        The regex never searches more than ``WINDOW`` characters at once: a longer text is searched in
        windows overlapping by ``OVERLAP``, so a rule whose cost grows with the square of what it is given
        (a gitleaks rule, say) costs at most that per window, linear in the text. A match that starts in the
        overlap is left to the next window, which holds it whole; one that runs to its window's edge is
        taken again from its start without the edge (one anchored match, so a long PEM block is not cut)."""
        n = len(text)
        if n <= WINDOW:
            return self._found(text, self.regex.finditer(text))
        found: list[tuple[int, int]] = []
        at = 0
        while at < n:
            edge = min(at + WINDOW, n)
            handed_on = edge - OVERLAP if edge < n else n
            nxt = handed_on
            for m in self.regex.finditer(text, at, edge):
                if m.start() >= handed_on:
                    break
                if m.end() == edge < n:
                    m = self.regex.match(text, m.start()) or m
                found.extend(self._found(text, (m,)))
                nxt = max(nxt, m.end())
            at = nxt if nxt > at else edge
        return found

    def _found(self, text: str, matches: Any) -> list[tuple[int, int]]:
        found = []
        for m in matches:
            start, end = self._span(m)
            if start >= end:
                continue
            secret = text[start:end]
            if self.entropy and shannon(secret) < self.entropy:
                continue
            if self.allowlists and any(a.allows(secret, m.group(0), _line_of(text, start)) for a in self.allowlists):
                continue
            found.append((start, end))
        return found

    def _span(self, m: re.Match) -> tuple[int, int]:
        if self.secret_group is not None:
            return m.span(self.secret_group) if m.group(self.secret_group) is not None else (0, 0)
        for i in range(1, (m.re.groups or 0) + 1):
            if m.group(i):
                return m.span(i)
        return m.span(0)


def _line_of(text: str, at: int) -> str:
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    return text[start : end if end >= 0 else len(text)]


def shannon(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


# --- RE2 (Go) to Python ---------------------------------------------------------------

_POSIX = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "digit": "0-9", "xdigit": "0-9a-fA-F", "upper": "A-Z",
    "lower": "a-z", "space": r" \t\r\n\v\f", "word": r"\w", "punct": r"!-/:-@\[-`{-~", "blank": r" \t",
}  # fmt: skip
_FLAG_GROUP = re.compile(r"\(\?([imsU-]+)\)")


def go_regex(pattern: str) -> str:
    """``pattern`` (RE2 syntax) as Python reads it.

    RE2 lets ``(?i)`` stand anywhere, meaning "from here to the end of this
    group"; Python only at the very start. Each one in mid-pattern becomes a
    scoped group ``(?i:...)`` closed where its enclosing group closes.
    """
    for name, chars in _POSIX.items():
        pattern = pattern.replace(f"[:{name}:]", chars)
    pattern = pattern.replace(r"\z", r"\Z")
    out: list[str] = []
    closers: list[int] = [0]  # per open group: scoped flag groups to close with it
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a leading ] is a literal
                out.append("]")
                i += 1
            i += 1
            continue
        m = _FLAG_GROUP.match(pattern, i)
        if m and (i > 0 or len(closers) > 1):
            flags = m.group(1).replace("U", "")
            out.append(f"(?{flags}:" if flags and flags != "-" else "(?:")
            closers[-1] += 1
            i = m.end()
            continue
        if c == "(":
            closers.append(0)
        elif c == ")" and len(closers) > 1:
            out.append(")" * closers.pop())
        elif c == "|" and closers[-1]:  # an alternative ends the flags' reach too
            out.append(")" * closers[-1])
            closers[-1] = 0
        out.append(c)
        i += 1
    out.append(")" * closers[0])
    return "".join(out)


def compile_regex(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(go_regex(pattern), FLAGS)
    except (re.error, TypeError) as exc:
        raise RuleError(where, f"does not compile: {exc}") from None


def _allowlist(table: dict[str, Any], where: str) -> Allowlist | None:
    regexes = tuple(compile_regex(r, f"{where}.regexes") for r in table.get("regexes", []))
    stopwords = tuple(str(w).lower() for w in table.get("stopwords", []))
    if not regexes and not stopwords:
        return None  # only paths or commits: nothing a message has
    target = table.get("regexTarget", "secret") or "secret"
    if target not in ("secret", "match", "line"):
        raise RuleError(f"{where}.regexTarget", f"must be secret, match or line, got {target!r}")
    return Allowlist(regexes, stopwords, target, str(table.get("condition", "OR")).upper() == "AND")


def make(table: dict[str, Any], where: str) -> Rule | None:
    """A rule from a table in gitleaks' shape (``id``, ``regex``, ``keywords``, ``secretGroup``,
    ``entropy``, ``allowlists``/``allowlist``); None for a rule with no regex (gitleaks' path-only rules).

    ``secret_group`` is accepted for ``secretGroup`` (persist's config spells keys so)."""
    if not isinstance(table, dict):
        raise RuleError(where, "must be a table")
    ident = table.get("id")
    if not isinstance(ident, str) or not ident:
        raise RuleError(f"{where}.id", "every rule needs an id")
    where = f"{where} ({ident})"
    if "regex" not in table:
        return None
    keywords = table.get("keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
        raise RuleError(f"{where}.keywords", "must be a list of non-empty strings")
    group = table.get("secretGroup", table.get("secret_group"))
    if group is not None and (type(group) is not int or group < 0):
        raise RuleError(f"{where}.secretGroup", f"must be a whole number, got {group!r}")
    regex = compile_regex(table["regex"], f"{where}.regex")
    if group is not None and group > regex.groups:
        raise RuleError(f"{where}.secretGroup", f"the regex has only {regex.groups} group(s)")
    entropy = table.get("entropy", 0.0)
    if type(entropy) not in (int, float) or entropy < 0:
        raise RuleError(f"{where}.entropy", f"must be a number of bits per character, got {entropy!r}")
    lists = table.get("allowlists", [])
    if "allowlist" in table:
        lists = [*lists, table["allowlist"]]
    allow = tuple(a for i, t in enumerate(lists) if (a := _allowlist(t, f"{where}.allowlists[{i}]")))
    return Rule(ident, regex, tuple(k.lower() for k in keywords), group or None, float(entropy), allow)


def from_gitleaks(path: Path, key: str) -> tuple[list[Rule], Allowlist | None]:
    """The rules and the global allowlist of a gitleaks TOML rule file, read as gitleaks writes it."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RuleError(key, f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RuleError(key, f"{path} is not a TOML rule file: {exc}") from None
    rules = [r for i, t in enumerate(data.get("rules", [])) if (r := make(t, f"{path}: rules[{i}]"))]
    tables = data.get("allowlists", [])
    if isinstance(data.get("allowlist"), dict):
        tables = [*tables, data["allowlist"]]
    allow = [a for i, t in enumerate(tables) if (a := _allowlist(t, f"{path}: allowlist[{i}]"))]
    if len(allow) > 1:
        allow = [Allowlist(tuple(r for a in allow for r in a.regexes), tuple(w for a in allow for w in a.stopwords))]
    return rules, allow[0] if allow else None


# --- the built-in rules -----------------------------------------------------------------

_END = r"(?![A-Za-z0-9_\-])"  # a token ends where its alphabet does
_START = r"(?<![A-Za-z0-9_\-])"  # … and starts where it does: one try per token, not one per position in it
_ASSIGNED = (r"(?i:(?:password|passwd|secret|api[_\-]?key|access[_\-]?key|access[_\-]?token"
             r"|auth[_\-]?token|refresh[_\-]?token|client[_\-]?secret|private[_\-]?key|credentials?))")


@dataclass(frozen=True)
class Spec:
    id: str
    regex: str
    keywords: tuple[str, ...]
    what: str
    group: int | None = None
    entropy: float = 0.0
    opt_in: bool = False
    allow: tuple[str, ...] = field(default=())
    gate: bool = True  # False: a short secret, found by its keywords alone (the gate cannot see it)


SPECS = (
    Spec("anthropic-api-key", _START + r"sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_\-]{32,}+" + _END, ("sk-ant-",),
         "Anthropic API and admin keys (sk-ant-api03-…)"),
    Spec("openai-api-key", _START + r"sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_\-]{16,}T3BlbkFJ[A-Za-z0-9_\-]{16,}+" + _END,
         ("t3blbkfj",), "OpenAI keys (sk-…T3BlbkFJ…, sk-proj-…)"),
    Spec("openai-project-key", _START + r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}+" + _END,
         ("sk-proj-", "sk-svcacct-", "sk-admin-"), "OpenAI project, service-account and admin keys"),
    Spec("openrouter-api-key", r"\bsk-or-v1-[a-f0-9]{64}\b", ("sk-or-v1-",), "OpenRouter keys"),
    Spec("llm-api-key", _START + r"sk-[A-Za-z0-9]{32,}+" + _END, ("sk-",),
         "sk-… keys of other LLM providers (DeepSeek, Moonshot, older OpenAI)", entropy=3.0),
    Spec("google-api-key", _START + r"AIza[0-9A-Za-z_\-]{35}" + _END, ("aiza",), "Google API keys (Gemini, Maps, …)"),
    Spec("google-oauth", _START + r"(?:GOCSPX-[A-Za-z0-9_\-]{28}|ya29\.[A-Za-z0-9_\-]{20,}+)" + _END, ("gocspx-", "ya29."),
         "Google OAuth client secrets and access tokens"),
    Spec("huggingface-token", r"\bhf_[A-Za-z0-9]{34,40}\b", ("hf_",), "Hugging Face tokens", entropy=3.0),
    Spec("groq-api-key", r"\bgsk_[A-Za-z0-9]{52}\b", ("gsk_",), "Groq keys"),
    Spec("xai-api-key", r"\bxai-[A-Za-z0-9]{80}\b", ("xai-",), "xAI keys"),
    Spec("replicate-api-token", r"\br8_[A-Za-z0-9]{37}\b", ("r8_",), "Replicate tokens"),
    Spec("perplexity-api-key", r"\bpplx-[A-Za-z0-9]{48}\b", ("pplx-",), "Perplexity keys"),
    Spec("aws-access-key-id", r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
         ("akia", "asia", "abia", "acca", "a3t"), "AWS access key ids", entropy=3.0),
    Spec("aws-secret-access-key",
         r"(?i:aws)?[_\-.]?(?i:secret)[_\-.]?(?i:access)?[_\-.]?(?i:key)[\"']?\s*+[:=]{1,2}>?\s*+[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
         ("secret_access_key", "secretaccesskey", "aws_secret", "secret-access-key", "secret_key"),
         "AWS secret access keys (40 characters after a secret_access_key name)", group=1),
    Spec("gcp-service-account", r"\"private_key_id\"\s*:\s*\"([a-f0-9]{40})\"", ("private_key_id",),
         "GCP service-account key ids (the key itself is a private-key)", group=1),
    Spec("azure-storage-key", r"(?i:AccountKey)=([A-Za-z0-9+/]{86}==)", ("accountkey=",), "Azure storage account keys",
         group=1),
    Spec("azure-sas-token", r"[?&]sig=([A-Za-z0-9%+/]{40,}+={0,2})", ("sig=",), "Azure SAS signatures", group=1),
    Spec("azure-client-secret", r"(?<![A-Za-z0-9_~.])([A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?![A-Za-z0-9_~.\-])",
         ("q~",), "Azure AD client secrets", group=1, entropy=3.0),
    Spec("github-token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b",
         ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), "GitHub tokens"),
    Spec("gitlab-token", _START + r"gl(?:pat|dt|rt|ptt|oas)-[A-Za-z0-9_\-]{20,}+" + _END,
         ("glpat-", "gldt-", "glrt-", "glptt-", "gloas-"), "GitLab tokens"),
    Spec("slack-token", _START + r"xox[abposr]-[A-Za-z0-9\-]{15,}+" + _END, ("xoxa-", "xoxb-", "xoxp-", "xoxo-",
         "xoxs-", "xoxr-"), "Slack tokens"),
    Spec("slack-webhook", r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{43,56}",
         ("hooks.slack.com",), "Slack webhook URLs"),
    Spec("stripe-key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{24,}\b", ("sk_live_", "rk_live_", "sk_test_",
         "rk_test_"), "Stripe secret keys"),
    Spec("jwt", _START + r"eyJ[A-Za-z0-9_\-]{8,}+\.eyJ[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}+" + _END, ("eyj",),
         "JSON Web Tokens (header.payload.signature)"),
    Spec("private-key",
         r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)",
         ("private key",), "PEM private keys (RSA, EC, OpenSSH, PGP, PKCS#8), to their END line or the text's end"),
    Spec("url-password", r"\b[A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@\"'<>]{0,128}:([^\s/@\"'<>]{1,256})@", ("://",),
         "passwords in URLs (scheme://user:PASSWORD@host)", group=1),
    Spec("secret-assignment", _ASSIGNED + r"[\"']?\s*+(?::|=|:=|=>)\s*+[\"'`]?(?!\[REDACTED)([^\s\"'`,;{}\[\]]{8,}+)",
         ("password", "passwd", "secret", "api_key", "api-key", "apikey", "access_key", "access-key", "token",
          "credential", "private_key"),
         "NAME=VALUE and \"name\": \"value\" where the name says password, secret, api_key, token … (opt-in)",
         group=1, opt_in=True, gate=False),
    Spec("high-entropy", r"(?<![A-Za-z0-9+/_\-=])[A-Za-z0-9+/_\-]{32,}+={0,2}+(?![A-Za-z0-9+/_\-=])", (),
         "any 32+ character token of base64 or hex alphabet with 4.5 bits of entropy per character (opt-in)",
         entropy=4.5, opt_in=True, allow=(r"^[0-9a-f]+$", r"^[A-Za-z]+$", r"^[0-9]+$")),
)  # fmt: skip


def builtin(disable: list[str] | tuple[str, ...] = (), enable: list[str] | tuple[str, ...] = ()) -> list[Rule]:
    """The built-in rules less the ``disable``d ids; the opt-in ones (``OPT_IN``) only if in ``enable``."""
    out = []
    for spec in SPECS:
        if spec.id in disable or (spec.opt_in and spec.id not in enable):
            continue
        allow = (Allowlist(tuple(re.compile(a) for a in spec.allow)),) if spec.allow else ()
        out.append(Rule(spec.id, re.compile(spec.regex, FLAGS), spec.keywords, spec.group, spec.entropy, allow,
                        spec.gate))
    return out


BUILTIN_IDS = tuple(s.id for s in SPECS)
OPT_IN = tuple(s.id for s in SPECS if s.opt_in)
