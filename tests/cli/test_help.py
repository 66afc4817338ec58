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
    proc = subprocess.run(
        [sys.executable, "-m", "radio.cli", "config", "validate", "--config", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: {bad}: pipelines: Dictionary should have at least 1 item after validation, not 0"
    )
    assert "Traceback" not in proc.stderr


def test_boolean_options_render_as_flags():
    runner = CliRunner()
    root = typer.main.get_command(app)
    for path, _cmd in _commands(root):
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert "<bool>" not in result.stdout, path
    result = runner.invoke(app, ["featurize", "--help"], terminal_width=200)
    lines = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("--")]
    assert ["--overwrite", "recompute", "the", "selected", "target", "keys", "from", "scratch"] in lines
    assert any(words[:2] == ["--mosaic", "<int>"] for words in lines)


def test_every_error_class_derives_from_radio_error():
    import importlib
    import inspect
    import pkgutil

    import radio
    from radio.errors import RadioError

    found = []
    for part in ("config", "store", "featurize", "distill", "evaluate", "compress"):
        package = importlib.import_module(f"radio.{part}")
        for info in pkgutil.walk_packages(package.__path__, f"radio.{part}."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name:
                    found.append(obj)
                    assert issubclass(obj, RadioError), f"{info.name}.{name}"
    names = {c.__name__ for c in found}
    assert {"GridMismatch", "ConfigError", "StoreError", "TeacherError", "WeightsError", "CompressError"} <= names
    assert radio.load  # the package itself stays importable without side effects


def test_any_radio_error_is_one_line_and_exit_2(monkeypatch):
    from radio.distill.loss import GridMismatch

    def boom(*args, **kwargs):
        raise GridMismatch("sam@256: student grid 12x12 != target grid 16x16")

    monkeypatch.setattr("radio.distill.trainer.train_stage", boom)  # inject the fault
    result = CliRunner().invoke(app, ["distill", "--stage", "1"])
    assert result.exit_code == 2
    assert result.stderr == "error: sam@256: student grid 12x12 != target grid 16x16\n"
