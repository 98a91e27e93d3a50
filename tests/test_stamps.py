import os

from paramsim.stamps import files_stamp


def test_stamp_changes_with_a_file_and_is_empty_without_a_directory(tmp_path):
    (tmp_path / "a").write_bytes(b"12")
    first = files_stamp(tmp_path)
    assert files_stamp(str(tmp_path)) == first  # unchanged files, the same stamp
    os.utime(tmp_path / "a", ns=(1, 1))  # same size, another time
    assert files_stamp(tmp_path) != first
    (tmp_path / "b").write_bytes(b"")
    assert len(files_stamp(tmp_path)) == 2
    assert files_stamp(tmp_path / "absent") == () == files_stamp(None)
