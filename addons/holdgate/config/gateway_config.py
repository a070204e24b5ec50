"""The gateway config file (`holdgate_config`): parsed, validated and compiled in one go.

Every section parser reports mistakes through `ConfigError` with file, line and key,
into one `Problems` collector: each item of each section is checked, so a file with
several mistakes gets them all in one `ConfigErrors`, in file order.
Secrets (`${env:…}`, `${file:…}`) are resolved here, at load, so a missing one stops
the gateway at start rather than failing a request later. Commands that read a config
only for its rules (review, policy check/explain/test/replay) load it with
`secrets=False`: no secret is read and each becomes a placeholder, so rules can be
checked where the gateway's secrets are not (`policy check --secrets` reads them too).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from holdgate.config.checkpoints_config import CheckpointsConfig, parse_checkpoints
from holdgate.config.webhook_config import WebhookConfig, parse_webhook
from holdgate.configfile import (
    ConfigError,
    ConfigErrors,
    Node,
    Problems,
    declared_names,
    keys_then,
    load_yaml_file,
    parse_yaml,
)
from holdgate.credentials import (
    CredentialProvider,
    UpstreamCredentials,
    parse_credential_providers,
    parse_upstream_credentials,
)
from holdgate.feeds.feeds_config import FeedConfig, parse_feeds
from holdgate.identity import (
    IdentityConfig,
    TrustedHeader,
    parse_identity,
    parse_trusted_header,
)
from holdgate.masking.injected import MAX_SECRET_BYTES, forms_for
from holdgate.masking.masker import MaskingPolicy, parse_masking
from holdgate.policy.rules import Action, Policy, parse_rules
from holdgate.policy.tool_pins import ToolChangePolicy
from holdgate.protocol.rebinding import (
    HostPattern,
    OriginPattern,
    parse_host_pattern,
    parse_origin_pattern,
)
from holdgate.protocol.sessionless import GROUPED_PER_CALLER
from holdgate.telemetry.metrics_config import MetricsConfig, parse_metrics

TOP_KEYS = {
    "version",
    "identity",
    "upstreams",
    "rules",
    "masking",
    "detectors",
    "approvals",
    "audit",
    "checkpoints",
    "feeds",
    "hash_key",
    "server_requests",
    "response_headers",
    "listing_ttl",
    "review",
    "metrics",
    "admin",
    "sessions",
    "allowed_hosts",
    "allowed_origins",
    "credential_providers",
}
UPSTREAM_KEYS = {"name", "prefix", "host", "url", "inject", "on_tool_change", "credentials"}
TOOL_CHANGE_KEYS = {"action", "approvers", "timeout"}
INJECT_KEYS = {"headers", "pass_cookies"}
RESPONSE_HEADER_KEYS = {"drop", "mask"}


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str | None = None
    prefix: str | None = None
    host: str | None = None
    inject_headers: tuple[tuple[str, str], ...] = ()
    pass_cookies: bool = False
    on_tool_change: ToolChangePolicy = field(default_factory=ToolChangePolicy)
    credentials: UpstreamCredentials | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Its injected values and its credential provider's client secret."""
        provider = self.credentials.provider.secrets if self.credentials else ()
        return (*(value for _, value in self.inject_headers), *provider)

    @property
    def sends_credentials(self) -> bool:
        """The gateway puts a credential of its own in what it forwards to this upstream."""
        return bool(self.inject_headers) or self.credentials is not None

    @property
    def open_destination(self) -> bool:
        """No `url` or `host`: as a regular proxy it forwards to any server a client names."""
        return self.url is None and self.host is None

    @property
    def host_name(self) -> str | None:
        """`host` without its port, lowercased (`host: name[:port]`)."""
        return split_host(self.host)[0] if self.host else None

    @property
    def host_port(self) -> int | None:
        return split_host(self.host)[1] if self.host else None


@dataclass(frozen=True)
class ResponseHeaders:
    """What the client gets of the upstream's response headers (`response_headers:`).

    Header values are masked like bodies unless `mask: false`; `Set-Cookie` is dropped
    unless the upstream has `pass_cookies: true`; `drop` names more headers to remove.
    """

    drop: frozenset[str] = frozenset()
    mask: bool = True


@dataclass(frozen=True)
class ApprovalsConfig:
    webhook: WebhookConfig | None = None
    public_url: str | None = None


@dataclass(frozen=True)
class AdminConfig:
    """`admin:`: who the admin listener (approvals API, /metrics) trusts besides JWTs and API
    keys. Its own `trusted_header`, off unless set: the MCP listener's trust in an auth proxy
    never reaches the admin port, where no proxy stands in front."""

    trusted_header: TrustedHeader | None = None


@dataclass(frozen=True)
class SessionsConfig:
    """`sessions: {grouped_per_caller: N}`: how many sessions Holdgate groups for one
    identity on one upstream from activity without a session id (open: active within the
    idle split) before that caller's further clients share one overflow session."""

    grouped_per_caller: int = GROUPED_PER_CALLER


@dataclass(frozen=True)
class ReviewConfig:
    """`review: {reviewers: [group, ...]}`: who may certify access over the approvals API."""

    reviewers: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    file: str
    digest: str
    identity: IdentityConfig | None
    upstreams: tuple[Upstream, ...]
    policy: Policy
    masking: MaskingPolicy
    credential_providers: tuple[CredentialProvider, ...] = ()
    audit: Literal["required", "best_effort"] = "required"
    server_requests: Action = "allow"
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    response_headers: ResponseHeaders = field(default_factory=ResponseHeaders)
    checkpoints: CheckpointsConfig | None = None
    feeds: tuple[FeedConfig, ...] = ()
    review: ReviewConfig = field(default_factory=ReviewConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    # How long a client may cache a filtered listing (MCP 2026-07-28 `ttlMs`): a cached list
    # must not outlive a policy reload by much.
    listing_ttl: float = 60.0
    hash_key: bytes | None = None
    # Names clients may reach the gateway by, beyond its own address (DNS rebinding).
    allowed_hosts: tuple[HostPattern, ...] = ()
    allowed_origins: tuple[OriginPattern, ...] = ()
    text: str = field(default="", repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never be written anywhere (injected credentials, keys)."""
        feeds = tuple(f.secret for f in self.feeds if f.secret)
        hook = self.approvals.webhook
        webhook = (hook.url,) if hook is not None and hook.referenced else ()
        providers = tuple(s for p in self.credential_providers for s in p.secrets)
        found = (
            *(s for up in self.upstreams for s in up.secrets if s),
            *feeds,
            *webhook,
            *providers,
        )
        return tuple(dict.fromkeys(found))

    def redacted_text(self) -> str:
        """The file as written, with any secret written into it literally blanked out."""
        text = self.text
        literal = [*self.secrets, self.hash_key.decode() if self.hash_key else ""]
        for secret in sorted((s for s in literal if s), key=len, reverse=True):
            text = text.replace(secret, "[secret]")
        return text


def load_config(path: str | os.PathLike[str], *, secrets: bool = True) -> GatewayConfig:
    """The config at `path`; `secrets=False` for its rules only (no secret is read).
    Raises ConfigErrors with every mistake of the file."""
    try:
        doc, raw = load_yaml_file(path)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    return build_config(
        doc.root,
        str(path),
        hashlib.sha256(raw).hexdigest(),
        raw.decode("utf-8", "replace"),
        secrets=secrets,
    )


def parse_config_text(text: str, file: str = "<config>") -> GatewayConfig:
    try:
        doc = parse_yaml(text, file)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    return build_config(doc.root, file, hashlib.sha256(text.encode()).hexdigest(), text)


def build_config(
    root: Node, file: str, digest: str, text: str = "", *, secrets: bool = True
) -> GatewayConfig:
    """The config, or ConfigErrors naming every mistake: each section is parsed even after
    another failed, and an item with a mistake is left out so nothing refers to it twice."""
    if root.missing:
        raise ConfigErrors([ConfigError("the file is empty; start with `version: 1`", file=file)])
    if not isinstance(root.value, dict):
        raise ConfigErrors([root.error(f"expected a mapping of sections, got {root.value!r}")])
    found = Problems()
    found.attempt(root.mapping, TOP_KEYS, {"version"})
    if root.has("version") and root.child("version").value != 1:
        found.add(root.child("version").error("only `version: 1` is supported"))
    providers_node = root.child("credential_providers")
    providers = parse_credential_providers(providers_node, found, secrets)
    known_providers = (providers, declared_names(providers_node))
    upstreams = _parse_upstreams(root.child("upstreams"), secrets, known_providers, found)
    policy = parse_rules(root.child("rules"), found)
    _check_rule_upstreams(root, upstreams, found)
    hash_key_node = root.child("hash_key")
    hash_key = None
    masking_key = None
    if not hash_key_node.missing:
        hash_key = found.attempt(lambda: hash_key_node.secret(resolve=secrets).encode())
        # A hash_key that failed is reported; profiles with `strategy: hash` are not blamed.
        masking_key = hash_key if hash_key is not None else b"unavailable"
    masking = parse_masking(
        root.child("masking"), root.child("detectors"), hash_key=masking_key, problems=found
    )
    identity = parse_identity(root.child("identity"), found)
    audit = found.attempt(root.child("audit").choice, ("required", "best_effort"), "required")
    server_requests = found.attempt(
        root.child("server_requests").choice, ("allow", "deny"), "allow"
    )
    approvals = found.attempt(_parse_approvals, root.child("approvals"), secrets)
    response_headers = found.attempt(_parse_response_headers, root.child("response_headers"))
    checkpoints = found.attempt(parse_checkpoints, root.child("checkpoints"), secrets)
    feeds = parse_feeds(root.child("feeds"), found, secrets)
    listing_ttl = found.attempt(root.child("listing_ttl").duration, 60.0)
    review = found.attempt(_parse_review, root.child("review"))
    metrics = found.attempt(parse_metrics, root.child("metrics"), identity is not None)
    admin = found.attempt(_parse_admin, root.child("admin"))
    sessions = found.attempt(_parse_sessions, root.child("sessions"))
    allowed_hosts = _parse_patterns(root.child("allowed_hosts"), parse_host_pattern, found)
    allowed_origins = _parse_patterns(root.child("allowed_origins"), parse_origin_pattern, found)

    def assemble() -> GatewayConfig:
        return GatewayConfig(
            file=file,
            digest=digest,
            identity=identity,
            upstreams=upstreams,
            policy=policy,
            masking=masking,
            credential_providers=providers,
            audit=audit or "required",  # type: ignore[arg-type]
            server_requests=server_requests or "allow",  # type: ignore[arg-type]
            approvals=approvals or ApprovalsConfig(),
            response_headers=response_headers or ResponseHeaders(),
            checkpoints=checkpoints,
            feeds=feeds,
            review=review or ReviewConfig(),
            metrics=metrics or MetricsConfig(),
            admin=admin or AdminConfig(),
            sessions=sessions or SessionsConfig(),
            listing_ttl=60.0 if listing_ttl is None else listing_ttl,
            hash_key=hash_key,
            allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins,
            text=text,
        )

    # Sections parsed in the call itself are collected too; none is used if any failed.
    config = found.attempt(assemble)
    found.raise_if_any()
    if config is None:  # cannot happen: a failed assemble() is in `found`
        raise ConfigErrors([ConfigError("the config could not be built", file=file)])
    return config


def _check_rule_upstreams(root: Node, upstreams: tuple[Upstream, ...], problems: Problems) -> None:
    """Every upstream a rule names exists, in every rule (one with other mistakes too). A
    name of an upstream that failed to parse is not reported again (its own mistake is),
    nor any when the list could not be read."""
    declared = declared_names(root.child("upstreams"))
    if declared is None:
        return
    known = {u.name for u in upstreams}
    rules = root.child("rules")
    count = len(rules.value) if isinstance(rules.value, list) else 0
    for i in range(count):
        node = rules.child(i).child("match").child("upstream")
        try:
            names = node.strings()
        except ConfigError:
            continue  # the rule's own mistake, reported with the rule
        for name in names:
            if name not in known and name not in declared:
                problems.add(
                    node.error(
                        f"no upstream named {name!r}; known: {', '.join(sorted(known)) or 'none'}"
                    )
                )


KnownProviders = tuple[tuple[CredentialProvider, ...], set[str] | None]


def _parse_upstreams(
    node: Node, secrets: bool, providers: KnownProviders, problems: Problems
) -> tuple[Upstream, ...]:
    if node.missing:
        problems.add(node.error("missing `upstreams`: list at least one MCP server to protect"))
        return ()
    out: list[Upstream] = []
    items = problems.elements(node)
    for item in items:
        upstream = problems.attempt(_parse_upstream, item, secrets, providers, out)
        if upstream is not None:
            out.append(upstream)
    if not items and isinstance(node.value, list):
        problems.add(node.error("`upstreams` is empty: list at least one MCP server to protect"))
    return tuple(out)


def _parse_upstream(
    item: Node, secrets: bool, providers: KnownProviders, before: list[Upstream]
) -> Upstream:
    return keys_then(
        item, UPSTREAM_KEYS, {"name"}, lambda: _upstream_fields(item, secrets, providers, before)
    )


def _upstream_fields(
    item: Node, secrets: bool, providers: KnownProviders, before: list[Upstream]
) -> Upstream:
    name = item.child("name").string()
    if any(u.name == name for u in before):
        raise item.child("name").error(f"upstream {name!r} is defined twice")
    url = item.child("url").optional_string()
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise item.child("url").error("expected an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise item.child("url").error(
                "a user or password in the URL would be shown wherever the upstream is named "
                "(logs, the record, error answers); give the credential in `inject:` instead"
            )
    prefix = item.child("prefix").optional_string()
    if prefix is not None and (not prefix.startswith("/") or prefix.endswith("/")):
        raise item.child("prefix").error("a prefix starts with '/' and has no trailing '/'")
    if prefix is not None and url is None:
        raise item.child("prefix").error("a prefix (reverse mode) needs the upstream's `url`")
    host = item.child("host").optional_string()
    if host is not None and split_host(host)[0] == "":
        raise item.child("host").error("expected a host name, optionally with :port")
    if prefix is None and host is None and any(u.prefix is None and u.host is None for u in before):
        raise item.error("only one upstream may have neither `prefix` nor `host`")
    inject = item.child("inject")
    headers: list[tuple[str, str]] = []
    pass_cookies = False
    if not inject.missing:
        inject.mapping(INJECT_KEYS)
        for header, value in inject.child("headers").items() if inject.has("headers") else ():
            resolved = value.secret(resolve=secrets)
            size = len(resolved.encode("utf-8", "surrogatepass"))
            if size > MAX_SECRET_BYTES:
                raise value.error(
                    f"the value is {size} bytes; an injected header may have at most "
                    f"{MAX_SECRET_BYTES} (every response is searched for it in all its forms)"
                )
            headers.append((header, resolved))
        pass_cookies = inject.child("pass_cookies").boolean(default=False)
    credentials = parse_upstream_credentials(
        item.child("credentials"),
        *providers,
        any(header.lower() == "authorization" for header, _ in headers),
    )
    upstream = Upstream(
        name,
        url,
        prefix,
        host,
        tuple(headers),
        pass_cookies,
        _parse_tool_change(item.child("on_tool_change")),
        credentials,
    )
    if secrets:
        forms_for(upstream.secrets)  # compiled here, off the proxy's loop on a reload
    return upstream


def _parse_tool_change(node: Node) -> ToolChangePolicy:
    """`on_tool_change: deny | alert`, or a mapping `{action: approve, approvers: [...]}`."""
    if node.missing:
        return ToolChangePolicy()
    if not isinstance(node.value, dict):
        action = node.choice(("deny", "approve", "alert"))
        if action == "approve":
            raise node.error(
                "`approve` needs approvers: write "
                "`on_tool_change: {action: approve, approvers: [group, ...]}`"
            )
        return ToolChangePolicy(action)  # type: ignore[arg-type]
    node.mapping(TOOL_CHANGE_KEYS, required={"action"})
    action = node.child("action").choice(("deny", "approve", "alert"))
    approvers = node.child("approvers").strings()
    if action == "approve" and not approvers:
        raise node.child("action").error("`approve` needs `approvers: [group, ...]`")
    if action != "approve":
        for key in ("approvers", "timeout"):
            if node.has(key):
                raise node.child(key).error(f"`{key}` only applies to `action: approve`")
    return ToolChangePolicy(
        action,  # type: ignore[arg-type]
        approvers,
        node.child("timeout").duration(default=600.0),
    )


def _parse_approvals(node: Node, secrets: bool) -> ApprovalsConfig:
    if node.missing:
        return ApprovalsConfig()
    node.mapping({"webhook", "public_url"})
    return ApprovalsConfig(
        webhook=parse_webhook(node.child("webhook"), secrets),
        public_url=node.child("public_url").optional_string(),
    )


def _parse_admin(node: Node) -> AdminConfig:
    if node.missing:
        return AdminConfig()
    node.mapping({"trusted_header"})
    trusted_node = node.child("trusted_header")
    trusted = parse_trusted_header(trusted_node)
    if trusted is not None and any(net.prefixlen == 0 for net in trusted.networks):
        raise trusted_node.child("from").error(
            "trusts every address: any process that reaches the admin listener could decide "
            "approvals as any approver; name only your auth proxy's address "
            "(e.g. `from: [127.0.0.1/32]` when it runs on this host)"
        )
    return AdminConfig(trusted)


MAX_GROUPED_PER_CALLER = 10_000


def _parse_sessions(node: Node) -> SessionsConfig:
    if node.missing:
        return SessionsConfig()
    node.mapping({"grouped_per_caller"})
    cap = node.child("grouped_per_caller")
    if cap.missing:
        return SessionsConfig()
    value = cap.value
    if isinstance(value, bool) or not isinstance(value, int):
        raise cap.error(f"expected a whole number of sessions like 16; got {value!r}")
    if not 1 <= value <= MAX_GROUPED_PER_CALLER:
        raise cap.error(
            f"expected 1 to {MAX_GROUPED_PER_CALLER} (sessions one identity may have open "
            f"on one upstream before its further clients share one); got {value}"
        )
    return SessionsConfig(value)


def _parse_patterns[T](node: Node, parse: Callable[[str], T], found: Problems) -> tuple[T, ...]:
    """`allowed_hosts:` / `allowed_origins:`: a list of patterns, each checked on its own."""
    if node.missing or node.value is None:
        return ()
    patterns: list[T] = []
    for element in node.elements() if isinstance(node.value, list) else [node]:
        text = found.attempt(element.string)
        if text is None:
            continue
        try:
            patterns.append(parse(text))
        except ValueError as exc:
            found.add(element.error(f"{text!r}: {exc}"))
    return tuple(patterns)


def _parse_review(node: Node) -> ReviewConfig:
    if node.missing:
        return ReviewConfig()
    node.mapping({"reviewers"}, required={"reviewers"})
    reviewers = node.child("reviewers").strings()
    if not reviewers:
        raise node.child("reviewers").error(
            "name at least one group whose members may certify access: `reviewers: [compliance]`"
        )
    return ReviewConfig(reviewers)


def _parse_response_headers(node: Node) -> ResponseHeaders:
    if node.missing:
        return ResponseHeaders()
    node.mapping(RESPONSE_HEADER_KEYS)
    return ResponseHeaders(
        drop=frozenset(name.lower() for name in node.child("drop").strings()),
        mask=node.child("mask").boolean(default=True),
    )


def split_host(value: str) -> tuple[str, int | None]:
    """`name[:port]` (or `[v6]:port`) -> (lowercased name, port); ("", None) if malformed."""
    parts = urlsplit("//" + value)
    try:
        port = parts.port
    except ValueError:
        return "", None
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        return "", None
    return (parts.hostname or ""), port


def route(
    upstreams: tuple[Upstream, ...], host: str, port: int, path: str
) -> tuple[Upstream, str] | None:
    """Pick the upstream for a request: by path prefix, then by host, then the catch-all.

    `host` and `port` are where the request really goes (never the client's Host header);
    `path` excludes the query string. Returns the upstream and the path to send it
    (prefix removed).
    """
    for up in upstreams:
        if up.prefix and (path == up.prefix or path.startswith(up.prefix + "/")):
            rest = path[len(up.prefix) :] or "/"
            return up, rest
    for up in upstreams:
        if (
            up.host
            and not up.prefix
            and up.host_name == host.lower()
            and up.host_port in (None, port)
        ):
            return up, path
    for up in upstreams:
        if not up.prefix and not up.host:
            return up, path
    return None


def path_problem(path: str) -> str | None:
    """Why a request path is not canonical, or None.

    Upstreams resolve dot segments and percent-escapes their own way, so a path that a
    prefix rule and the upstream could read differently is refused, not normalised.
    """
    if "\\" in path or any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        return "it contains a backslash, a space or a control character"
    lowered = path.lower()
    if any(code in lowered for code in ("%2f", "%5c", "%00", "%2e")):
        return "it contains an encoded '/', '\\', '.' or NUL"
    segments = unquote(path).split("/")[1:]
    if any(segment in (".", "..") for segment in segments):
        return "it contains '.' or '..' segments"
    if "" in segments[:-1]:
        return "it contains an empty segment ('//')"
    return None
