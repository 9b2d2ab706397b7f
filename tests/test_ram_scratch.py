"""The test run's choice of a RAM folder for its scratch files (testing/ram_scratch.py): taken only when
safe and roomy, refused when anyone else could have prepared the folder, and the sweep of what killed
runs leave removes only zpatch's stale folders."""
from __future__ import annotations

import os
import sys

import pytest

from testing import ram_scratch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the RAM folder is Linux-only")


@pytest.fixture
def shm(tmp_path):
    """A folder that a made-up mount table calls a tmpfs, and a made-up meminfo with 64 GiB available."""
    shm = tmp_path / "shm"
    shm.mkdir()
    (tmp_path / "mounts").write_text(f"proc /proc proc rw 0 0\ntmpfs {shm} tmpfs rw,nosuid,nodev 0 0\n")
    (tmp_path / "meminfo").write_text("MemTotal: 67108864 kB\nMemAvailable: 67108864 kB\n")
    return shm


def choose(shm, **kw):
    args = {"env": {}, "shm": str(shm), "mounts": str(shm.parent / "mounts"),
            "meminfo": str(shm.parent / "meminfo"), "needed": 1 << 20}
    return ram_scratch.choose(**{**args, **kw})


def test_a_roomy_tmpfs_gives_a_private_folder_of_this_user(shm):
    folder = choose(shm)
    assert folder == str(shm / f"zpatch-tests-{os.getuid()}")
    st = os.lstat(folder)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.getuid()
    assert choose(shm) == folder                  # the next run takes the same folder


def test_a_set_tmpdir_is_the_users_choice(shm):
    assert choose(shm, env={"TMPDIR": "/tmp"}) is None
    assert not any(shm.iterdir())                 # nothing made


def test_no_tmpfs_there_means_disk(shm):
    (shm.parent / "mounts").write_text(f"/dev/vda {shm} ext4 rw 0 0\n")
    assert choose(shm) is None
    assert not any(shm.iterdir())


def test_too_little_room_or_memory_means_disk(shm):
    assert choose(shm, needed=1 << 62) is None                 # more than the folder's file system holds
    (shm.parent / "meminfo").write_text("MemTotal: 1024 kB\nMemAvailable: 512 kB\n")
    assert choose(shm) is None                                 # tmpfs room is RAM: MemAvailable counts too
    (shm.parent / "meminfo").write_text("MemTotal: 1024 kB\n")
    assert choose(shm) is None                                 # unreadable: no guess
    assert not any(shm.iterdir())


def test_a_link_put_in_its_place_is_refused_not_followed(shm, tmp_path):
    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, shm / f"zpatch-tests-{os.getuid()}")
    assert choose(shm) is None
    assert not any(elsewhere.iterdir())


def test_a_folder_others_may_write_is_refused(shm):
    folder = shm / f"zpatch-tests-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)
    assert choose(shm) is None
    folder.chmod(0o750)                          # group-readable is still not private
    assert choose(shm) is None
    folder.chmod(0o700)
    assert choose(shm) == str(folder)


def test_a_folder_of_another_user_is_refused(shm):
    """Made as this user, then judged as if the run were another user's: the owner must be the runner."""
    folder = shm / f"zpatch-tests-{os.getuid() + 1}"
    folder.mkdir(mode=0o700)
    assert choose(shm, uid=os.getuid() + 1) is None


def test_a_file_in_its_place_is_refused(shm):
    (shm / f"zpatch-tests-{os.getuid()}").write_text("not a folder")
    assert choose(shm) is None


def test_the_sweep_removes_only_stale_zpatch_folders(tmp_path):
    top = tmp_path / "ram"
    top.mkdir()
    now = 10 * ram_scratch.STALE_AFTER_S
    old = now - ram_scratch.STALE_AFTER_S - 1
    made = {}
    for name in ("zpatch-idx-killed", "zpatch-test-cache-killed", "zpatch-idx-live", "pytest-of-root", "mine"):
        (top / name).mkdir()
        (top / name / "f").write_text("x")
        made[name] = top / name
    os.utime(made["zpatch-idx-killed"], (old, old))
    os.utime(made["zpatch-test-cache-killed"], (old, old))
    os.utime(made["zpatch-idx-live"], (now - 60, now - 60))
    os.utime(made["pytest-of-root"], (old, old))          # pytest's: its own retention cleans it
    os.utime(made["mine"], (old, old))
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("keep")
    os.symlink(target, top / "zpatch-link")
    os.utime(top / "zpatch-link", (old, old), follow_symlinks=False)
    (top / "zpatch-file").write_text("a file, not a folder zpatch made")
    os.utime(top / "zpatch-file", (old, old))

    assert ram_scratch.sweep(str(top), now=now) == ["zpatch-idx-killed", "zpatch-test-cache-killed"]
    assert sorted(p.name for p in top.iterdir()) == ["mine", "pytest-of-root", "zpatch-file", "zpatch-idx-live",
                                                     "zpatch-link"]
    assert (target / "keep").read_text() == "keep"
    assert ram_scratch.sweep(str(tmp_path / "absent"), now=now) == []
