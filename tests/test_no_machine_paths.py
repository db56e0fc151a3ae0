"""No tracked file names an absolute path of a development machine: a user's clone lives elsewhere."""

from __future__ import annotations

import re
import subprocess

from tests.support.samples import ROOT

# Built from pieces so that this file does not match itself.
_ROOTS = ["/" + "work/", "/" + "home/", "/" + "Users/", "/" + "root/", "C:" + "\\\\Users", "/" + "tmp/pytest-"]
MACHINE_PATH = re.compile("|".join(re.escape(r).replace("\\\\\\\\", "\\\\") for r in _ROOTS))


def tracked_text_files():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in out.decode("utf-8").split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (images, gzip)
        yield name, data.decode("utf-8", errors="replace")


def test_no_tracked_file_names_a_machine_path():
    found = [f"{name}:{n}: {line.strip()[:120]}" for name, text in tracked_text_files()
             for n, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not found, "absolute machine paths (use paths relative to the repository):\n" + "\n".join(found)


def test_the_check_finds_such_a_path():
    assert MACHINE_PATH.search("default " + "/" + "work/shared/data/clinc150")
    assert MACHINE_PATH.search("see " + "C:" + "\\" + "Users\\me\\repo")
    assert not MACHINE_PATH.search("infra/scripts/deploy_infra.sh and ../shared/reference/clu.md")
