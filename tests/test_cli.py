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



@pytest.mark.parametrize(("flags", "align", "orientation"), [([], True, "search"), (["--no-align"], False, "search"),
                                                            (["--keep-orientation"], True, "stored")])
def test_infer_aligns_unless_told_not_to(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: list[str],
                                         align: bool, orientation: str) -> None:
    import pandas as pd

    import fetalcmr.infer

    seen = {}

    def fake_infer(source, bundle, out, *, align: bool = True, orientation: str = "search",
                   progress: bool = True) -> pd.DataFrame:
        seen.update(source=source, align=align, orientation=orientation)
        return pd.DataFrame()

    monkeypatch.setattr(fetalcmr.infer, "infer", fake_infer)
    assert main(["infer", str(tmp_path), "--bundle", str(tmp_path), "--out", str(tmp_path / "o"), *flags]) == 0
    assert seen == {"source": str(tmp_path), "align": align, "orientation": orientation}
