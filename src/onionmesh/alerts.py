"""The alert hook: tell the operator about node death, takeover, upload failure
streaks and key or clock problems, by running a command and/or POSTing JSON
to a webhook.

Alerts never block or crash the daemon: the command and the webhook run with
timeouts, and their failures are logged. The same alert (kind and subject) is
sent at most once per ``min_interval`` (a different event of the same kind and subject,
e.g. another foreign descriptor, is not the same alert) so a flapping peer cannot flood the
operator. Subjects come from the network (peer ids), so that is not enough on
its own: an overall budget (``max_per_window`` alerts per ``window`` seconds)
bounds what any number of distinct subjects can cause, webhooks run on the
sink's own two threads (a hanging webhook cannot starve the event loop's default
executor), and at most ``max_pending`` deliveries are in flight; the rest are
dropped and counted.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

class AlertKind(enum.StrEnum):
    """Every alert the daemon sends (docs/operator.md §6 lists what triggers each)."""

    NODE_DEAD = "node_dead"
    NODE_RECOVERED = "node_recovered"
    TAKEOVER = "takeover"
    CONFLICT = "conflict"
    UPLOAD_FAILURE_STREAK = "upload_failure_streak"
    SIGNING_FAILURE = "signing_failure"
    START_REFUSED = "start_refused"
    KEY_PROBLEM = "key_problem"
    CLOCK_PROBLEM = "clock_problem"
    CLOCK_HOLD = "clock_hold"
    NODE_WITHDRAWN = "node_withdrawn"
    NODE_RESTORED = "node_restored"
    TOR_FALLBACK = "tor_fallback"
    WIREGUARD_RESTORED = "wireguard_restored"
    WIREGUARD_DOWN = "wireguard_down"


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    subject: str                  # what it is about: a peer id, an HSDir fingerprint, a key path
    summary: str                  # one human sentence, same words as the log line
    details: Mapping[str, str] = field(default_factory=dict)  # the event's facts, for scripts
    # What tells two events of one kind and subject apart (e.g. two different foreign
    # descriptors, both "hsdir"): only the same instance is held back for min_interval.
    instance: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AlertKind(self.kind))  # an unknown kind: ValueError

    def to_json(self, node_id: str, at: float) -> dict[str, object]:
        return {
            "node": node_id, "kind": self.kind.value, "subject": self.subject,
            "summary": self.summary, "details": dict(self.details), "time": at,
        }


class AlertSink:
    """Delivers alerts to the configured command and webhook."""

    def __init__(self, node_id: str, *, command: Sequence[str] = (), webhook: str | None = None,
                 min_interval: float = 60.0, timeout: float = 10.0, max_per_window: int = 20,
                 window: float = 60.0, max_pending: int = 20) -> None:
        if webhook is not None and not webhook.startswith(("http://", "https://")):
            raise ValueError(f"alert webhook must be an http(s) URL, got {webhook!r}")
        self.node_id = node_id
        self.command = tuple(command)
        self.webhook = webhook
        self.min_interval = min_interval
        self.timeout = timeout
        self._last_sent: dict[tuple[str, str, str], float] = {}
        self.max_per_window = max_per_window
        self.window = window
        self.max_pending = max_pending
        self._window_sends: list[float] = []  # times of deliveries in the current window
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None  # made at the first webhook
        self.sent = 0
        self.suppressed = 0
        self.failures = 0
        self.dropped = 0  # over the overall budget or too many in flight

    def close(self) -> None:
        """Stop the webhook threads (a replaced sink; running posts end by their timeout)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _within_budget(self, now: float) -> bool:
        self._window_sends = [t for t in self._window_sends if now - t < self.window]
        if len(self._window_sends) >= self.max_per_window or self._pending >= self.max_pending:
            return False
        self._window_sends.append(now)
        return True

    @property
    def enabled(self) -> bool:
        return bool(self.command) or self.webhook is not None

    async def send(self, alert: Alert, now: float) -> bool:
        """Deliver ``alert`` unless the same one went out less than ``min_interval`` ago."""
        if not self.enabled:
            return False
        key = (alert.kind, alert.subject, alert.instance)
        last = self._last_sent.get(key)
        if last is not None and now - last < self.min_interval:
            self.suppressed += 1
            return False
        if not self._within_budget(now):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("alert budget exhausted (%d per %g s, %d in flight): %d dropped",
                            self.max_per_window, self.window, self._pending, self.dropped)
            return False
        self._last_sent[key] = now
        if len(self._last_sent) > 4 * self.max_per_window:  # forget expired subjects
            self._last_sent = {k: t for k, t in self._last_sent.items()
                               if now - t < self.min_interval}
        body = json.dumps(alert.to_json(self.node_id, now)).encode()
        self._pending += 1
        try:
            results = await asyncio.gather(
                self._run_command(alert, body), self._post_webhook(body), return_exceptions=True
            )
        finally:
            self._pending -= 1
        ok = all(result is True for result in results)
        if ok:
            self.sent += 1
        return ok

    async def _run_command(self, alert: Alert, body: bytes) -> bool:
        if not self.command:
            return True
        env = dict(os.environ, ONIONMESH_ALERT_KIND=alert.kind.value,
                   ONIONMESH_ALERT_SUBJECT=alert.subject, ONIONMESH_ALERT_SUMMARY=alert.summary,
                   ONIONMESH_NODE_ID=self.node_id)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=env,
            )
        except OSError as exc:
            self.failures += 1
            log.warning("alert command %s could not start: %s", self.command[0], exc.strerror)
            return False
        try:
            _, stderr = await asyncio.wait_for(process.communicate(body), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            self.failures += 1
            log.warning("alert command %s timed out after %g s", self.command[0], self.timeout)
            return False
        if process.returncode != 0:
            self.failures += 1
            log.warning("alert command %s exited %s: %s", self.command[0], process.returncode,
                        stderr.decode(errors="replace").strip()[:200])
            return False
        return True

    async def _post_webhook(self, body: bytes) -> bool:
        if self.webhook is None:
            return True
        request = urllib.request.Request(
            self.webhook, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "onionmesh"},
        )

        def post() -> int:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status)

        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=2,
                                                thread_name_prefix="onionmesh-webhook")
        try:
            status = await asyncio.get_running_loop().run_in_executor(self._executor, post)
        except OSError as exc:
            self.failures += 1
            log.warning("alert webhook failed: %s", exc)
            return False
        if not 200 <= status < 300:
            self.failures += 1
            log.warning("alert webhook answered HTTP %s", status)
            return False
        return True
