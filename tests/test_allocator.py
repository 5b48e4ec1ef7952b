"""The allocator tuning of training runs: thresholds raised inside the block, free memory released after,
nothing done where it is unavailable or turned off."""

from __future__ import annotations

import pytest

from napari_sscce import allocator


class FakeLibc:
    def __init__(self, accept: bool = True):
        self.calls: list[tuple] = []
        self.accept = accept

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1 if self.accept else 0

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    monkeypatch.delenv(allocator.ENV, raising=False)
    return fake


def test_thresholds_raised_inside_and_memory_released_after(libc):
    with allocator.keep_freed_memory() as note:
        assert ("mallopt", -3, allocator.MMAP_THRESHOLD) in libc.calls
        assert ("mallopt", -1, allocator.TRIM_THRESHOLD) in libc.calls
        assert ("malloc_trim", 0) not in libc.calls and "keeps freed memory" in note
        with allocator.keep_freed_memory():
            pass
        assert ("malloc_trim", 0) not in libc.calls  # only the outermost block releases
    assert libc.calls[-1] == ("malloc_trim", 0)


def test_released_even_when_the_run_raises(libc):
    with pytest.raises(RuntimeError), allocator.keep_freed_memory():
        raise RuntimeError("training failed")
    assert libc.calls[-1] == ("malloc_trim", 0)


def test_off_by_environment_or_unavailable(libc, monkeypatch):
    monkeypatch.setenv(allocator.ENV, "0")
    with allocator.keep_freed_memory() as note:
        pass
    assert libc.calls == [] and "defaults" in note
    monkeypatch.delenv(allocator.ENV)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    with allocator.keep_freed_memory() as note:
        pass
    assert "unavailable" in note and not allocator.release_free_memory()


def test_refused_settings_are_said(monkeypatch):
    fake = FakeLibc(accept=False)
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    monkeypatch.delenv(allocator.ENV, raising=False)
    with allocator.keep_freed_memory() as note:
        pass
    assert "refused" in note


def test_the_real_c_library_is_found_on_linux_glibc():
    import platform
    import sys

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    allocator._glibc.cache_clear()
    assert allocator._glibc() is not None and allocator.release_free_memory()
