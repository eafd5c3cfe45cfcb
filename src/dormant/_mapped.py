"""Which file a memory-mapped tensor's bytes come from, so a file changed under a lazy model is
an error before its pages are touched (a page past the end of a truncated file is a SIGBUS).

Libraries hand dormant checkpoint tensors over ``mmap``'d bytes (safetensors' readers behind
``from_pretrained``); the storage does not know its file, so this asks the kernel
(``/proc/self/maps``, Linux). Elsewhere nothing is found and nothing is checked.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MappedFile:
    """The file behind some memory-mapped bytes, as it was when they were recorded."""

    path: str
    inode: int
    size: int
    mtime_ns: int

    def changed(self) -> str | None:
        """What changed since (size, modification time, replaced, removed), or None."""
        try:
            now = os.stat(self.path)
        except OSError:
            return "removed"
        if now.st_ino != self.inode:
            return "replaced"
        if now.st_size != self.size:
            return f"size {self.size} -> {now.st_size} bytes"
        if now.st_mtime_ns != self.mtime_ns:
            return "modified"
        return None


@dataclass
class _Mapping:
    """One range of this process's address space, as ``/proc/self/maps`` lists it."""

    start: int
    end: int
    path: str  # "" for anonymous memory
    link: str  # its /proc/self/map_files entry (file mappings): the file mapped there now
    file: tuple[int, int] | None = None  # (device, inode) of the file mapped there, when seen
    # The last answer given for this range (given again while the file is the same), and a
    # storage it was given for. A file mapping is unmapped whole, only once no storage over it
    # lives: while this one lives, so does the mapping, and the answer stands without a look at
    # the kernel.
    known: MappedFile | None = None
    holder: weakref.ref[torch.UntypedStorage] | None = None


_last: _Mapping | None = None  # the last range found: a checkpoint's tensors share one
_map_files = True  # whether this /proc has map_files (Linux 3.3 and later, not every sandbox)


def mapped_file(storage: torch.UntypedStorage) -> MappedFile | None:
    """The regular file whose mapped pages hold ``storage``'s bytes, if any."""
    global _last
    address = storage.data_ptr()
    if address == 0:
        return None  # a null data pointer: an empty storage, no bytes (and no need to read maps)
    m = _last
    remembered = m is not None and m.start <= address < m.end
    if remembered:
        assert m is not None
        if m.holder is not None and m.holder() is not None:
            # A storage over this file's pages still lives, so the file is still mapped here:
            # no need to ask the kernel (the tensors of one checkpoint file, one after another).
            return m.known
    else:
        m = _last = _find(address)
    if m is None or not m.path.startswith("/"):
        return None
    st = _file_stat(m)
    if st is None and remembered:
        # Another file is mapped over the remembered range now (or it is gone): look again.
        m = _last = _find(address)
        if m is None or not m.path.startswith("/"):
            return None
        st = _file_stat(m)
    if st is None:
        return None
    k = m.known
    if k is None or (k.path, k.inode, k.size, k.mtime_ns) != (
        m.path,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    ):
        k = m.known = MappedFile(m.path, st.st_ino, st.st_size, st.st_mtime_ns)
    m.holder = weakref.ref(storage)
    return k


def _file_stat(m: _Mapping) -> os.stat_result | None:
    """The stat of the file mapped over ``m``'s range now; None if that is no longer the file
    first seen there.

    A range can be unmapped and another file mapped at the same addresses (the shards of a
    checkpoint, one after the other, are often the same size): the range's map_files entry names
    the file mapped there now, and stats it in the same call."""
    global _map_files
    if _map_files:
        st = _stat(m.link)
        if m.file is not None:
            return st if st is not None and (st.st_dev, st.st_ino) == m.file else None
        if st is not None:
            m.file = (st.st_dev, st.st_ino)
            return st
        _map_files = False  # a file mapping just listed, without an entry: this /proc has none
    return _stat(m.path)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _find(address: int) -> _Mapping | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end:  # anonymous memory too, so that misses are cached
                    path = fields[5].strip() if len(fields) == 6 else ""
                    return _Mapping(start, end, path, f"/proc/self/map_files/{fields[0]}")
    except OSError:
        pass
    return None
