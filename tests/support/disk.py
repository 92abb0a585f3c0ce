"""A real full filesystem for the tests of full disks (the small tmpfs is conftest.py's `small_disk`), filled."""

import errno
import os


def fill(directory) -> None:
    """Write a file into the directory until its filesystem has no byte left."""
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
