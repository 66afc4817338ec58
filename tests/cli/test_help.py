"""`radio --help` and every command's `--help` explain the command and list its options."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from radio.cli.main import app


def _commands(group, prefix: tuple[str, ...] = ()):
    # typer vendors its own click: recognise groups and options by shape, not by class.
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        yield path, cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path)


def test_every_command_has_help():
    root = typer.main.get_command(app)
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = list(_commands(root))
    assert {" ".join(p) for p, _ in commands} >= {"config", "config show", "config validate", "sample-data", "scan"}
    for path, cmd in commands:
        assert cmd.help and len(cmd.help.split()) >= 4, f"{path} needs a one-sentence help"
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, path
        assert "Usage:" in result.stdout
        if not hasattr(cmd, "commands"):
            for param in cmd.params:
                if param.param_type_name == "option" and getattr(param, "help", None):
                    assert param.opts[0] in result.stdout, f"{path}: {param.opts[0]} not listed"


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("default: x\npipelines: {}\n")
    proc = subprocess.run([sys.executable, "-m", "radio.cli", "config", "validate", "--config", str(bad)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: pipelines: Dictionary should have at least 1 item after validation, not 0"
    assert "Traceback" not in proc.stderr
