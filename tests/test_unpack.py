"""modules.gunzip_stream with both inflaters (ISA-L and the standard library's zlib)."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest
from isal import isal_zlib

from modules import CorruptExport, gunzip_stream

INFLATERS = [pytest.param(isal_zlib, id="isal"), pytest.param(zlib, id="zlib")]
LINES = "".join(f'{{"uuid": "{i}", "city": "Zürich"}}\n' for i in range(20000)).encode()
GOOD = gzip.compress(LINES)


@pytest.mark.parametrize("module", INFLATERS)
@pytest.mark.parametrize("chunk", [7, 4096, 1 << 20])
def test_exact_bytes_and_event_count_across_chunk_sizes_and_members(module, chunk):
    data = gzip.compress(LINES) + gzip.compress(b'{"last": "no newline"}')
    out = io.BytesIO()
    size, events, crc = gunzip_stream(io.BytesIO(data), out, chunk, module)
    assert out.getvalue() == LINES + b'{"last": "no newline"}'
    assert (size, events) == (len(LINES) + 22, 20001)
    assert crc == zlib.crc32(out.getvalue())


@pytest.mark.parametrize("module", INFLATERS)
def test_crc_is_the_one_the_gzip_trailer_carries(module):
    size, _, crc = gunzip_stream(io.BytesIO(GOOD), io.BytesIO(), 4096, module)
    assert crc == int.from_bytes(GOOD[-8:-4], "little") and size == len(LINES)


@pytest.mark.parametrize("module", INFLATERS)
@pytest.mark.parametrize("member", [b"", gzip.compress(b"")], ids=["zero-bytes", "empty-gzip"])
def test_an_empty_member_is_an_empty_file(module, member):
    out = io.BytesIO()
    assert gunzip_stream(io.BytesIO(member), out, 4096, module) == (0, 0, 0)
    assert out.getvalue() == b""


@pytest.mark.parametrize("module", INFLATERS)
def test_output_is_bounded_by_the_chunk_even_for_a_bomb(module):
    class Sink(io.RawIOBase):
        biggest = 0

        def write(self, b):
            self.biggest = max(self.biggest, len(b))
            return len(b)

    sink = Sink()
    size, _, _ = gunzip_stream(io.BytesIO(gzip.compress(b"\0" * 50_000_000)), sink, 65536, module)
    assert size == 50_000_000 and sink.biggest <= 65536


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("module", INFLATERS)
@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (GOOD[:-3], "truncated"),
        (GOOD[:100], "truncated"),
        (gzip.compress(b"")[:-1], "truncated"),
        (_flip(GOOD, len(GOOD) - 8), "corrupt"),  # CRC-32 in the trailer
        (_flip(GOOD, len(GOOD) - 1), "corrupt"),  # ISIZE in the trailer
        (_flip(GOOD, 0), "corrupt"),  # magic
        (GOOD + b"trailing junk", "corrupt"),
        (os.urandom(1000), "corrupt"),
    ],
)
def test_damage_is_detected(module, bad, why):
    with pytest.raises(CorruptExport, match=why):
        gunzip_stream(io.BytesIO(bad), io.BytesIO(), 4096, module)
