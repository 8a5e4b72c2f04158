"""Which listings carry the attributes of their files: per reader, learned from its requests.

READDIRPLUS can give each listed name its attributes and node id, so a
reader that then stats every name (ls -l, du, tar c) needs no LOOKUP round
trip per name. A reader that only wants the names (find, a d_type walk)
gains nothing from them, and the daemon pays for every one: an lstat, a
file handle, an inode in the table and a FORGET later (about four fifths
of its work per listed name). The kernel cannot tell them apart for us:
FUSE_READDIRPLUS_AUTO gives attributes to the first chunk of every listing
anyway, and the whole of a small directory is one chunk.

So the daemon watches each reader (the pid of the request; 0, a process
outside the daemon's pid namespace, always gets attributes):

1. The first directory a reader lists gets attributes for every name, as
   before: a single `ls -l` or `stat *` pays nothing.
2. Every later directory it lists gets them for its subdirectories (a
   walker descends into those: one LOOKUP each saved) and for objects in
   use (whose attributes the kernel drops after a write: a GETATTR each
   saved) only, and nodeid 0 for the rest, which the kernel lists by name
   alone (fs/fuse/readdir.c, fuse_direntplus_link: "userspace did not want
   to return attributes").
3. A LOOKUP by the reader in the last directory it got that way shows it
   stats what it lists: from then on it gets every attribute again. Such a
   reader pays one directory's LOOKUPs once.

A reused pid starts where its predecessor left off, which costs at most
one directory's LOOKUPs (a stat walker) or attributes it does not need
(a name walker), never a wrong answer: nodeid 0 is always a correct reply.
"""

from __future__ import annotations

from typing import Union

# A reader's state: (first directory, directory listed without file
# attributes or 0), or _STATS once it has shown that it stats what it lists.
_STATS = None
_Reader = Union[tuple[int, int], None]
# Readers remembered at most; past that the table starts afresh (a reader
# forgotten is a new one: attributes for its next directory).
MAX_READERS = 4096


class Readers:
    """Per-reader choice of attributes in READDIRPLUS replies (see the module's docstring).

    Only dict operations, each atomic under the GIL: safe from the engine's
    worker threads; a lost update costs a choice, never a wrong reply.
    """

    def __init__(self) -> None:
        self._readers: dict[int, _Reader] = {}

    def file_attributes(self, pid: int, directory: int) -> bool:
        """Whether a listing of `directory` by `pid` gives attributes to its non-directories."""
        if not pid:
            return True
        state = self._readers.get(pid, 0)
        if state is _STATS:
            return True
        if state == 0:  # a new reader: this is its first directory
            if len(self._readers) >= MAX_READERS:
                self._readers.clear()
            self._readers[pid] = (directory, 0)
            return True
        first, _ = state
        if directory == first:
            return True
        self._readers[pid] = (first, directory)
        return False

    def looked_up(self, pid: int, parent: int) -> None:
        """`pid` looked a name up in `parent`: a stat walker if `parent` is where it got no attributes."""
        state = self._readers.get(pid, 0)
        if state and state[1] == parent:
            self._readers[pid] = _STATS
