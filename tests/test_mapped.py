"""Which file memory-mapped bytes come from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dormant._mapped import mapped_file

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")


def test_bytes_mapped_from_a_file_name_it_and_heap_bytes_do_not(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(4096))
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=4096)
    found = mapped_file(storage)
    assert found is not None and found.path == str(path) and found.size == 4096
    assert found.changed() is None
    assert mapped_file(torch.ones(3).untyped_storage()) is None


def test_an_empty_storage_has_no_file() -> None:
    empty = torch.tensor([])
    assert empty.untyped_storage().data_ptr() == 0
    assert mapped_file(empty.untyped_storage()) is None


def test_a_file_mapped_where_another_was_is_named_as_itself(tmp_path: Path) -> None:
    # The shards of a checkpoint are often the same size: once one is unmapped, the next is
    # mapped at the same addresses, and the range remembered from the first must not name it.
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(bytes(1 << 20))
    second.write_bytes(bytes(1 << 20))
    storage = torch.UntypedStorage.from_file(str(first), shared=False, nbytes=1 << 20)
    address = storage.data_ptr()
    found = mapped_file(storage)
    assert found is not None and found.path == str(first)
    del storage
    storage = torch.UntypedStorage.from_file(str(second), shared=False, nbytes=1 << 20)
    if storage.data_ptr() != address:
        pytest.skip("the kernel mapped the second file elsewhere: nothing to tell apart")
    found = mapped_file(storage)
    assert found is not None and found.path == str(second)
    assert found.inode == second.stat().st_ino
