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
