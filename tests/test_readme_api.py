"""The README's Python API examples run as written (with fewer epochs and units, to be quick)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SHORTER = {"epochs=300)": "epochs=3)", "units=256, epochs=4)": "units=8, epochs=1)"}  # README text -> test run


def api_examples() -> str:
    """The python blocks of the README's "Python API" section, in order, as one script."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Python API\n") :]
    section = section[: section.index("\n## ", 1)]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL))


def test_the_python_api_examples_run(tmp_path, monkeypatch, capsys):
    code = api_examples()
    for long, short in SHORTER.items():
        assert long in code, f"the README's examples changed: update SHORTER ({long!r} is gone)"
        code = code.replace(long, short)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "RMSE on the test part (sunspots" in printed and "Bits per character on the held-out text" in printed
    assert "torch.Size([16, 8])" in printed
    for name in ("runs/sunspots/test_forecast.png", "runs/sunspots/learning_curves.png", "runs/sunspots/forecast.png",
                 "gates-series.png", "gates-text.png", "runs/sunspots/checkpoint.pt", "runs/kjv/checkpoint.pt"):
        assert (tmp_path / name).stat().st_size > 10_000, name
