"""TaskOwnership: an upstream task belongs to the caller whose call created it, on every
replica (`holdgate.policy.tasks` says how tasks/* requests are decided).

Request side (`resolve`, awaited by the PolicyEnforcer before it decides): the record of
each task a tasks/* request names, read from the store (off the loop), and for tasks/list
the caller's own task keys and the upstream's cursor inside a sealed one.

Response side (a response stage, after the PolicyEnforcer): a call's answer that creates
a task claims it for the caller (first claim wins in the store; a task id another caller
holds is withheld); answers to tasks/* carry the task's record (so the task's payload is
masked with the creating tool's profiles and recorded as its result) and must be about
the task asked for; tasks/list answers keep the caller's tasks only, with sealed cursors;
status notifications about a task that is not the caller's are dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from holdgate.addons.flowstate import FlowState, MessageContext, session_key, state
from holdgate.identity import Identity
from holdgate.policy.rules import Decision, Policy
from holdgate.policy.tasks import (
    FOREIGN_TASK,
    INVALID_TASK_CURSOR,
    decide_task_request,
    is_task_request,
)
from holdgate.protocol.jsonrpc import INTERNAL_ERROR, Body, Message, error_object
from holdgate.protocol.tasks import (
    LIST_METHOD,
    TASK_METHODS,
    CreatedTask,
    CursorSeal,
    answered_task_ids,
    created_task,
    expires_at,
    invalid_cursor,
    notified_task_id,
    own_listing,
    requested_task_id,
    task_key,
    unknown_task,
)
from holdgate.store import StoreError, TaskRecord

if TYPE_CHECKING:
    from holdgate.addons.audit_store import AuditStore

logger = logging.getLogger("holdgate")

# A task created through another replica may reach the store a moment after its creator
# polls it here: a miss is looked up again after these pauses (seconds) before it is
# refused as unknown (which also slows down whoever guesses ids).
MISS_PAUSES = (0.05, 0.1, 0.2, 0.4)
REMEMBERED = 100_000


def message_key(msg_id: Any) -> str:
    return json.dumps(msg_id)


class TaskOwnership:
    """Who owns each task, for the PolicyEnforcer (request side) and as a response stage."""

    def __init__(self, audit: AuditStore) -> None:
        self.audit = audit
        self.known: dict[str, TaskRecord] = {}  # confirmed by the store (bounded, oldest out)
        self.claims: dict[str, asyncio.Task[TaskRecord | None]] = {}
        # answers on the legacy transport arrive on another flow: (session, id) -> lookup
        self.by_request: dict[tuple[str, str], TaskRecord | frozenset[str] | None] = {}
        self._seal: tuple[bytes, CursorSeal] | None = None

    # --- request side ---

    async def resolve(self, flow: http.HTTPFlow, body: Body) -> Body:
        """Look up what the body's tasks/* requests name; returns the body to decide (a
        sealed tasks/list cursor replaced by the upstream's own)."""
        if not any(is_task_request(m) for m in body.messages):
            return body
        st = state(flow)
        identity, upstream = st.identity, st.route.upstream
        # On the legacy transport answers arrive on the stream's flow, not this one.
        legacy = session_key(flow) if "mcp-session-id" not in flow.request.headers else None
        messages = list(body.messages)
        for index, message in enumerate(messages):
            if not is_task_request(message):
                continue
            key = message_key(message.id)
            if message.method == LIST_METHOD:
                owned = frozenset(
                    await self.audit.run(
                        lambda store: store.task_keys_of(identity.user, upstream.name)
                    )
                )
                st.task_listing = owned
                found: TaskRecord | frozenset[str] | None = owned
                messages[index] = self._opened_cursor(st, identity, upstream.name, message)
            else:
                task_id = requested_task_id(message.raw)
                record = None if task_id is None else await self.lookup(upstream.name, task_id)
                st.task_requests[key] = found = record
            if legacy is not None:
                if len(self.by_request) >= REMEMBERED:
                    self.by_request.pop(next(iter(self.by_request)))
                self.by_request[(legacy, key)] = found
        return Body(tuple(messages), body.is_batch)

    def _opened_cursor(
        self, st: FlowState, identity: Identity, upstream: str, message: Message
    ) -> Message:
        """The tasks/list request with the upstream's cursor in place of the sealed one; a
        cursor that does not open for this caller is noted, to be refused."""
        params = message.raw.get("params")
        if not isinstance(params, dict) or "cursor" not in params:
            return message
        opened = self.seal(st).open(identity.user, upstream, params["cursor"])
        if opened is None:
            st.task_bad_cursors.add(message_key(message.id))
            return message
        raw = {**message.raw, "params": {**params, "cursor": opened}}
        return Message(raw, message.kind, message.method, message.id, message.target, None)

    async def lookup(self, upstream: str, task_id: str) -> TaskRecord | None:
        """The unexpired record of a task, waiting for this replica's claim of it if one
        is in flight; None when no replica recorded it."""
        key = task_key(upstream, task_id)
        claim = self.claims.get(key)
        if claim is not None:
            await asyncio.shield(claim)
        found = self.known.get(key)
        if found is not None and (found.expires is None or found.expires > time.time()):
            return found
        for pause in (0.0, *MISS_PAUSES):
            if pause:
                await asyncio.sleep(pause)
            record = await self.audit.run(lambda store: store.find_task(key))
            if record is not None:
                self._remember(record)
                return record
        return None

    def decide(
        self, st: FlowState, policy: Policy, identity: Identity, upstream: str, message: Message
    ) -> Decision:
        if message_key(message.id) in st.task_bad_cursors:
            return Decision(
                "deny", INVALID_TASK_CURSOR, "the cursor is not one the gateway gave this caller"
            )
        record = st.task_requests.get(message_key(message.id))
        return decide_task_request(policy, identity, upstream, message, record)

    @staticmethod
    def refusal(message: Message, decision: Decision) -> dict[str, Any] | None:
        """What the client gets instead of a policy denial: an unknown task (or cursor),
        exactly as the upstream answers one."""
        if decision.rule == FOREIGN_TASK:
            return unknown_task(message.id, requested_task_id(message.raw) or "")
        if decision.rule == INVALID_TASK_CURSOR:
            return invalid_cursor(message.id)
        return None

    # --- response side ---

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any:
        if not isinstance(message, dict):
            return message
        st = state(flow)
        if "id" not in message:
            return self._police_notification(st, message, context)
        answers = context.answers
        if "method" in message or answers is None:
            return message
        method = answers[0]
        if method == "tools/call":
            created = created_task(message.get("result"))
            if created is None or answers[1] is None:
                return message
            record = self._claim(flow, created, message["id"], answers[1])
            if record is None:
                return _withheld(message, "the upstream answered with a task another caller holds")
            # its status notifications may follow on this stream before the claim is stored
            st.task_requests[message_key(message["id"])] = context.task = record
            return message
        if method in TASK_METHODS:
            return self._task_answer(flow, st, message, context)
        if method == LIST_METHOD:
            return self._listing(flow, st, message)
        return message

    def _task_answer(
        self, flow: http.HTTPFlow, st: FlowState, message: dict[str, Any], context: MessageContext
    ) -> dict[str, Any]:
        key = message_key(message["id"])
        record = st.task_requests.get(key)
        if record is None:
            session = session_key(flow)
            found = self.by_request.pop((session, key), None) if session else None
            record = found if isinstance(found, TaskRecord) else None
        if record is None or not st.authenticated or record.owner != st.identity.user:
            return _withheld(message, "the gateway cannot tie this answer to a task of the caller")
        named = answered_task_ids(message.get("result"))
        if any(task_key(record.upstream, task_id) != record.task_key for task_id in named):
            return _withheld(message, "the upstream answered about another task than the one asked")
        context.task = record
        return message

    def _listing(self, flow: http.HTTPFlow, st: FlowState, message: dict[str, Any]) -> Any:
        result = message.get("result")
        if not isinstance(result, dict):
            return message
        owned = st.task_listing
        if owned is None:
            session = session_key(flow)
            key = message_key(message["id"])
            found = self.by_request.pop((session, key), None) if session else None
            owned = found if isinstance(found, frozenset) else frozenset()
        upstream, identity = st.route.upstream, st.identity
        kept, hidden = own_listing(
            result, lambda task_id: task_key(upstream.name, task_id) in owned
        )
        st.hidden += hidden
        cursor = kept.pop("nextCursor", None)
        if isinstance(cursor, str):
            kept["nextCursor"] = self.seal(st).seal(identity.user, upstream.name, cursor)
        return {**message, "result": kept}

    def _police_notification(
        self, st: FlowState, message: dict[str, Any], context: MessageContext
    ) -> dict[str, Any] | None:
        task_id = notified_task_id(message)
        if task_id is None:
            return message
        record = None
        if st.authenticated:
            record = self.known.get(task_key(st.route.upstream.name, task_id))
            if record is None:  # the flow's own tasks/* request named it
                key = task_key(st.route.upstream.name, task_id)
                record = next(
                    (r for r in st.task_requests.values() if r and r.task_key == key), None
                )
            if record is not None and record.owner != st.identity.user:
                record = None
        if record is None:
            context.dropped = "a status notification about a task that is not the caller's"
            return None
        context.task = record
        return message

    def _claim(
        self, flow: http.HTTPFlow, created: CreatedTask, msg_id: Any, tool: str
    ) -> TaskRecord | None:
        """The caller's record of a task its call created, its store claim under way; None
        when the task is known to be another caller's."""
        st = state(flow)
        identity, upstream = st.identity, st.route.upstream.name
        key = task_key(upstream, created.task_id)
        held = self.known.get(key)
        if held is not None and held.owner != identity.user:
            logger.error(
                "holdgate: upstream %s gave %s a task id another caller holds; withheld",
                upstream,
                identity.user,
            )
            return None
        now = time.time()
        record = TaskRecord(
            task_key=key,
            owner=identity.user,
            upstream=upstream,
            session_id=st.session,
            tool=tool,
            call_flow_id=flow.id,
            call_jsonrpc_id=message_key(msg_id),
            created=now,
            expires=expires_at(now, created),
        )
        if held is None and key not in self.claims:
            self.claims[key] = asyncio.get_running_loop().create_task(self._store_claim(record))
        return held or record

    async def _store_claim(self, record: TaskRecord) -> TaskRecord | None:
        try:
            held = await self.audit.run(lambda store: store.claim_task(record))
        except StoreError as exc:
            # Not recorded: the task is nobody's, so nobody gets at it through the gateway.
            logger.error("holdgate: the owner of a new task was not recorded: %s", exc)
            return None
        finally:
            self.claims.pop(record.task_key, None)
        self._remember(held)
        if held.owner != record.owner:
            logger.error(
                "holdgate: upstream %s gave %s a task id %s holds; it stays %s's",
                record.upstream,
                record.owner,
                held.owner,
                held.owner,
            )
        return held

    # --- shared ---

    def _remember(self, record: TaskRecord) -> None:
        if len(self.known) >= REMEMBERED:
            self.known.pop(next(iter(self.known)))
        self.known[record.task_key] = record

    def seal(self, st: FlowState) -> CursorSeal:
        """The cursor seal under the config's digest key (shared by replicas)."""
        key = self.audit.key(st.route.config)
        if self._seal is None or self._seal[0] != key:
            self._seal = (key, CursorSeal(key))
        return self._seal[1]


def _withheld(message: dict[str, Any], why: str) -> dict[str, Any]:
    logger.error("holdgate: a task answer was withheld: %s", why)
    return error_object(
        message.get("id"), INTERNAL_ERROR, f"the gateway withheld this answer: {why}"
    )
