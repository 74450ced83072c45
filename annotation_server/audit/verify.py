"""Check an audit log: every line parses, every hash matches its record, every record names the previous
one's hash, sequence numbers run without gaps, and the chain ends where `audit.head` says it does.

The first problem found is reported with its record (line and seq), since everything after a break is
unproven anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from annotation_server.audit.log import GENESIS, HEAD_NAME, LOG_NAME, record_hash

REQUIRED = ("seq", "ts", "actor", "address", "action", "target", "details", "prev", "hash")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    message: str
    line: int | None = None  # 1-based line of the first problem
    seq: int | None = None


def verify_log(folder: Path) -> VerifyResult:
    """Verify `<folder>/audit.jsonl` against its chain and `<folder>/audit.head`."""
    path = folder / LOG_NAME
    if not path.exists():
        return VerifyResult(True, 0, f"no audit log yet at {path}")
    prev, expected_seq, count = GENESIS, 1, 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                data = json.loads(line)
                if not isinstance(data, dict) or any(name not in data for name in REQUIRED):
                    raise ValueError("fields missing")
            except ValueError as exc:
                return VerifyResult(False, count, f"line {number} is not a valid record ({exc})", number)
            seq = data["seq"]
            if record_hash(data) != data["hash"]:
                return VerifyResult(
                    False, count, f"record {seq} (line {number}) was changed: its hash does not match", number, seq
                )
            if seq != expected_seq:
                return VerifyResult(False, count, _sequence_problem(seq, expected_seq, number), number, seq)
            if data["prev"] != prev:
                return VerifyResult(
                    False, count, f"record {seq} (line {number}) does not follow the record before it", number, seq
                )
            prev, expected_seq, count = data["hash"], seq + 1, count + 1
    head = _head(folder)
    if head is None and count > 0:
        return VerifyResult(False, count, f"{HEAD_NAME} is missing or unreadable: the end of the log cannot be checked")
    if head is not None and (head.get("seq"), head.get("hash")) != (expected_seq - 1, prev):
        return VerifyResult(
            False,
            count,
            f"the log ends at record {expected_seq - 1} but {HEAD_NAME} says record {head.get('seq')}: "
            "records at the end were removed or the head was changed",
            None,
            head.get("seq") if isinstance(head.get("seq"), int) else None,
        )
    return VerifyResult(True, count, f"{count} records, chain intact, ends at record {expected_seq - 1}")


def _sequence_problem(seq: object, expected: int, line: int) -> str:
    if not isinstance(seq, int) or seq < expected:
        return f"record {seq} (line {line}) is out of order (expected record {expected})"
    missing = f"record {expected} was" if seq == expected + 1 else f"records {expected}..{seq - 1} were"
    return f"record {seq} (line {line}) follows record {expected - 1}: {missing} removed"


def _head(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / HEAD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
