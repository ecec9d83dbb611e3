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



@pytest.mark.parametrize(("flags", "align", "orientation", "centre"),
                         [([], True, "search", None), (["--no-align"], False, "search", None),
                          (["--keep-orientation"], True, "stored", None),
                          (["--centre", "1.5", "-2", "3"], True, "search", [1.5, -2.0, 3.0])])
def test_infer_aligns_unless_told_not_to(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: list[str],
                                         align: bool, orientation: str, centre: list[float] | None) -> None:
    import pandas as pd

    import fetalcmr.infer

    seen = {}

    def fake_infer(source, bundle, out, *, align: bool = True, orientation: str = "search", centre_mm=None,
                   progress: bool = True) -> pd.DataFrame:
        seen.update(source=source, align=align, orientation=orientation, centre=centre_mm)
        return pd.DataFrame()

    monkeypatch.setattr(fetalcmr.infer, "infer", fake_infer)
    assert main(["infer", str(tmp_path), "--bundle", str(tmp_path), "--out", str(tmp_path / "o"), *flags]) == 0
    assert seen == {"source": str(tmp_path), "align": align, "orientation": orientation, "centre": centre}
