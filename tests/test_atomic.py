import os
import shutil

import pytest

from paramsim import atomic
from paramsim.errors import ParamsimError


def test_atomic_write_replaces_whole_file_with_the_usual_mode(tmp_path):
    path = tmp_path / "out.txt"
    atomic.atomic_write(path, "new")
    assert path.read_text() == "new"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~atomic._umask())


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


# --------------------------------------------------------------------------- output directories

KIND = atomic.OutputKind("a test output", ("result.json",), ("result.json", "plot.png"))


def _refused(path, overwrite):
    """Enter atomic_dir, whose check must raise before the body runs."""
    with atomic.atomic_dir(path, KIND, overwrite):
        raise AssertionError("the body must not run")


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_atomic_dir_writes_a_new_directory_with_the_usual_mode(tmp_path):
    with atomic.atomic_dir(tmp_path / "out", KIND) as new:
        assert not (tmp_path / "out").exists()  # nothing appears until the end
        new.mkdir()
        (new / "result.json").write_text("{}")
    assert _listing(tmp_path) == ["out", "out/result.json"]
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == oct(0o777 & ~atomic._umask())


@pytest.mark.parametrize("mode", [0o750, 0o555])  # 555: no write permission to move it
def test_an_empty_folder_of_the_users_keeps_its_mode(tmp_path, mode):
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, mode)  # whatever the umask
    kind = atomic.OutputKind("maps", ("result.json",), ("result.json",))
    with atomic.atomic_dir(out, kind) as tmp:
        tmp.mkdir()
        (tmp / "result.json").write_text("{}")
    assert (out / "result.json").exists() and (out.stat().st_mode & 0o777) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_refuses_a_users_directory_even_with_overwrite(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ParamsimError, match="is not a test output"):
            _refused(mine, overwrite)
    assert _listing(tmp_path) == ["mine", "mine/notes.txt"]


def test_a_users_file_inside_an_output_of_ours_makes_it_not_ours(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("{}")
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(ParamsimError, match="thesis.tex"):
        _refused(out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "keep me"


def test_the_refusal_names_the_users_file_first(tmp_path):
    """Among many entries of ours, the one that blocks is the one worth naming."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("result.json", "plot.png", ".a.tmp", ".b.tmp"):
        (out / name).write_text("{}")
    (out / "zz-notes.txt").write_text("keep me")
    with pytest.raises(ParamsimError, match=r"it holds zz-notes\.txt, "):
        _refused(out, overwrite=True)


def test_an_output_of_ours_needs_overwrite_and_is_then_swapped_in(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("old")
    (out / "plot.png").write_text("old plot")
    with pytest.raises(ParamsimError, match="--overwrite"):
        _refused(out, overwrite=False)
    assert (out / "result.json").read_text() == "old"
    with atomic.atomic_dir(out, KIND, overwrite=True) as new:
        new.mkdir()
        (new / "result.json").write_text("new")
        assert (out / "result.json").read_text() == "old"  # untouched while writing
    assert _listing(tmp_path) == ["out", "out/result.json"]  # the old plot went with the old
    assert (out / "result.json").read_text() == "new"


def test_a_failed_run_keeps_the_earlier_output_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_dir(out, KIND, overwrite=True) as new:
        new.mkdir()
        (new / "result.json").write_text("half")
        raise RuntimeError("killed")
    assert _listing(tmp_path) == ["out", "out/result.json"]
    assert (out / "result.json").read_text() == "old"


@pytest.mark.parametrize("what", ["file", "link", "empty"])
def test_files_links_and_empty_directories(tmp_path, what):
    target = tmp_path / "out"
    if what == "file":
        target.write_text("user data")
    elif what == "link":
        (tmp_path / "real").mkdir()
        target.symlink_to(tmp_path / "real")
    else:
        target.mkdir()
    if what == "empty":  # nothing to lose: used
        with atomic.atomic_dir(target, KIND) as new:
            new.mkdir()
            (new / "result.json").write_text("{}")
        assert _listing(tmp_path) == ["out", "out/result.json"]
        return
    with pytest.raises(ParamsimError, match="is a file" if what == "file" else "symbolic link"):
        _refused(target, overwrite=True)
    assert target.is_symlink() if what == "link" else target.read_text() == "user data"


def test_nested_outputs_are_recognised_per_subdirectory(tmp_path):
    kind = atomic.OutputKind("maps", ("result.json",), ("result.json",), nested=True)
    out = tmp_path / "out"
    (out / "chain").mkdir(parents=True)
    (out / "chain" / "result.json").write_text("{}")
    assert atomic.check_output_dir(out, kind, overwrite=True) == "ours"
    (out / "photos").mkdir()
    with pytest.raises(ParamsimError, match="photos"):
        atomic.check_output_dir(out, kind, overwrite=True)


def test_a_users_file_inside_a_nested_output_makes_it_not_ours(tmp_path):
    kind = atomic.OutputKind("maps", ("result.json",), ("result.json",), nested=True)
    out = tmp_path / "out"
    (out / "chain").mkdir(parents=True)
    (out / "chain" / "result.json").write_text("{}")
    assert atomic.check_output_dir(out, kind, overwrite=True) == "ours"
    (out / "chain" / "notes.txt").write_text("mine")
    with pytest.raises(ParamsimError, match="chain/notes.txt, which paramsim does not write"):
        atomic.check_output_dir(out, kind, overwrite=True)
    (out / "chain" / "notes.txt").unlink()
    (out / "chain" / "photos").mkdir()
    (out / "chain" / "photos" / "a.jpg").write_text("mine")
    with pytest.raises(ParamsimError, match="chain/photos"):
        atomic.check_output_dir(out, kind, overwrite=True)
    assert (out / "chain" / "photos" / "a.jpg").read_text() == "mine"


def test_a_per_method_folder_a_killed_run_left_unmarked_is_ours(tmp_path):
    kind = atomic.OutputKind("maps", ("result.json",), ("result.json", "*.png"), nested=True)
    out = tmp_path / "out"
    (out / "chain").mkdir(parents=True)
    (out / "chain" / "result.json").write_text("{}")
    (out / "gram1").mkdir()
    (out / "gram1" / ".result.json.x1y2z3.tmp").write_text("half")  # killed mid-write
    assert atomic.check_output_dir(out, kind, overwrite=True) == "ours"
    (out / "gram1" / "mine.txt").write_text("mine")
    with pytest.raises(ParamsimError, match="gram1/mine.txt"):
        atomic.check_output_dir(out, kind, overwrite=True)


def test_an_opaque_folder_may_be_a_link_for_a_run_that_only_adds(tmp_path):
    store = tmp_path / "bigdisk"
    store.mkdir()
    out = tmp_path / "zoo"
    out.mkdir()
    (out / "registry.sqlite").write_text("")
    (out / "shards").symlink_to(store)
    resumable = atomic.OutputKind(
        "a zoo", ("registry.sqlite",), ("registry.sqlite",), opaque=("shards",)
    )
    assert atomic.check_output_dir(out, resumable, overwrite=False, resume=True) == "ours"
    strict = atomic.OutputKind(
        "a zoo", ("registry.sqlite",), ("registry.sqlite",), subdirs=(("shards", resumable),)
    )
    with pytest.raises(ParamsimError, match="not a zoo"):  # what would delete never follows it
        atomic.check_output_dir(out, strict, overwrite=True)


def test_named_subdirectories_are_looked_into_and_the_message_names_the_users_file(tmp_path):
    stage = atomic.OutputKind("a stage", ("done.json",), ("done.json", "*.png"))
    kind = atomic.OutputKind(
        "a report", ("report.json",), ("report.json",), subdirs=(("eval", stage),)
    )
    out = tmp_path / "out"
    (out / "eval").mkdir(parents=True)
    (out / "report.json").write_text("{}")
    (out / "eval" / "done.json").write_text("{}")
    (out / "eval" / "plot.png").write_text("")
    assert atomic.check_output_dir(out, kind, overwrite=True) == "ours"
    (out / "eval" / "mynotes.txt").write_text("precious")
    with pytest.raises(ParamsimError, match="eval/mynotes.txt, which paramsim does not write"):
        atomic.check_output_dir(out, kind, overwrite=True)
    (out / "eval" / "mynotes.txt").unlink()
    (out / "eval" / "link").symlink_to(tmp_path)  # a link is never followed, never ours
    with pytest.raises(ParamsimError, match="eval/link"):
        atomic.check_output_dir(out, kind, overwrite=True)
    (out / "eval" / "link").unlink()
    shutil.rmtree(out / "eval")
    (out / "eval").write_text("a file where our folder would be")
    with pytest.raises(ParamsimError, match="not a report"):
        atomic.check_output_dir(out, kind, overwrite=True)


def test_replace_in_place_resumes_replaces_and_restores(tmp_path):
    out = tmp_path / "report"
    with atomic.replace_in_place(out, KIND, overwrite=False) as path:
        path.mkdir()
        (path / "result.json").write_text("first")
    with atomic.replace_in_place(out, KIND, overwrite=False) as path:  # continued in place
        assert (path / "result.json").read_text() == "first"
    with pytest.raises(RuntimeError), atomic.replace_in_place(out, KIND, overwrite=True) as path:
        assert not path.exists()  # the earlier one was moved aside
        path.mkdir()
        (path / "result.json").write_text("half")
        raise RuntimeError("killed")
    assert (out / "result.json").read_text() == "first"  # restored
    with atomic.replace_in_place(out, KIND, overwrite=True) as path:
        path.mkdir()
        (path / "result.json").write_text("second")
    assert _listing(tmp_path) == ["report", "report/result.json"]
    assert (out / "result.json").read_text() == "second"


def test_check_output_file(tmp_path):
    magic = b"\x93NUMPY"
    atomic.check_output_file(tmp_path / "new.npy", "an array", magic, overwrite=False)
    (tmp_path / "old.npy").write_bytes(magic + b"rest")
    with pytest.raises(ParamsimError, match="--overwrite"):
        atomic.check_output_file(tmp_path / "old.npy", "an array", magic, overwrite=False)
    atomic.check_output_file(tmp_path / "old.npy", "an array", magic, overwrite=True)
    (tmp_path / "notes.txt").write_text("user data")
    with pytest.raises(ParamsimError, match="is not an array"):
        atomic.check_output_file(tmp_path / "notes.txt", "an array", magic, overwrite=True)
    with pytest.raises(ParamsimError, match="is a directory"):
        atomic.check_output_file(tmp_path, "an array", magic, overwrite=True)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ParamsimError, match="not a regular file"):
        atomic.check_output_file(tmp_path / "fifo", "an array", magic, overwrite=True)


def test_the_working_directory_is_never_an_output(tmp_path, monkeypatch):
    work = tmp_path / "empty"
    work.mkdir()
    monkeypatch.chdir(work)
    for path in (".", str(work), ".."):
        with pytest.raises(ParamsimError, match="working directory"):
            atomic.check_output_dir(path, KIND, overwrite=True)
    assert work.is_dir()


def _killed_run(tmp_path, name, moved_aside: bool):
    """What a run killed mid-swap leaves: a work directory beside the output (unlocked),
    with the new partial output and, if it had got that far, the earlier output moved aside."""
    work = tmp_path / f".{name}.abcd1234.partial"
    (work / name).mkdir(parents=True)
    (work / name / "result.json").write_text("partial")
    if moved_aside:
        (work / ".replaced").mkdir()
        (work / ".replaced" / "result.json").write_text("earlier")
    old = work.stat().st_mtime - 2 * atomic.STALE_AFTER_S
    os.utime(work, (old, old))  # killed a while ago
    return work


def test_a_killed_runs_work_is_tidied_and_an_earlier_output_put_back(tmp_path):
    out = tmp_path / "out"
    _killed_run(tmp_path, "out", moved_aside=True)  # killed between the two renames
    other = tmp_path / ".out.zzzz9999.partial"
    (other / "notes").mkdir(parents=True)  # something we did not write: left alone
    long_ago = other.stat().st_mtime - 2 * atomic.STALE_AFTER_S
    os.utime(other, (long_ago, long_ago))
    fresh = tmp_path / ".out.new12345.partial"
    fresh.mkdir()  # just made by a run that has not locked it yet: left alone
    with pytest.raises(ParamsimError, match="--overwrite"):
        _refused(out, overwrite=False)  # the earlier output is back, and ours
    assert (out / "result.json").read_text() == "earlier"
    assert _listing(tmp_path) == sorted(
        [
            "out",
            "out/result.json",
            ".out.new12345.partial",
            ".out.zzzz9999.partial",
            ".out.zzzz9999.partial/notes",
        ]
    )
    _killed_run(tmp_path, "out", moved_aside=False)  # killed while writing
    with atomic.atomic_dir(out, KIND, overwrite=True) as new:
        new.mkdir()
        (new / "result.json").write_text("new")
    assert (out / "result.json").read_text() == "new"
    assert not list(tmp_path.glob(".out.abcd1234.partial"))


def test_a_running_jobs_work_directory_is_left_alone(tmp_path):
    out = tmp_path / "out"
    with atomic.atomic_dir(out, KIND) as new:
        new.mkdir()
        (new / "result.json").write_text("first")
        running = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        long_ago = running[0].stat().st_mtime - 2 * atomic.STALE_AFTER_S
        os.utime(running[0], (long_ago, long_ago))  # old: only its lock protects it
        atomic.tidy_stale_work(out)  # another command starting now
        assert all(p.is_dir() for p in running) and len(running) == 1
    assert (out / "result.json").read_text() == "first"


def test_a_killed_runs_earlier_output_is_put_back_at_once(tmp_path, capsys):
    """A work directory holding .replaced belongs to a dead run as soon as its lock is free
    (runs lock before they move anything in), young or not; one kept because the target
    exists is reported, not hidden."""
    out = tmp_path / "out"
    work = _killed_run(tmp_path, "out", moved_aside=True)
    now = work.stat().st_mtime + 2 * atomic.STALE_AFTER_S
    os.utime(work, (now, now))  # killed a moment ago
    atomic.tidy_stale_work(out)
    assert (out / "result.json").read_text() == "earlier" and not work.exists()
    again = _killed_run(tmp_path, "out", moved_aside=True)  # and now the target exists
    atomic.tidy_stale_work(out)
    assert again.exists() and "earlier output of a killed run" in capsys.readouterr().err
