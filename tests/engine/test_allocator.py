import platform

from patchstudio.engine.allocator import keep_freed_memory


def test_keep_freed_memory_is_taken_on_glibc_and_repeatable():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
    if platform.libc_ver()[0] == "glibc":
        assert first is True
