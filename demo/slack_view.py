"""The Slack step's two translations: a report read off the queue -> the SNS-to-Lambda event the notifier gets, and
a Block Kit post the local webhook received -> the plain text Slack would show."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from emulator.observe import Received

MAX_LINES_PER_POST = 40

_LINK = re.compile(r"<([^<>|]+)\|([^<>]+)>")  # <url|label>
_BARE_LINK = re.compile(r"<([^<>|]+)>")  # <url>
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


def sns_event(received: Received) -> dict[str, Any]:
    """One SNS-to-Lambda event (one record, as SNS invokes a subscribed function) from the envelope on the queue.

    The queue's envelope and the Lambda record carry the same fields; only a few names differ in case
    (SigningCertURL / SigningCertUrl, UnsubscribeURL / UnsubscribeUrl).
    """
    envelope = received.envelope
    topic_arn = str(envelope.get("TopicArn", ""))
    sns: dict[str, Any] = {
        "SignatureVersion": envelope.get("SignatureVersion", "1"),
        "Timestamp": envelope.get("Timestamp") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "Signature": envelope.get("Signature", ""),
        "SigningCertUrl": envelope.get("SigningCertURL", ""),
        "MessageId": envelope.get("MessageId") or str(uuid.uuid4()),
        "Message": envelope["Message"],
        "MessageAttributes": {
            name: {"Type": value.get("Type", "String"), "Value": value.get("Value", "")}
            for name, value in envelope.get("MessageAttributes", {}).items()
        },
        "Type": envelope.get("Type", "Notification"),
        "UnsubscribeUrl": envelope.get("UnsubscribeURL", ""),
        "TopicArn": topic_arn,
        "Subject": envelope.get("Subject", ""),
    }
    record = {
        "EventVersion": "1.0",
        "EventSubscriptionArn": f"{topic_arn}:{uuid.uuid4()}",
        "EventSource": "aws:sns",
        "Sns": sns,
    }
    return {"Records": [record]}


def mrkdwn_to_text(text: str) -> str:
    """Slack mrkdwn as plain text: `<url|label>` -> `label (url)`, *bold* unstarred, the three escapes undone."""
    text = _LINK.sub(lambda match: f"{match[2]} ({match[1]})", text)
    text = _BARE_LINK.sub(lambda match: match[1], text)
    text = _BOLD.sub(lambda match: match[1], text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def post_lines(post: Mapping[str, Any]) -> list[str]:
    """The text of a post's blocks, top to bottom: header, sections, dividers, context."""
    lines: list[str] = []
    for block in post.get("blocks", []):
        kind = block.get("type")
        if kind == "header":
            title = str(block["text"]["text"])
            lines += [title, "~" * len(title)]
        elif kind == "section":
            lines += mrkdwn_to_text(str(block.get("text", {}).get("text", ""))).split("\n")
        elif kind == "divider":
            lines.append("-" * 40)
        elif kind == "context":
            for element in block.get("elements", []):
                lines += ["  " + line for line in mrkdwn_to_text(str(element.get("text", ""))).split("\n")]
        else:
            lines.append(f"[{kind} block]")
    return lines


def render_post(post: Mapping[str, Any], *, indent: str = "    ", max_lines: int = MAX_LINES_PER_POST) -> str:
    lines = post_lines(post)
    shown = lines[:max_lines]
    if len(lines) > len(shown):
        shown.append(f"… {len(lines) - len(shown)} more line(s) in this post")
    return "\n".join(indent + line if line else "" for line in shown)


def header_text(post: Mapping[str, Any]) -> str:
    for block in post.get("blocks", []):
        if block.get("type") == "header":
            return str(block["text"]["text"])
    return "(no header)"


class Transcript(io.TextIOBase):
    """Passes writes through to a stream and keeps a copy, so the demo can check what it printed."""

    def __init__(self, stream: TextIO, parts: list[str] | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._parts: list[str] = [] if parts is None else parts

    def sibling(self, stream: TextIO) -> Transcript:
        """Another stream (stderr) written through as itself, recorded in the same transcript."""
        return Transcript(stream, self._parts)

    def write(self, text: str) -> int:
        self._parts.append(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    def text(self) -> str:
        return "".join(self._parts)
