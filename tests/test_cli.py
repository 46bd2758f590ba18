"""The command line: fast help, an example on every command, data synth determinism."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from celltune.cli import app

runner = CliRunner()

COMMANDS = [
    [], ["demo"], ["train"], ["evaluate"], ["predict"], ["export"], ["study"], ["report"],
    ["models"], ["data"], ["data", "synth"], ["data", "summary"], ["data", "download", "neurips"],
]


def test_help_does_not_import_heavy_libraries():
    """`celltune --help` stays fast because torch & co. are imported only where used."""
    code = (
        "import sys; from celltune.cli import app; "
        "heavy = [m for m in ('torch', 'lightning', 'segmentation_models_pytorch', 'timm', "
        "'albumentations', 'matplotlib', 'scipy', 'skimage') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "celltune")
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "celltune" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("celltune ")


def test_data_synth_same_seed_same_bytes(tmp_path):
    for name in ("a", "b"):
        result = runner.invoke(
            app, ["data", "synth", str(tmp_path / name), "--n", "6", "--size", "64", "--seed", "3"]
        )
        assert result.exit_code == 0, result.output
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 13  # 6 images, 6 labels, synthetic.json
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_user_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.txt").write_text("not data")
    out = subprocess.run(
        [sys.executable, "-m", "celltune.cli", "data", "synth", str(tmp_path / "bad"), "--n", "4"],
        capture_output=True, text=True,
    )
    assert out.returncode != 0
    text = (out.stdout + out.stderr).strip()
    assert text.startswith("error:") and "Traceback" not in text
    assert str(tmp_path / "bad") in text.replace("\n", "")


def test_train_offers_the_derived_settings_as_options():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--val", "--filter", "--channels", "--crop", "--resize", "--max-time"):
        assert option in result.output
    assert "derived from the training images" in result.output
