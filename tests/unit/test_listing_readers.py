"""Which READDIRPLUS replies carry their files' attributes (engine/listing.py)."""

from __future__ import annotations

from zcfs.engine.listing import MAX_READERS, Readers

FIND, LS = 100, 200  # pids
TOP, SUB1, SUB2 = 1, 11, 12  # directory node ids


def test_a_reader_gets_attributes_in_its_first_directory_and_then_only_for_subdirectories():
    readers = Readers()
    assert readers.file_attributes(FIND, TOP)
    assert readers.file_attributes(FIND, TOP)  # the next chunk of the same listing
    assert not readers.file_attributes(FIND, SUB1)
    assert not readers.file_attributes(FIND, SUB2)
    assert readers.file_attributes(FIND, TOP)  # its first directory, listed again


def test_a_lookup_where_attributes_were_left_out_makes_a_stat_walker_for_good():
    readers = Readers()
    assert readers.file_attributes(FIND, TOP)
    assert readers.file_attributes(LS, TOP)
    readers.looked_up(LS, TOP)  # in a directory that had them: says nothing
    assert not readers.file_attributes(LS, SUB1)
    readers.looked_up(FIND, SUB1)  # another reader's lookup: says nothing of LS
    assert not readers.file_attributes(LS, SUB2)
    readers.looked_up(LS, SUB2)
    assert readers.file_attributes(LS, SUB1)
    assert readers.file_attributes(LS, SUB2)
    assert not readers.file_attributes(FIND, SUB2)


def test_a_reader_outside_our_pid_namespace_always_gets_attributes():
    readers = Readers()
    assert all(readers.file_attributes(0, directory) for directory in (TOP, SUB1, SUB2))


def test_the_table_starts_afresh_when_full():
    readers = Readers()
    for pid in range(1, MAX_READERS + 1):
        readers.file_attributes(pid, TOP)
        readers.file_attributes(pid, SUB1)
    assert not readers.file_attributes(1, SUB2)
    assert readers.file_attributes(MAX_READERS + 1, SUB1)  # a new reader: its first directory
    assert readers.file_attributes(1, SUB2)  # forgotten, so new again
