import pytest

from engine.atomic import write_text, write_with


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")

    def explode(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_with(target, explode)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_written_files_get_the_usual_mode_not_0600(tmp_path):
    import os
    umask = os.umask(0)
    os.umask(umask)
    path = write_text(tmp_path / "spec.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
