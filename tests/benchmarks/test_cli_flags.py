"""The benchmark command lines share flag names, show their defaults and reject bad counts up front."""
from __future__ import annotations

import pytest

from benchmarks import demo, e2e, latency

MAINS = {"latency": latency.main, "e2e": e2e.main, "demo": demo.main}


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", MAINS)
def test_help_shows_the_shared_flags_with_their_defaults(name, capsys) -> None:
    text = _help(MAINS[name], capsys)
    assert "--out DIR" in text and "--threads N" in text
    assert f"(default: artifacts/{'demo' if name == 'demo' else 'bench'})" in text
    if name != "demo":
        assert "--artifact DIR" in text and "--checkpoint CKPT" in text and "(default: auto)" in text
    else:
        assert "what ``make demo`` runs" in text and "--no-progress" in text and "(default: 14)" in text


@pytest.mark.parametrize("name", MAINS)
def test_threads_0_is_a_usage_error(name, tmp_path, capsys) -> None:
    argv = ["--threads", "0", "--out", str(tmp_path)] + ([] if name == "demo" else ["--artifact", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        MAINS[name](argv)
    assert exit_.value.code == 2 and "--threads: expected a whole number of at least 1" in capsys.readouterr().err
