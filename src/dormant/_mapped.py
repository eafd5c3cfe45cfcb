"""Which file a memory-mapped tensor's bytes come from, so a file changed under a lazy model is
an error before its pages are touched (a page past the end of a truncated file is a SIGBUS).

Libraries hand dormant checkpoint tensors over ``mmap``'d bytes (safetensors' readers behind
``from_pretrained``); the storage does not know its file, so this asks the kernel
(``/proc/self/maps``, Linux). Elsewhere nothing is found and nothing is checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_last: tuple[int, int, str] | None = None  # (start, end, path) of the last mapping found


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


def mapped_file(address: int) -> MappedFile | None:
    """The regular file mapped at ``address`` in this process, if any."""
    global _last
    if address == 0:
        return None  # a null data pointer: an empty storage, no bytes (and no need to read maps)
    if _last is None or not _last[0] <= address < _last[1]:
        _last = _find(address)
    if _last is None or not _last[2].startswith("/"):
        return None
    try:
        st = os.stat(_last[2])
    except OSError:
        return None
    return MappedFile(_last[2], st.st_ino, st.st_size, st.st_mtime_ns)


def _find(address: int) -> tuple[int, int, str] | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end:  # anonymous memory too, so that misses are cached
                    return start, end, fields[5].strip() if len(fields) == 6 else ""
    except OSError:
        pass
    return None
