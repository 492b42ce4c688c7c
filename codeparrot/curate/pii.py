"""Secret and PII redaction: e-mail addresses, IP addresses, keys and tokens, passwords.

Each span found is replaced by its kind's placeholder (`PLACEHOLDERS`), the rest of the file is kept
character for character, and each replacement is reported as a `Redaction` (kind, line, offsets,
placeholder), never with the text it replaced. Overlapping spans are merged and take the strongest kind
(key > password > e-mail > IP address), so no part of a secret survives.

What counts, and what is kept on purpose:

- **e-mail**: ASCII `local@domain.tld` (a TLD of 2+ letters). Kept: the reserved example domains of RFC
  2606 / 6761 (`example.com|org|net`, `*.example`, `*.test`, `*.invalid`, `*.localhost`), which name no
  one; `git@host` (an SSH remote); `user:pass@host` in a URL (the password is redacted, see below);
  `a@b.method(` (a call, not an address).
- **IP address**: IPv4 and IPv6 that `ipaddress` calls global. Kept, as in bigcode-dataset's pii
  (private and well-known DNS addresses skipped) and datatrove's `PIIFormatter` (only `is_global`
  redacted): loopback (127/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local,
  shared (100.64/10), the documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32),
  benchmarking, multicast and reserved ranges, and public DNS resolvers (8.8.8.8, 1.1.1.1, ...): they
  identify no one, fill examples, configs and tests, and a model should know them. IPv6 is redacted only
  in 2000::/3, the global unicast space (so `a::b`-like tokens never are). Not addresses: version strings,
  i.e. a dotted quad on a line that says `version`, right after a pip specifier (`==`, `>=`, ...), part of
  a longer dotted run (`1.3.6.1.4.1`, `v1.2.3.4`), or four single digits (`1.2.3.4`, bigcode's rule)
  unless the line speaks of a host, server, IP or address. OIDs (`ObjectIdentifier("2.5.29.17")`) and
  section numbers (`section 8.2.4.44`) are kept like versions, on a cue on the line or the line before.
- **key** (detect-secrets plugins, as bigcode-dataset uses them): provider patterns (AWS access key ids
  and secret keys, GitHub, GitLab, Slack tokens and webhooks, Stripe, JWT, SendGrid, OpenAI, PyPI,
  Square, Twilio, Mailchimp), Google Cloud patterns detect-secrets lacks (API keys `AIza...`, OAuth
  client secrets `GOCSPX-...`, access tokens `ya29....`, service-account `private_key_id`), whole private
  key blocks (`-----BEGIN ... PRIVATE KEY-----` to its END line), the high-entropy plugins on quoted
  strings of 20+ characters (base64 above 4.5 bits, hex above 3.0: detect-secrets' defaults; hex only on a
  line that names a key, token, secret or password and no digest (sha, md5, hash, ...), since hex in code
  is mostly digests and test vectors), and the keyword plugin's regexes for values named `secret` (`SECRET_KEY = "..."`,
  `"client_secret": "..."`). Left out: its key keywords (`api_key = "..."`: real keys there are long and
  random, so the entropy and provider detectors find them; on 10,000 installed files the keyword rule
  added one test dummy, for a pass over every file), Artifactory (its `AP[0-9A-F]...` pattern matches
  ordinary words), IBM, SoftLayer, Cloudant, Azure, Discord, Telegram and PuTTY key files (no cheap
  literal to find them by, and rare in Python).
- **password**: the keyword plugin's password keywords (`password`, `passwd`, `pwd`, `db_pass`, ...; not
  `contraseña`, one more pass for a word never seen here) in an obvious assignment or comparison to a
  quoted value, where the name ends with the keyword, and the password of `scheme://user:password@host`.
  Not passwords: values with whitespace (prompts, help texts), templates (`{x}`, `<x>`, `${X}`, `%s`),
  `****`, values shorter than 4, words like `password`, `foo` and `None`, names (`PWD_STATE = "yes"`,
  `"password": "user_password"`, an env var's name), and the first value of `user, password = "u", "p"`
  (detect-secrets' regex would take the user: a known gap, kept rather than redacting the wrong value).

Speed: a file is scanned with C-speed string operations (`in`, `find`, literal-prefixed regexes, a byte
translation that marks runs of token characters); a detector runs its own regexes only where its literal
trigger occurs, so a clean file costs about fifteen passes over its bytes, ~20 ms per MB on one core
(bench/curate_steps.py measures it next to curation).
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import itertools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from codeparrot.config import StageConfig

if TYPE_CHECKING:
    from codeparrot.curate.filters import Doc

#: Bumped when detection changes what a given config redacts (part of `fingerprint()`).
PII_VERSION = "2"  # 2: settings strings and paths are not keys
EMAIL = "email"
IP_ADDRESS = "ip_address"
KEY = "key"
PASSWORD = "password"
#: Placeholder per kind; the tokenizer adds them as special tokens.
PLACEHOLDERS: dict[str, str] = {EMAIL: "<EMAIL>", IP_ADDRESS: "<IP_ADDRESS>", KEY: "<KEY>", PASSWORD: "<PASSWORD>"}
KINDS = tuple(PLACEHOLDERS)
# overlapping spans merge into the strongest kind
_PRIORITY = {IP_ADDRESS: 0, EMAIL: 1, PASSWORD: 2, KEY: 3}


class RedactionConfig(StageConfig):
    """Which kinds of secrets and personal data are replaced by placeholders."""

    emails: bool = Field(True, description="Replace e-mail addresses by `<EMAIL>` (example domains kept).")
    ip_addresses: bool = Field(True, description="Replace global IP addresses by `<IP_ADDRESS>` (private, loopback, docs kept).")
    # not `keys`: Prefect resolves flow parameters as collections, and a `keys` attribute reads as a mapping
    api_keys: bool = Field(True, description="Replace API keys, tokens and private key blocks by `<KEY>` (detect-secrets).")
    passwords: bool = Field(True, description="Replace passwords in obvious assignments and URLs by `<PASSWORD>`.")


@dataclass(frozen=True, slots=True)
class Redaction:
    """One replaced span: `start`/`end` are offsets in the original content, `line` is 1-based."""

    kind: str
    line: int
    start: int
    end: int
    placeholder: str


# ------------------------------------------------------------------------------------------------ e-mail

_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_LOCAL = re.compile(r"[A-Za-z0-9._%+-]{1,64}\Z")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w(-])")
_RESERVED_DOMAINS = ("example.com", "example.org", "example.net")
_RESERVED_SUFFIXES = tuple("." + d for d in _RESERVED_DOMAINS)
_RESERVED_TLDS = ("example", "test", "invalid", "localhost")


def _emails(text: str) -> list[tuple[int, int]]:
    out = []
    i = text.find("@")
    while i != -1:
        if i > 0 and text[i - 1] in _LOCAL_CHARS:
            local = _LOCAL.search(text, max(0, i - 64), i)
            domain = _DOMAIN.match(text, i + 1)
            if local and domain:
                start = local.start()
                while text[start] == ".":
                    start += 1
                before = text[start - 1] if start else ""
                host = domain.group().lower()
                reserved = host in _RESERVED_DOMAINS or host.endswith(_RESERVED_SUFFIXES)
                reserved = reserved or host.rsplit(".", 1)[-1] in _RESERVED_TLDS
                ssh = text.startswith("git", start) and i - start == 3  # git@github.com:org/repo: a remote
                if start < i and before not in ":/" and not reserved and not ssh:
                    out.append((start, domain.end()))
        i = text.find("@", i + 1)
    return out


# ------------------------------------------------------------------------------------------- IP addresses

_V4_TRIGGER = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d")
_V4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
# literal-first, so the regex engine skips to each ':'; a global address (2xxx:...) has a hex digit before
# its first colon, then a group and a colon, or the `::`
_V6_TRIGGER = re.compile(r":(?<=[0-9A-Fa-f]:)[0-9A-Fa-f]{0,4}:")
_NETWORK = re.compile(r"/\d{1,3}(?!\d)")
# ASN.1 object identifiers and numbered sections of specifications are dotted quads too
_OID = re.compile(r"(?<![a-z])oids?(?![a-z])|objectidentifier|\basn\.?1|section|chapter|\brfc\b|§")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_SPECIFIERS = ("==", ">=", "<=", "~=", "!=", "<", ">")
_IP_CUES = ("ip", "host", "server", "addr", "dns", "proxy", "socket", "connect", "bind", "url", "http")
# bigcode-dataset pii's POPULAR_DNS_SERVERS: public resolvers, infrastructure, not anyone's address
PUBLIC_DNS = frozenset(
    {
        "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "76.76.19.19", "76.223.122.150", "9.9.9.9",
        "149.112.112.112", "208.67.222.222", "208.67.220.220", "8.26.56.26", "8.20.247.20",
        "94.140.14.14", "94.140.15.15",
    }
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
# Google, Cloudflare and Quad9 over IPv6
PUBLIC_DNS_V6 = frozenset({"2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111",
                           "2606:4700:4700::1001", "2620:fe::fe", "2620:fe::9"})


def _line_of(text: str, i: int) -> str:
    start = text.rfind("\n", 0, i) + 1
    end = text.find("\n", i)
    return text[start : len(text) if end == -1 else end]


def _is_version(text: str, start: int, end: int) -> bool:
    """A dotted quad that reads as a version, an ASN.1 object identifier or a section number (a cue on its
    line or the line before, which a wrapped comment continues): see the module docstring."""
    line = _line_of(text, start).lower()
    line_start = text.rfind("\n", 0, start) + 1
    context = line + (_line_of(text, line_start - 1).lower() if line_start else "")
    if "version" in context or _OID.search(context):
        return True
    head = text[max(0, start - 3) : start].rstrip()
    if head.endswith(_SPECIFIERS):
        return True
    # x.x.x.x, bigcode's rule
    return end - start == 7 and not any(cue in line for cue in _IP_CUES)


def _ipv4(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    last = -1
    for t in _V4_TRIGGER.finditer(text):
        start = t.start()
        while start > 0 and text[start - 1].isdigit() and t.start() - start < 3:
            start -= 1
        if start <= last:
            continue
        m = _V4.match(text, start)
        if m is None:
            continue
        end = m.end()
        last = end
        before = text[start - 1] if start else " "
        after = text[end : end + 2]
        if before.isalnum() or before in "._" or (after[:1].isalnum() or after[:1] == "_") or (
            after[:1] == "." and (after[1:2].isalnum() or after[1:2] == "_")
        ):
            continue  # part of a longer dotted run or a word: an OID, a section number, v1.2.3.4
        s = m.group()
        try:
            addr = ipaddress.IPv4Address(s)
        except ValueError:
            continue
        if not addr.is_global or addr.is_multicast or s in PUBLIC_DNS or _is_version(text, start, end):
            continue
        if _NETWORK.match(text, end):
            continue  # a.b.c.d/nn names a network (cloud ranges, allow-lists, IANA tables), not a host
        out.append((start, end))
    return out


def _ipv6(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    last = -1
    n = len(text)
    for t in _V6_TRIGGER.finditer(text):
        if t.start() < last:
            continue
        start = t.start()
        while start > 0 and text[start - 1] in _HEX_COLON and t.start() - start < 40:
            start -= 1
        if text[start] not in "23":
            continue  # global unicast is 2000::/3: `AWS::Lambda`, `x[::2]`, `a::b` end here
        end = t.end()
        while end < n and (text[end] in _HEX_COLON or text[end] == ".") and end - start < 46:
            end += 1
        last = end
        while end > start and text[end - 1] in ".:" and not text[start:end].endswith("::"):
            end -= 1
        if (start and (text[start - 1].isalnum() or text[start - 1] in "_.")) or (end < n and (text[end].isalnum() or text[end] == "_")):
            continue
        s = text[start:end]
        if s.count(":") < 2:
            continue
        try:
            addr = ipaddress.IPv6Address(s)
        except ValueError:
            continue
        if addr in _GLOBAL_UNICAST and addr.is_global and str(addr) not in PUBLIC_DNS_V6 and not _NETWORK.match(text, end):
            out.append((start, end))
    return out


# ------------------------------------------------------------------------------------- keys and passwords


def _plugins() -> dict[str, Any]:
    """The detect-secrets plugins used (imported here: the package is only needed once a Redactor exists)."""
    from detect_secrets.plugins import keyword
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.mailchimp import MailchimpDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.sendgrid import SendGridDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.square_oauth import SquareOAuthDetector
    from detect_secrets.plugins.stripe import StripeDetector
    from detect_secrets.plugins.twilio import TwilioKeyDetector

    # (prefixes a token run starts with, patterns matched there): detect-secrets' regexes, reached through
    # a literal every token of theirs starts with
    prefixed: list[tuple[tuple[str, ...], list[re.Pattern[str]]]] = [
        (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), list(GitHubTokenDetector.denylist)),
        # fine-grained personal access tokens, newer than detect-secrets 1.5
        (("github_pat_",), [re.compile(r"github_pat_[0-9A-Za-z_]{82}")]),
        (("glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "GR1348941", "glcbt-", "glimt-", "glptt-", "glagent-", "gloas-"),
         list(GitLabTokenDetector.denylist)),
        (("xox", "XOX"), [SlackDetector.denylist[0]]),
        (("sk_live_", "rk_live_"), list(StripeDetector.denylist)),
        (("pypi-AgE",), list(PypiTokenDetector.denylist)),
        (("sq0csp-",), list(SquareOAuthDetector.denylist)),
        (("AC", "SK"), list(TwilioKeyDetector.denylist)),
        (("sk-",), list(OpenAIDetector.denylist)),
        # Google Cloud, which detect-secrets lacks: API keys, OAuth client secrets
        (("AIza",), [re.compile(r"AIza[0-9A-Za-z_-]{35}")]),
        (("eyJ",), list(JwtTokenDetector.denylist)),
        (("GOCSPX-",), [re.compile(r"GOCSPX-[0-9A-Za-z_-]{28}")]),
    ]
    # patterns whose token run does not start the match: searched around a run that ends or follows it
    around = (
        SendGridDetector.denylist[0],  # SG.<22>.<43>
        MailchimpDetector.denylist[0],  # <32>-us<n>
        re.compile(r"ya29\.[0-9A-Za-z_-]{20,}"),  # Google OAuth access tokens
    )
    return {
        "keyword": keyword,
        "preceded": keyword.PRECEDED_BY_EQUAL_COMPARISON_SIGNS_QUOTES_REQUIRED_REGEX,
        "prefixed": prefixed,
        "prefixes": tuple(p.encode() for prefs, _ in prefixed for p in prefs),
        # (byte before, first two bytes) of the runs worth a closer look: a prefix starts them, or a '.'
        # (SendGrid, OAuth) or '/' (Slack webhooks) comes before them
        "run_keys": frozenset(
            {bytes([b]) + p[:2].encode() for prefs, _ in prefixed for p in prefs for b in range(256)}
            | {bytes([b]) + bytes([x, y]) for b in b"./" for x in _RUN_CHARS for y in _RUN_CHARS}
        ),
        "around": around,
        "aws_secret": AWSKeyDetector.denylist[1],
        "slack_webhook": SlackDetector.denylist[1],
        # shorter than a run: searched directly (their literal prefix keeps the regex engine fast)
        "direct": AWSKeyDetector.denylist[0],
        "basic_auth": BasicAuthDetector.denylist[0],
        "base64": Base64HighEntropyString(limit=4.5),
        "hex": HexHighEntropyString(limit=3.0),
        "jwt_valid": JwtTokenDetector.is_formally_valid,
    }


# a token run: what provider tokens are made of; marked in the bytes by one C-speed translation
_RUN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_RUN_TABLE = bytes(ord("a") if i in _RUN_CHARS else ord(" ") for i in range(256))
# the shortest token reached through runs, GitLab's (prefix + 20); every run a file has costs a few
# hundred ns of Python, and runs of 24+ are half as many as of 20+ (mostly long identifiers)
_RUN_MIN = 24
_RUN_NEEDLE = b"a" * _RUN_MIN
_JWT_SIGNATURE = re.compile(r"[A-Za-z0-9_\-+/=]*")
_QUOTED = (re.compile(r"'([A-Za-z0-9+/=_\-]{20,})'"), re.compile(r'"([A-Za-z0-9+/=_\-]{20,})"'))
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")
# log2(22) = 4.46 <= 4.5, the base64 limit: a string of at most 22 distinct characters never exceeds it
_B64_MIN_DISTINCT = 22
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_KEY_CONTEXT = ("key", "token", "secret", "passw", "auth", "credential", "api")
_HASH_CONTEXT = ("sha", "md5", "hash", "digest", "checksum", "fingerprint", "crc")
_PRIVATE_KEY_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_KEY_END = re.compile(r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
# a key has a body: the marker alone (parsers' constants, docs) is no secret
_KEY_BODY = re.compile(r"[A-Za-z0-9+/]{40,}")
_BASE64_LINE = re.compile(r"(?:[ \t]*[\"']?[A-Za-z0-9+/=]{16,}(?:\\n)?[\"']?,?[ \t]*(?:\\n)?\n?)+")
_PASS_PREFIXES = ("db", "db_", "database", "database_", "key", "key_")
_PASSWORD_WORDS = ("pass", "pwd", "contrase")
# what every keyword regex of detect-secrets needs around the keyword: a quote after an assignment or a
# comparison, or a quoted value compared to it; cheap anchored tests before those regexes
_QUOTE_AFTER = re.compile(r"\w*[\]'\"`]{0,2}[ \t]*(?:\[[0-9]*\])?[ \t]*(?:[:=!]{1,3}|=>|\.assign\(|\()[ \t]*@?[\"'`]")
_QUOTE_BEFORE = re.compile(r"[\"'`][ \t]*[!=]{2,3}[ \t]*\w*\Z")
# what the secret's name ends with: the keyword itself, or a key/token made of it (SECRET_KEY)
_NAME_ENDS = ("key", "pass", "password", "passwd", "pwd", "secret", "token", "contraseña", "contrasena")
_NAME_BEFORE = re.compile(r"([\w.\-]+)[\]'\"`]{0,2}\s*(?:[:=!]{1,3}|=>)?\s*@?[\"'`]?\Z")
# the targets before the last in `a, b, password = ...`, whose first value is not the password
_TARGET_LIST = re.compile(r"\s*(?:[\w.]+\s*,\s*)+")
_NAME_AFTER = re.compile(r"\s*[!=]{2,3}\s*([\w.]+)")
_GCP_KEY_ID = re.compile(r"[\"']private_key_id[\"']\s*:\s*[\"']([0-9a-f]{40})[\"']")
_DUMMY_VALUES = frozenset(
    {"password", "passwd", "pwd", "pass", "secret", "key", "none", "null", "nil", "true", "false",
     "undefined", "example", "test", "dummy", "placeholder", "redacted", "hidden", "xxx", "changeme",
     "foo", "bar", "baz", "qux", "spam", "eggs", "mysecret", "mypassword"}
)


_SETTING = re.compile(r"[A-Za-z][A-Za-z_-]{2,}=\w")


def _is_alphabet(value: str) -> bool:
    """An alphabet or a run of one (`ABC...Z234567`, `abc...xyz0123456789`): half its neighbours consecutive."""
    steps = sum(ord(b) - ord(a) == 1 for a, b in itertools.pairwise(value))
    return steps * 2 >= len(value)


def _is_dummy(value: str) -> bool:
    """A value no one would call a secret: a template, a prompt, a mask, a word like 'password'."""
    from detect_secrets.filters.heuristic import is_prefixed_with_dollar_sign, is_templated_secret

    return (
        len(value) < 4
        or any(c.isspace() for c in value)
        or "EXAMPLE" in value
        or is_templated_secret(value)
        or is_prefixed_with_dollar_sign(value)
        or "%" in value
        or "{" in value
        or len(set(value)) == 1
        or not any(c.isalnum() for c in value)
        or value.lower().strip("_-") in _DUMMY_VALUES
        or (value.isupper() and "_" in value and value.replace("_", "").isalnum())  # an env var's name
    )


def fingerprint(cfg: RedactionConfig) -> str:
    """`Redactor(cfg).fingerprint()` without loading detect-secrets' plugins (for cache keys)."""
    from importlib.metadata import version

    payload = [PII_VERSION, version("detect-secrets"), cfg.fingerprint_fields()]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Redactor:
    """The enabled detectors of a `RedactionConfig`: `redact(content)` gives the new content and what was
    replaced. Pickles as its config (workers rebuild the plugins, a few ms)."""

    def __init__(self, cfg: RedactionConfig | None = None) -> None:
        self.cfg = cfg or RedactionConfig()
        self._p = _plugins() if (self.cfg.api_keys or self.cfg.passwords) else {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (Redactor, (self.cfg,))

    def fingerprint(self) -> str:
        """sha256 of the switches, this module's version and the detect-secrets release."""
        return fingerprint(self.cfg)

    # -- detectors: each returns (start, end, kind) in the content's character offsets

    def _tokens(self, text: str, raw: bytes) -> list[tuple[int, int, str]]:
        """Provider tokens, reached through the runs of 24+ token characters (one byte translation marks
        them; Python looks up each run's first bytes, and further only where a prefix starts)."""
        marked = raw.translate(_RUN_TABLE)
        ascii_ = len(raw) == len(text)
        run_keys, prefixes = self._p["run_keys"], self._p["prefixes"]
        # the patterns a run does not start, looked for where their literal ends or sits in the run
        sendgrid, mailchimp, oauth = self._p["around"]
        webhook = self._p["slack_webhook"]
        gcp_key_id = _GCP_KEY_ID
        has_mailchimp = b"-us" in raw
        out: list[tuple[int, int, str]] = []
        i = marked.find(_RUN_NEEDLE)
        while i != -1:
            j = marked.find(b" ", i + _RUN_MIN)
            j = len(marked) if j == -1 else j
            prefixed, around = False, None
            if (raw[i - 1 : i + 2] if i else b" " + raw[:2]) in run_keys:  # one set lookup for most runs
                prefixed = raw.startswith(prefixes, i)
                if i >= 5 and raw[i - 1] == 46:  # '.': SG.<22>.<43>, ya29.<token>
                    around = sendgrid if raw.startswith(b"SG.", i - 26) else oauth if raw.endswith(b"ya29.", 0, i) else None
                elif raw[i - 1] == 47 and raw.find(b"hooks.slack.com/", max(0, i - 70), i) != -1:  # '/'
                    around = webhook
            if has_mailchimp and around is None and j - i >= 35 and raw.find(b"-us", i, j) != -1:
                around = mailchimp
            elif j - i == 40 and raw.find(b"private_key_id", max(0, i - 24), i) != -1:
                around = gcp_key_id  # a Google service-account key file
            if prefixed or around:
                start = i if ascii_ else len(raw[:i].decode("utf-8", "surrogatepass"))
                end = start + (j - i)
                if prefixed:
                    out += self._prefixed_at(text, start)
                if around is not None:
                    for m in around.finditer(text, max(0, start - 90), min(len(text), end + 70)):
                        a, b = m.span(m.lastindex or 0)
                        if a < end and b > start:
                            out.append((a, b, KEY))
            i = marked.find(_RUN_NEEDLE, j)
        return out

    def _direct(self, text: str) -> list[tuple[int, int, str]]:
        """AWS access key ids, 20 characters: shorter than a run, found by their own (literal-led) regex."""
        return [
            (m.start(), m.end(), KEY)
            for m in self._p["direct"].finditer(text)
            # AWS's documentation keys; and DNA (`ACCA` + 16 of ACGT is the pattern too): a key id is random
            if "EXAMPLE" not in text[m.start() : m.end() + 12] and len(set(text[m.start() + 4 : m.end()])) > 4
        ]

    def _prefixed_at(self, text: str, start: int) -> list[tuple[int, int, str]]:
        for prefs, regexes in self._p["prefixed"]:
            if text.startswith(prefs, start):
                for rx in regexes:
                    m = rx.match(text, start)
                    if m is None or "EXAMPLE" in text[m.start() : m.end() + 12]:  # AWS's documentation keys
                        continue
                    if prefs == ("eyJ",):
                        if not self._p["jwt_valid"](m.group()):
                            continue
                        # detect-secrets' pattern ends lazily, before the signature: take it too
                        return [(m.start(), _JWT_SIGNATURE.match(text, m.end()).end(), KEY)]
                    return [(m.start(), m.end(), KEY)]
        return []

    def _private_keys(self, text: str) -> list[tuple[int, int, str]]:
        out = []
        for m in _PRIVATE_KEY_BEGIN.finditer(text):
            end_m = _PRIVATE_KEY_END.search(text, m.end(), m.end() + 20_000)
            if end_m is not None:
                if _KEY_BODY.search(text, m.end(), end_m.start()):
                    out.append((m.start(), end_m.end(), KEY))
            else:  # no END line (a truncated key): the base64 lines after the marker
                body = _BASE64_LINE.match(text, m.end() + (text[m.end() : m.end() + 2] == "\\n") * 2)
                if body and _KEY_BODY.search(text, body.start(), body.end()):
                    out.append((m.start(), body.end(), KEY))
        return out

    def _entropy(self, text: str) -> list[tuple[int, int, str]]:
        from detect_secrets.filters.heuristic import (
            is_likely_id_string,
            is_potential_uuid,
            is_sequential_string,
        )

        out = []
        b64, hexp = self._p["base64"], self._p["hex"]
        for rx in _QUOTED:
            for m in rx.finditer(text):
                value = m.group(1)
                if len(value) == 40 and "EXAMPLE" not in value:
                    line = _line_of(text, m.start())
                    if "aws" in line.lower() and self._p["aws_secret"].search(line):
                        out.append((m.start(1), m.end(1), KEY))
                        continue
                if _HEX_DIGITS.issuperset(value):
                    line = _line_of(text, m.start()).lower()
                    if (
                        not any(c in line for c in _KEY_CONTEXT)
                        or any(c in line for c in _HASH_CONTEXT)  # bigcode's is_hash: `key_sha256 = "..."`
                        or hexp.calculate_shannon_entropy(value) <= hexp.entropy_limit
                    ):
                        continue
                else:
                    if _DIGITS.isdisjoint(value) or _LETTERS.isdisjoint(value):
                        continue  # long words and identifiers
                    if "-" in value and "/" in value:
                        continue  # neither base64 alphabet has both: a path or a Hub repo id (`owner/model-7B`)
                    if "=" in value.rstrip("=") and _SETTING.search(value):
                        # `name=value` settings (`type=triton_BLOCK-M=128_BLOCK-K=64_...`: 419 of the 443 keys
                        # first found on the embedded dataset); base64 has `=` only as trailing padding
                        continue
                    # Shannon entropy is at most log2 of the distinct characters: most candidates stop here,
                    # before the plugin's 66-count computation
                    if len(set(value)) <= _B64_MIN_DISTINCT or b64.calculate_shannon_entropy(value) <= b64.entropy_limit:
                        continue
                    line = _line_of(text, m.start())
                if (
                    "EXAMPLE" in value  # AWS's documentation keys
                    or _is_alphabet(value)
                    or is_sequential_string(value)
                    or is_potential_uuid(value)
                    or is_likely_id_string(value, line)
                ):
                    continue
                out.append((m.start(1), m.end(1), KEY))
        return out

    def _keyword_lines(self, text: str, low: str) -> list[int]:
        """Starts of the lines holding a detect-secrets keyword: its password keywords and `secret`. Its
        key keywords (`api_key`, `client_key`, ...) are left to the entropy and provider detectors, which
        find such keys when they are real; measured on 10,000 installed files the keyword rule added one
        key there (a test's dummy), for a pass over every file (~3 % of curate's time) -- and so is
        `contraseña`, never seen, for another pass."""
        starts: set[int] = set()
        for trig in ("secret", "pwd", "pass"):
            i = low.find(trig)
            while i != -1:
                if trig == "pass":
                    ok = low.startswith("w", i + 4) or low[max(0, i - 9) : i].endswith(_PASS_PREFIXES)
                else:
                    ok = True
                if ok and (_QUOTE_AFTER.match(low, i + len(trig)) or _QUOTE_BEFORE.search(low, max(0, i - 40), i)):
                    starts.add(low.rfind("\n", 0, i) + 1)
                i = low.find(trig, i + len(trig))
        return sorted(starts)

    def _keywords(self, text: str, low: str) -> list[tuple[int, int, str]]:
        regexes = self._p["keyword"].QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP
        out = []
        for ls in self._keyword_lines(text, low):
            le = text.find("\n", ls)
            line = text[ls : len(text) if le == -1 else le]
            if "'" not in line and '"' not in line and "`" not in line:
                continue
            for rx, group in regexes.items():
                m = rx.search(line)
                if m is None:
                    continue
                a, b = m.span(group)
                value = line[a:b]
                name = _NAME_BEFORE.search(line, 0, a) if rx is not self._p["preceded"] else _NAME_AFTER.match(line, b + 1)
                name_ = name.group(1).lower() if name else ""
                if (
                    _is_dummy(value)
                    or (name is not None and _TARGET_LIST.fullmatch(line, 0, name.start(1)))  # `user, password = "u", "p"`
                    or not name_.endswith(_NAME_ENDS)  # `password_last_used = "..."`, `PWD_STATE: "yes"`
                    or any(w in value.lower() for w in _NAME_ENDS)  # `"password": "user_password"`: a name
                    or (name is not None and line.endswith("::", 0, name.start(1)))  # "AWS::AppSync::ApiKey": a type
                ):
                    continue
                kind = PASSWORD if any(w in name_ for w in _PASSWORD_WORDS) else KEY
                out.append((ls + a, ls + b, kind))
        return out

    def _urls(self, text: str) -> list[tuple[int, int, str]]:
        """`scheme://user:password@host`, from each `://` of a file that has an `@`."""
        out = []
        basic = self._p["basic_auth"]
        i = text.find("://")
        while i != -1:
            if (m := basic.match(text, i)) is not None:
                a, b = m.span(1)
                if not _is_dummy(text[a:b]):
                    out.append((a, b, PASSWORD))
            i = text.find("://", i + 3)
        return out

    # -- the API

    def spans(self, content: str | Doc) -> list[tuple[int, int, str]]:
        """(start, end, kind) of everything to replace, merged and sorted."""
        text = content if isinstance(content, str) else content.text
        cfg = self.cfg
        found: list[tuple[int, int, str]] = []
        has_at = "@" in text  # memchr: nearly free
        if cfg.emails and has_at:
            found += [(a, b, EMAIL) for a, b in _emails(text)]
        if cfg.ip_addresses:
            found += [(a, b, IP_ADDRESS) for a, b in _ipv4(text) + _ipv6(text)]
        if cfg.api_keys or cfg.passwords:
            raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content.raw
            low = text.lower() if isinstance(content, str) else content.lower
            if len(low) != len(text):  # a few code points lower to two: keep offsets aligned
                low = text.translate(_ASCII_LOWER)
            secrets = self._keywords(text, low) + (self._urls(text) if has_at else [])
            if cfg.api_keys:
                secrets += self._tokens(text, raw) + self._direct(text) + self._entropy(text)
                if "PRIVATE KEY" in text:
                    secrets += self._private_keys(text)
            found += [s for s in secrets if (cfg.api_keys if s[2] == KEY else cfg.passwords)]
        return _merge(found)

    def redact(self, content: str | Doc) -> tuple[str, list[Redaction]]:
        """The content with every span replaced by its placeholder, and one Redaction per span."""
        text = content if isinstance(content, str) else content.text
        spans = self.spans(content)
        if not spans:
            return text, []
        newlines = [m.start() for m in re.finditer("\n", text)] if len(spans) > 4 else None
        pieces, records, pos = [], [], 0
        for start, end, kind in spans:
            line = bisect.bisect_left(newlines, start) + 1 if newlines is not None else text.count("\n", 0, start) + 1
            pieces += [text[pos:start], PLACEHOLDERS[kind]]
            records.append(Redaction(kind, line, start, end, PLACEHOLDERS[kind]))
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces), records


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping spans become their union, of the strongest kind among them."""
    out: list[list[Any]] = []
    for start, end, kind in sorted(spans):
        if start >= end:
            continue
        if out and start < out[-1][1]:
            last = out[-1]
            last[1] = max(last[1], end)
            if _PRIORITY[kind] > _PRIORITY[last[2]]:
                last[2] = kind
        else:
            out.append([start, end, kind])
    return [(a, b, k) for a, b, k in out]
