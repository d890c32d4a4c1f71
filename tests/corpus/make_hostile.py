"""Write the committed hostile msgpack corpus (research/reliability.md, test plan A4).

Run from anywhere: ``python tests/corpus/make_hostile.py``. Each file is one
frame body that a peer could send. The expected outcome of every file is in
tests/unit/test_codec.py (HOSTILE_EXPECTATIONS); a file without an entry there
fails the suite, so a new case cannot be added without saying what must happen.
The generator is deterministic: rerunning it must leave ``git status`` clean.
"""

from __future__ import annotations

import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent / "hostile"

U32_MAX = b"\xff\xff\xff\xff"
MIB = 1024 * 1024


def nested_arrays(depth: int) -> bytes:
    """``depth`` arrays, each holding the next; the innermost is empty."""
    return b"\x91" * (depth - 1) + b"\x90"


def array32(n: int, element: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + element * n


def ext8(code: int, payload: bytes) -> bytes:
    return b"\xc7" + bytes([len(payload)]) + struct.pack(">b", code) + payload


CORPUS: dict[str, bytes] = {
    # 4 GiB declared lengths: a 5-byte header must not reserve or wait for 4 GiB.
    "bin32_4gib.bin": b"\xc6" + U32_MAX + b"x",
    "str32_4gib.bin": b"\xdb" + U32_MAX + b"x",
    "ext32_4gib.bin": b"\xc9" + U32_MAX + b"\x05x",
    "array32_4g_elements.bin": b"\xdd" + U32_MAX + b"\xc0",
    "map32_4g_entries.bin": b"\xdf" + U32_MAX + b"\xa1a\xc0",
    # 50M-element array header (5 bytes), measured harmless only with a length cap.
    "array32_50m_header.bin": b"\xdd" + struct.pack(">I", 50_000_000),
    # Nesting: 33 passes msgpack but not the 32-level coding limit;
    # 1025 is past msgpack's C stack limit; 100000 past the node budget.
    "nest_33.bin": nested_arrays(33),
    "nest_1025.bin": nested_arrays(1025),
    "nest_100000.bin": nested_arrays(100_000),
    "nest_100000_maps.bin": b"\x81\xa0" * 99_999 + b"\x80",
    # The 72x amplifier: 1 MiB of empty arrays (or maps) in one array32.
    "amplifier_1mib_0x90.bin": array32(MIB, b"\x90"),
    "amplifier_1mib_0x80.bin": array32(MIB, b"\x80"),
    # Strings: invalid UTF-8, and a lone surrogate encoded as UTF-8.
    "invalid_utf8.bin": b"\xa3\xff\xfe\xfd",
    "utf8_surrogate.bin": b"\xa3\xed\xa0\x80",
    "invalid_utf8_map_key.bin": b"\x81\xa2\xc3\x28\x01",
    # One document followed by more bytes.
    "trailing_bytes.bin": b"\xc0\xc0",
    "trailing_after_array.bin": b"\x92\x01\x02\x03",
    # 0xc1 is never used by msgpack, alone and deep inside a long body
    # (past the node budget, so the header walk meets it too).
    "reserved_c1.bin": b"\xc1",
    "reserved_c1_in_long_body.bin": b"\xdd" + struct.pack(">I", 70_000) + b"\xc0" * 35_000 + b"\xc1" + b"\xc0" * 34_999,
    # Truncated documents.
    "empty.bin": b"",
    "truncated_array.bin": b"\x92\x01",
    "truncated_uint16.bin": b"\xcd\x01",
    "truncated_str8.bin": b"\xd9\x0aabc",
    "truncated_map.bin": b"\x82\xa1a\x01\xa1b",
    "truncated_long_array.bin": b"\xdd" + struct.pack(">I", 70_000) + b"\xc0" * 69_999,
    # Map keys other than str/bytes (hash DoS, A4).
    "int_map_key.bin": b"\x81\x01\x02",
    "array_map_key.bin": b"\x81\x90\x02",
    # Duplicate keys: a validator and a consumer could disagree (A4).
    "duplicate_keys.bin": b"\x82\xa1a\x01\xa1a\x02",
    # Extension types outside nsxpc's fixed table, and msgpack's own timestamp (-1).
    "ext_timestamp.bin": b"\xd6\xff\x00\x00\x00\x00",
    "ext_code_0.bin": b"\xd4\x00\x00",
    "ext_code_13.bin": b"\xd4\x0d\x00",
    "ext_code_127.bin": b"\xd4\x7f\x00",
    "ext_code_minus_128.bin": b"\xd4\x80\x00",
    # A coded object naming a class that no slot allows (and a module never imported).
    "object_unknown_class.bin": ext8(7, b"\x92\xafmailbox.Mailbox\x80"),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.bin"):
        if old.name not in CORPUS:
            old.unlink()
    for name, data in CORPUS.items():
        (OUT / name).write_bytes(data)


if __name__ == "__main__":
    main()
