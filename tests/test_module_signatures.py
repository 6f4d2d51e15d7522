"""The initramfs's modules go without their signatures; anything else about them is kept."""

import struct

import pytest

from vmfixtures.images.modsig import MAGIC, strip_signature


def signed(body: bytes, sig: bytes) -> bytes:
    # struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len (be32)
    info = struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(sig))
    return body + sig + info + MAGIC


def test_a_signed_module_loses_exactly_its_signature():
    body = b"\x7fELF" + bytes(range(256)) * 4
    assert strip_signature(signed(body, b"S" * 515)) == body


def test_an_unsigned_module_is_unchanged():
    body = b"\x7fELF" + b"x" * 100
    assert strip_signature(body) == body


@pytest.mark.parametrize("module", [MAGIC, b"\x7fELF" + struct.pack(">8xI", 10_000) + MAGIC])
def test_a_trailer_that_does_not_fit_the_file_is_refused(module):
    with pytest.raises(ValueError):
        strip_signature(module)
