"""Layouts, constants and the opcode table agree with fuse.h (7.45) and with each other."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from zcfs.proto import abi
from zcfs.proto.opcodes import OPCODES, Opcode
from zcfs.proto.requests import BatchForgetIn, InitIn

# sizeof(struct ...) from fuse.h; the first block was measured on this machine.
SIZES = {
    "IN_HEADER": 40, "OUT_HEADER": 16, "ATTR": 88, "ENTRY_OUT": 128, "ATTR_OUT": 104,
    "OPEN_OUT": 16, "READ_IN": 40, "READDIR_IN": 40, "WRITE_IN": 40, "RELEASE_IN": 24, "STATFS_OUT": 80,
    "INIT_OUT": 64, "DIRENT_HEAD": 24, "FUSE_BACKING_MAP": 16,
    "WRITE_OUT": 8, "GETXATTR_OUT": 8, "LSEEK_OUT": 8, "LK_OUT": 24, "BMAP_OUT": 8,
    "POLL_OUT": 8, "COPY_FILE_RANGE_OUT": 8,
    "FORGET_IN": 8, "BATCH_FORGET_IN": 8, "FORGET_ONE": 16, "GETATTR_IN": 16,
    "SETATTR_IN": 88, "MKNOD_IN": 16, "MKDIR_IN": 8, "RENAME_IN": 8, "RENAME2_IN": 16,
    "LINK_IN": 8, "OPEN_IN": 8, "CREATE_IN": 16, "FLUSH_IN": 24, "FSYNC_IN": 16,
    "SETXATTR_IN": 16, "SETXATTR_IN_COMPAT": abi.FUSE_COMPAT_SETXATTR_IN_SIZE,
    "GETXATTR_IN": 8, "LK_IN": 48, "ACCESS_IN": 8, "INIT_IN": 64, "INIT_IN_COMPAT": 16,
    "INTERRUPT_IN": 8, "BMAP_IN": 16, "IOCTL_IN": 32, "POLL_IN": 24, "FALLOCATE_IN": 32,
    "LSEEK_IN": 24, "COPY_FILE_RANGE_IN": 56, "SYNCFS_IN": 8, "STATX_IN": 24,
    "NOTIFY_RETRIEVE_IN": 40, "NOTIFY_INVAL_INODE_OUT": 24, "NOTIFY_INVAL_ENTRY_OUT": 16, "NOTIFY_DELETE_OUT": 24,
}


@pytest.mark.parametrize("name, size", SIZES.items())
def test_layout_size(name, size):
    assert getattr(abi, name).size == size


def test_every_layout_has_a_size_check():
    layouts = {n for n in abi.__all__ if isinstance(getattr(abi, n), type(abi.ATTR))}
    assert layouts == set(SIZES)


def test_open_out_backing_id_is_signed():
    assert abi.OPEN_OUT.unpack(abi.OPEN_OUT.pack(1, 2, -1)) == (1, 2, -1)


INIT_FLAG_NAMES = [  # fuse.h order: bit 0 upwards, no gaps up to 7.45's bit 42
    "FUSE_ASYNC_READ", "FUSE_POSIX_LOCKS", "FUSE_FILE_OPS", "FUSE_ATOMIC_O_TRUNC",
    "FUSE_EXPORT_SUPPORT", "FUSE_BIG_WRITES", "FUSE_DONT_MASK", "FUSE_SPLICE_WRITE",
    "FUSE_SPLICE_MOVE", "FUSE_SPLICE_READ", "FUSE_FLOCK_LOCKS", "FUSE_HAS_IOCTL_DIR",
    "FUSE_AUTO_INVAL_DATA", "FUSE_DO_READDIRPLUS", "FUSE_READDIRPLUS_AUTO", "FUSE_ASYNC_DIO",
    "FUSE_WRITEBACK_CACHE", "FUSE_NO_OPEN_SUPPORT", "FUSE_PARALLEL_DIROPS",
    "FUSE_HANDLE_KILLPRIV", "FUSE_POSIX_ACL", "FUSE_ABORT_ERROR", "FUSE_MAX_PAGES",
    "FUSE_CACHE_SYMLINKS", "FUSE_NO_OPENDIR_SUPPORT", "FUSE_EXPLICIT_INVAL_DATA",
    "FUSE_MAP_ALIGNMENT", "FUSE_SUBMOUNTS", "FUSE_HANDLE_KILLPRIV_V2", "FUSE_SETXATTR_EXT",
    "FUSE_INIT_EXT", "FUSE_INIT_RESERVED", "FUSE_SECURITY_CTX", "FUSE_HAS_INODE_DAX",
    "FUSE_CREATE_SUPP_GROUP", "FUSE_HAS_EXPIRE_ONLY", "FUSE_DIRECT_IO_ALLOW_MMAP",
    "FUSE_PASSTHROUGH", "FUSE_NO_EXPORT_SUPPORT", "FUSE_HAS_RESEND", "FUSE_ALLOW_IDMAP",
    "FUSE_OVER_IO_URING", "FUSE_REQUEST_TIMEOUT",
]


def test_init_flags_are_64_bit_values():
    assert [getattr(abi, n) for n in INIT_FLAG_NAMES] == [1 << b for b in range(43)]
    assert abi.FUSE_PASSTHROUGH >> 32 == 1 << 5  # travels as flags2 bit 5


def test_fopen_flags():
    assert [abi.FOPEN_DIRECT_IO, abi.FOPEN_KEEP_CACHE, abi.FOPEN_NONSEEKABLE,
            abi.FOPEN_CACHE_DIR, abi.FOPEN_STREAM, abi.FOPEN_NOFLUSH,
            abi.FOPEN_PARALLEL_DIRECT_WRITES, abi.FOPEN_PASSTHROUGH] == [1 << b for b in range(8)]


def test_ioctl_numbers():
    # _IOR(229, 0, uint32_t), _IOW(229, 1, struct fuse_backing_map), _IOW(229, 2, uint32_t)
    assert abi.FUSE_DEV_IOC_CLONE == 0x8004E500
    assert abi.FUSE_DEV_IOC_BACKING_OPEN == 0x4010E501
    assert abi.FUSE_DEV_IOC_BACKING_CLOSE == 0x4004E502
    assert abi.FUSE_BACKING_MAP.pack(5, 0, 0) == b"\x05" + b"\0" * 15


def test_versions():
    assert (abi.FUSE_KERNEL_VERSION, abi.FUSE_KERNEL_MINOR_VERSION) == (7, 45)
    assert abi.FUSE_ROOT_ID == 1 and abi.FUSE_MIN_READ_BUFFER == 8192


def test_opcodes_match_fuse_h():
    # fuse.h never assigned 7 and 19.
    assert {int(op) for op in Opcode} == set(range(1, 54)) - {7, 19} | {4096}


def test_table_covers_all_but_dax_and_cuse():
    assert set(Opcode) - set(OPCODES) == {
        Opcode.SETUPMAPPING, Opcode.REMOVEMAPPING, Opcode.CUSE_INIT}


def test_no_reply_opcodes():
    silent = {op for op, spec in OPCODES.items() if not spec.replies}
    assert silent == {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT,
                      Opcode.NOTIFY_REPLY}


@pytest.mark.parametrize("op", [op for op in OPCODES
                                if OPCODES[op].request_type not in (InitIn, BatchForgetIn)])
def test_spec_fills_every_field(op):
    """layout members + extra + names + tail == the dataclass's fields, in that order."""
    spec = OPCODES[op]
    fixed = len(spec.layout.unpack(bytes(spec.layout.size))) if spec.layout else 0
    count = fixed + len(spec.extra) + spec.name_count + (spec.tail is not None)
    fields = [f.name for f in dataclasses.fields(spec.request_type)]
    assert count == len(fields)
    if spec.tail is not None:
        assert fields.index(spec.tail) < fixed


def test_import_does_not_pull_in_trio():
    root = Path(__file__).resolve().parents[2]
    code = ("import zcfs.proto, sys; "
            "assert 'trio' not in sys.modules and 'pyfuse3' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={"PYTHONPATH": str(root)})


def test_proto_modules_import_one_way():
    """bodies <- opcodes <- requests: no module of the three imports a later one."""
    import ast
    proto = Path(__file__).resolve().parents[2] / "zcfs" / "proto"
    order = ["abi", "bodies", "opcodes", "requests"]
    for i, name in enumerate(order):
        tree = ast.parse((proto / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.level and node.module is None for alias in node.names}
        assert not imported & set(order[i + 1:]), f"{name} imports {imported & set(order[i + 1:])}"
