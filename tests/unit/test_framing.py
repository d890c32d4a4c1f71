"""L1 frames: FrameDecoder and encode_frame (sans-I/O)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsxpc._errors import ErrorCode, ProtocolError
from nsxpc._framing import DEFAULT_MAX_FDS, DEFAULT_MAX_FRAME_SIZE, HEADER, Frame, FrameDecoder, encode_frame


def one(dec: FrameDecoder) -> tuple[bytes, tuple[int, ...]] | None:
    """The next frame as (body, fds), checking its types, or None."""
    frame = dec.next_frame()
    if frame is None:
        return None
    assert isinstance(frame, Frame)
    assert type(frame.body) is bytes
    assert type(frame.fds) is tuple
    return frame.body, frame.fds


def drain(dec: FrameDecoder) -> list[tuple[bytes, tuple[int, ...]]]:
    out = []
    while (frame := one(dec)) is not None:
        out.append(frame)
    return out


def build_stream(specs: list[tuple[bytes, int]]) -> tuple[bytes, list[int], list[tuple[bytes, tuple[int, ...]]]]:
    """Encode frames; fd numbers are 100, 101, ... in frame order.
    Returns (stream, start offset of each frame, expected frames)."""
    stream = bytearray()
    starts: list[int] = []
    expected: list[tuple[bytes, tuple[int, ...]]] = []
    next_fd = 100
    for body, nfds in specs:
        starts.append(len(stream))
        stream += encode_frame(body, nfds)
        fds = tuple(range(next_fd, next_fd + nfds))
        next_fd += nfds
        expected.append((body, fds))
    return bytes(stream), starts, expected


def feed_in_chunks(
    dec: FrameDecoder, specs, stream: bytes, starts: list[int], cuts: list[int]
) -> list[tuple[bytes, tuple[int, ...]]]:
    """Feed ``stream`` split at ``cuts``; each frame's fds arrive with the chunk
    holding the frame's first byte, as the kernel delivers SCM_RIGHTS."""
    bounds = [0, *sorted(set(cuts) - {0, len(stream)}), len(stream)]
    fd_of_frame = []
    next_fd = 100
    for _, nfds in specs:
        fd_of_frame.append(tuple(range(next_fd, next_fd + nfds)))
        next_fd += nfds
    got: list[tuple[bytes, tuple[int, ...]]] = []
    for lo, hi in itertools.pairwise(bounds):
        fds = [fd for start, frame_fds in zip(starts, fd_of_frame, strict=True) if lo <= start < hi for fd in frame_fds]
        dec.feed(stream[lo:hi], fds)
        got.extend(drain(dec))
    return got


frame_specs = st.lists(st.tuples(st.binary(max_size=64), st.integers(0, 3)), max_size=8)


# --------------------------------------------------------------------------- round trip


def test_encode_frame_header_layout():
    data = encode_frame(b"hello", 2)
    assert data[:8] == b"\x00\x00\x00\x05\x00\x02\x00\x00"
    assert data[8:] == b"hello"
    assert HEADER.size == 8


def test_round_trip_single_frame():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"abc"))
    assert one(dec) == (b"abc", ())
    assert dec.next_frame() is None
    assert dec.buffered == 0


def test_empty_body_frame():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"") + encode_frame(b"x"))
    assert drain(dec) == [(b"", ()), (b"x", ())]


def test_partial_header_and_body_wait_for_more():
    dec = FrameDecoder()
    data = encode_frame(b"0123456789")
    dec.feed(data[:7])
    assert dec.next_frame() is None
    dec.feed(data[7:12])
    assert dec.next_frame() is None
    assert dec.buffered == 12  # received, not yet returned as a frame
    dec.feed(data[12:])
    assert one(dec) == (b"0123456789", ())


@settings(max_examples=200, deadline=None)
@given(specs=frame_specs)
def test_round_trip_whole_stream(specs):
    stream, starts, expected = build_stream(specs)
    dec = FrameDecoder()
    assert feed_in_chunks(dec, specs, stream, starts, []) == expected
    assert dec.buffered == 0
    assert dec.take_fds() == []


@settings(max_examples=100, deadline=None)
@given(specs=frame_specs)
def test_byte_at_a_time_gives_same_frames(specs):
    stream, starts, expected = build_stream(specs)
    dec = FrameDecoder()
    assert feed_in_chunks(dec, specs, stream, starts, list(range(len(stream)))) == expected
    assert dec.buffered == 0
    assert dec.take_fds() == []


@settings(max_examples=200, deadline=None)
@given(specs=frame_specs, data=st.data())
def test_random_splits_give_same_frames(specs, data):
    stream, starts, expected = build_stream(specs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    dec = FrameDecoder()
    assert feed_in_chunks(dec, specs, stream, starts, cuts) == expected
    assert dec.buffered == 0
    assert dec.take_fds() == []


# --------------------------------------------------------------------------- limits and corruption


def test_defaults():
    dec = FrameDecoder()
    assert dec.max_frame_size == DEFAULT_MAX_FRAME_SIZE
    assert dec.max_fds == DEFAULT_MAX_FDS


def test_frame_of_exactly_max_size_is_accepted():
    dec = FrameDecoder(max_frame_size=10)
    dec.feed(encode_frame(b"x" * 10))
    assert one(dec) == (b"x" * 10, ())


@pytest.mark.parametrize(("max_size", "declared"), [(10, 11), (DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE + 1),
                                                    (DEFAULT_MAX_FRAME_SIZE, 0xFFFFFFFF)])  # fmt: skip
def test_oversized_frame_rejected_on_header_alone(max_size, declared):
    dec = FrameDecoder(max_frame_size=max_size)
    dec.feed(HEADER.pack(declared, 0, 0))  # the 8-byte header only: no body byte sent
    with pytest.raises(ProtocolError) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.PROTOCOL_ERROR
    assert str(declared) in str(info.value)


def test_too_many_fds_rejected_on_header_alone():
    dec = FrameDecoder(max_fds=2)
    dec.feed(HEADER.pack(1, 3, 0), [5, 6, 7])
    with pytest.raises(ProtocolError, match="file descriptors"):
        dec.next_frame()


def test_max_fds_exactly_is_accepted():
    dec = FrameDecoder(max_fds=2)
    dec.feed(encode_frame(b"a", 2), [5, 6])
    assert one(dec) == (b"a", (5, 6))


@pytest.mark.parametrize("flags", [1, 0x8000, 0xFFFF])
def test_nonzero_flags_rejected(flags):
    dec = FrameDecoder()
    dec.feed(HEADER.pack(1, 0, flags))
    with pytest.raises(ProtocolError, match="flags"):
        dec.next_frame()


def test_fds_announced_but_missing():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"body", 2), [9])
    with pytest.raises(ProtocolError, match="file descriptors"):
        dec.next_frame()


@pytest.mark.parametrize(
    "bad",
    [
        HEADER.pack(DEFAULT_MAX_FRAME_SIZE + 1, 0, 0),
        HEADER.pack(1, DEFAULT_MAX_FDS + 1, 0) + b"x",
        HEADER.pack(1, 0, 1) + b"x",
        encode_frame(b"x", 1),  # announces an fd; none arrives
    ],
    ids=["oversized", "too-many-fds", "flags", "missing-fds"],
)
def test_decoder_is_dead_after_an_error(bad):
    """DESIGN invariant: after a ProtocolError the decoder is dead. A good frame
    buffered behind the bad one must never come out of it."""
    dec = FrameDecoder()
    dec.feed(bad + encode_frame(b"next"))
    with pytest.raises(ProtocolError):
        dec.next_frame()
    with pytest.raises(ProtocolError):
        dec.feed(encode_frame(b"more"))
    with pytest.raises(ProtocolError):
        dec.next_frame()


# --------------------------------------------------------------------------- fds


def test_fds_queued_in_order_and_assigned_to_frames():
    dec = FrameDecoder()
    stream = encode_frame(b"one", 1) + encode_frame(b"two", 0) + encode_frame(b"three", 2)
    # all fds arrive with the first byte
    dec.feed(stream[:1], [10, 11, 12])
    assert dec.next_frame() is None
    dec.feed(stream[1:])
    assert drain(dec) == [(b"one", (10,)), (b"two", ()), (b"three", (11, 12))]
    assert dec.take_fds() == []


def test_fds_arriving_with_each_frame():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"a", 2), (3, 4))
    dec.feed(encode_frame(b"b", 1), [5])
    assert drain(dec) == [(b"a", (3, 4)), (b"b", (5,))]


def test_take_fds_returns_and_clears_queued_fds():
    dec = FrameDecoder()
    data = encode_frame(b"abcdef", 2)
    dec.feed(data[:10], [7, 8, 9])  # the frame is incomplete; its fds (and a stray) are queued
    assert dec.next_frame() is None
    assert dec.take_fds() == [7, 8, 9]
    assert dec.take_fds() == []


def test_take_fds_after_frames_returns_only_leftovers():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"a", 1), [3, 4])
    assert one(dec) == (b"a", (3,))
    assert dec.take_fds() == [4]


def test_feed_accepts_memoryview():
    dec = FrameDecoder()
    data = bytearray(encode_frame(b"view") + encode_frame(b"second"))
    dec.feed(memoryview(data)[:10])
    dec.feed(memoryview(data)[10:])
    data[8:12] = b"XXXX"  # the decoder kept its own copy
    assert drain(dec) == [(b"view", ()), (b"second", ())]
