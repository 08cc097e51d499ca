"""wire.HeaderWalk against msgpack itself: it never refuses what fits, ends
messages where msgpack ends them, and refuses an oversize header at once.

Fast: no daemon, only the wire module and msgpack.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoryd_client import wire

CAPACITY = wire.DEFAULT_MAX_MESSAGE_BYTES + wire.UNPACKER_SLACK_BYTES

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.floats(width=32, allow_nan=False),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=300)),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=10), inner, max_size=20)
    ),
    max_leaves=60,
)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def walk_in_chunks(
    data: bytes, cuts: list[int], *, offset: int = 0, max_bytes: int = CAPACITY
) -> tuple[wire.HeaderWalk, list[bool]]:
    """Give the walk ``data`` cut at ``cuts``, each time from the message's start
    (as a connection re-gives bytes it has seen); the answer of each step."""
    walk = wire.HeaderWalk(offset, max_bytes)
    answers = []
    for end in [*sorted(set(cuts)), len(data)]:
        answers.append(walk.advance(data[:end], offset))
    return walk, answers


cut_lists = st.lists(st.integers(min_value=0, max_value=200_000), max_size=12)


@settings(max_examples=300, deadline=None)
@given(obj=values, cuts=cut_lists, offset=st.integers(0, 2**40))
def test_a_message_that_fits_is_never_refused_and_ends_where_msgpack_ends(
    obj: Any, cuts: list[int], offset: int
) -> None:
    data = pack(obj)
    walk, answers = walk_in_chunks(data, [c % (len(data) + 1) for c in cuts], offset=offset)
    assert all(answers)
    assert walk.complete
    assert walk.next_header_offset - offset == len(data)


@settings(max_examples=200, deadline=None)
@given(obj=values, cuts=cut_lists)
def test_the_bound_is_exact(obj: Any, cuts: list[int]) -> None:
    data = pack(obj)
    cuts = [c % (len(data) + 1) for c in cuts]
    _, answers = walk_in_chunks(data, cuts, max_bytes=len(data))
    assert all(answers)
    _, answers = walk_in_chunks(data, cuts, max_bytes=len(data) - 1)
    assert answers[-1] is False  # at the latest once the whole message is there


@settings(max_examples=200, deadline=None)
@given(first=values, second=values, chunk=st.integers(1, 4096))
def test_chunks_given_once_each_agree_with_the_unpacker(
    first: Any, second: Any, chunk: int
) -> None:
    # As the daemon does it: each fed chunk once, the walk of the second
    # message starting where the Unpacker says the first one ended.
    stream = pack(first) + pack(second)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(stream)
    unpacker.unpack()
    second_start = unpacker.tell()
    walk = wire.HeaderWalk(second_start, CAPACITY)
    for start in range(second_start - second_start % chunk, len(stream), chunk):
        assert walk.advance(stream[start : start + chunk], start)
    assert walk.complete and walk.next_header_offset == len(stream)


def oversize_headers(room: int) -> list[bytes]:
    """Headers announcing more than ``room`` bytes, in every kind msgpack has."""
    length = room + 1
    return [
        b"\xdb" + struct.pack(">I", length),  # str32
        b"\xc6" + struct.pack(">I", length),  # bin32
        b"\xc9" + struct.pack(">I", length) + b"\x01",  # ext32
        b"\xdd" + struct.pack(">I", length),  # array32: every item takes a byte
        b"\xdf" + struct.pack(">I", (length + 1) // 2),  # map32: two objects per entry
    ]


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.lists(values, max_size=4),
    kind=st.integers(0, 4),
    cuts=st.lists(st.integers(0, 100_000), max_size=6),
)
def test_an_oversize_header_is_refused_as_soon_as_it_is_complete(
    prefix: list[Any], kind: int, cuts: list[int]
) -> None:
    # An array of the prefix objects and then the hostile one, its payload never sent.
    head = b"\xdc" + struct.pack(">H", len(prefix) + 1) + b"".join(pack(o) for o in prefix)
    header = oversize_headers(CAPACITY - len(head))[kind]
    header_end = len(head) + (len(header) if kind != 2 else 5)  # ext: its length field
    data = head + header
    walk = wire.HeaderWalk(0, CAPACITY)
    for end in sorted({c % header_end for c in cuts}):
        assert walk.advance(data[:end], 0), "refused before the header was complete"
    assert walk.advance(data[:header_end], 0) is False
    if kind <= 2:
        # For a str, bin or ext msgpack itself only waits for more bytes.
        unpacker = wire.make_unpacker()
        unpacker.feed(data)
        with pytest.raises(msgpack.OutOfData):
            unpacker.unpack()


def test_nested_containers_that_need_more_bytes_than_the_limit_are_refused() -> None:
    # Each array holds 65,536 items (the decoder's cap); two such levels
    # need more bytes than a 64 KiB message may hold.
    walk = wire.HeaderWalk(0, 64 * 1024 + wire.UNPACKER_SLACK_BYTES)
    assert walk.advance(b"\xdd\x00\x01\x00\x00", 0)
    assert walk.advance(b"\xdd\x00\x01\x00\x00" * 2, 0) is False


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=64))
def test_random_bytes_never_break_the_walk_and_complete_ones_match_msgpack(data: bytes) -> None:
    walk = wire.HeaderWalk(0, 2**40)
    assert walk.advance(data, 0)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        # msgpack wants more; so does the walk (headers or the last payload).
        assert not walk.complete or walk.next_header_offset > len(data)
        return
    except Exception:  # bad bytes: the decoder refuses them, not the walk
        return
    assert walk.complete and walk.next_header_offset == unpacker.tell()


# Lengths in 8, 16 and 32 bits for every kind (hypothesis keeps to short ones:
# it would print the long ones whole).
_MAKERS: dict[str, Callable[[int], object]] = {
    "str": lambda n: "s" * n,
    "bin": lambda n: b"b" * n,
    "ext": lambda n: msgpack.ExtType(7, b"e" * n),
    "array": lambda n: [1] * n,
    "map": lambda n: {f"{i:05d}": None for i in range(n)},
}
WIDE_OBJECTS = {
    f"{kind} of {length}": make(length)
    for length in (255, 256, 65_535, 65_536)
    for kind, make in _MAKERS.items()
}


@pytest.mark.parametrize("name", sorted(WIDE_OBJECTS))
def test_wide_lengths_cut_anywhere_in_their_header(name: str) -> None:
    data = pack([0, WIDE_OBJECTS[name], "after"])
    for cut in range(1, 12):
        walk = wire.HeaderWalk(0, CAPACITY)
        assert walk.advance(data[:cut], 0)
        assert walk.advance(data[cut:], cut)
        assert walk.complete and walk.next_header_offset == len(data)
    _, answers = walk_in_chunks(data, [3, 4, 5, 6, 7], max_bytes=len(data) - 1)
    assert answers[-1] is False


def test_bytes_must_be_given_in_order() -> None:
    walk = wire.HeaderWalk(10, CAPACITY)
    with pytest.raises(ValueError, match="never given"):
        walk.advance(b"\x90", 11)
