"""Plain-text output for the demo: aligned tables, no dependencies."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

from demo.aws import SERVICE_TAG_PREFIX, InstanceRow, SourceRow
from emulator.observe import Received

WIDTH = 118


REASON_WIDTH = 72


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, indent: str = "  ") -> str:
    """Aligned columns; a cell with line breaks spans several lines of its row."""
    cells = [[str(cell).split("\n") for cell in row] for row in rows]
    widths = [
        max([len(header)] + [len(line) for row in cells for line in row[index]]) for index, header in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        return indent + "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)).rstrip()

    lines = [line(list(headers)), indent + "  ".join("-" * width for width in widths)]
    for row in cells:
        for number in range(max(len(cell) for cell in row)):
            lines.append(line([cell[number] if number < len(cell) else "" for cell in row]))
    return "\n".join(lines)


def heading(title: str) -> None:
    print()
    print("=" * WIDTH)
    print(title)
    print("=" * WIDTH)


def note(text: str) -> None:
    print(textwrap.fill(text, WIDTH, initial_indent="  ", subsequent_indent="  "))


def service_tags(row: InstanceRow, exempt_tag_key: str) -> str:
    parts = []
    if exempt_tag_key in row.tags:
        parts.append(f"{exempt_tag_key}={row.tags[exempt_tag_key]}")
    for key, value in sorted(row.tags.items()):
        if key.startswith(SERVICE_TAG_PREFIX):
            short = key.removeprefix(SERVICE_TAG_PREFIX)
            # The timestamp's date and time are enough on screen; the tag holds full ISO-8601.
            parts.append(f"{short}={value[:19] if short == 'enforced-at' else value}")
    return ", ".join(parts) or "-"


def fleet(
    title: str,
    rows: Mapping[str, InstanceRow],
    roles: Mapping[str, str],
    *,
    exempt_tag_key: str,
    before: Mapping[str, InstanceRow] | None = None,
) -> None:
    print(f"\n  {title}" + ("  (* = changed)" if before is not None else ""))
    body = []
    for instance_id, role in roles.items():
        row = rows[instance_id]
        changed = before is not None and before[instance_id] != row
        body.append(
            [
                ("* " if changed else "  ") + instance_id,
                row.name,
                role,
                row.state,
                row.tokens,
                row.hop_limit,
                row.endpoint,
                service_tags(row, exempt_tag_key),
            ]
        )
    print(table(["  instance", "name", "role", "state", "tokens", "hop", "endpoint", "service tags"], body))


def sources(
    title: str,
    rows: Mapping[str, SourceRow],
    roles: Mapping[str, str],
    *,
    before: Mapping[str, SourceRow] | None = None,
) -> None:
    """Launch templates (default version "n of latest"), launch configurations and AMIs, one row each."""
    print(f"\n  {title}" + ("  (* = changed)" if before is not None else ""))
    body = []
    for resource_id, role in roles.items():
        row = rows[resource_id]
        changed = before is not None and before[resource_id] != row
        body.append(
            [
                ("* " if changed else "  ") + row.kind,
                row.resource_id if row.resource_id != row.name else "",
                row.name,
                role,
                row.default_version,
                row.setting,
                row.used_by,
            ]
        )
    print(table(["  source", "id", "name", "role", "default", "IMDS setting", "used by (version)"], body))


def reports(received: Sequence[Received], names: Mapping[str, str] | None = None) -> None:
    names = names or {}
    if not received:
        print("\n  reports on the topic: none")
        return
    for message in received:
        attributes = message.attributes
        print(f"\n  report: {message.subject}")
        print(
            f"    attributes: action={attributes.get('action')} severity={attributes.get('severity')} "
            f"trigger={attributes.get('trigger')} mode={attributes.get('mode')}"
        )
        rows = [
            [
                finding["resource_id"],
                names.get(finding["resource_id"], ""),
                finding["action"],
                "\n".join(textwrap.wrap(_reason(finding), REASON_WIDTH)),
            ]
            for finding in message.findings
        ]
        print(table(["resource", "name", "action", "reason"], rows, indent="    "))


def _reason(finding: Mapping[str, object]) -> str:
    reason = str(finding.get("reason", ""))
    for key in ("metadata_no_token", "error_code"):
        if finding.get(key) is not None:
            reason += f" [{key}={finding[key]}]"
    return reason
