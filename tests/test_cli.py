"""The fetalcmr command line: help, validation and its exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalcmr.cli import main


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("synthesise", "validate", "import-reference", "infer", "reproduce"):
        assert command in out


def test_validate_ok_and_bad(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tiny_dataset)]) == 0
    assert "valid (training: 3, validation: 1, testing: 1)" in capsys.readouterr().out
    tiny_dataset.write_text("{broken")
    assert main(["validate", str(tiny_dataset)]) == 2
    assert f"{tiny_dataset.resolve()}: not valid JSON" in capsys.readouterr().err

