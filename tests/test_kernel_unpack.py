"""The guest kernel is unpacked at image build for QEMU's PVH entry; anything odd keeps the bzImage."""

import gzip
import struct

from vmfixtures.images.kernel import XEN_ELFNOTE_PHYS32_ENTRY, has_pvh_entry, payload, write_vmlinux


def fake_elf(note_type: int) -> bytes:
    """An x86-64 ELF with one PT_NOTE segment holding one note named Xen."""
    note = struct.pack("<III", 4, 4, note_type) + b"Xen\0" + b"\0" * 4
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note


def fake_bzimage(body: bytes) -> bytes:
    setup = bytearray(5 * 512)  # setup_sects = 4 (0 means 4)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 0, len(body))
    return bytes(setup) + body


def test_a_gzip_payload_with_a_pvh_note_becomes_vmlinux(tmp_path):
    elf = fake_elf(XEN_ELFNOTE_PHYS32_ENTRY)
    (tmp_path / "vmlinuz").write_bytes(fake_bzimage(gzip.compress(elf)))
    assert write_vmlinux(tmp_path / "vmlinuz", tmp_path / "vmlinux") is None
    assert (tmp_path / "vmlinux").read_bytes() == elf


def test_a_kernel_without_the_pvh_note_stays_packed(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(fake_bzimage(gzip.compress(fake_elf(5))))
    assert "no PVH entry note" in write_vmlinux(tmp_path / "vmlinuz", tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


def test_an_unknown_payload_or_no_bzimage_is_said(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(fake_bzimage(b"????" * 8))
    assert "unknown payload format" in write_vmlinux(tmp_path / "vmlinuz", tmp_path / "vmlinux")
    (tmp_path / "vmlinuz").write_bytes(b"\0" * 4096)
    assert "not a bzImage" in write_vmlinux(tmp_path / "vmlinuz", tmp_path / "vmlinux")


def test_the_payload_is_found_from_the_setup_header():
    assert payload(fake_bzimage(b"abc")) == b"abc"
    assert has_pvh_entry(fake_elf(XEN_ELFNOTE_PHYS32_ENTRY)) and not has_pvh_entry(b"not an elf")
