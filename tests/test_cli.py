"""The command line is generated from each method's Config: every option's default is the Config's."""

import dataclasses

import pytest
from click.testing import CliRunner

from lowloss.api import METHODS, method_module
from lowloss.cli import COMMANDS, cli, config_from_options, main, method_command
from lowloss.config import fields_of


def test_every_command_is_listed_and_every_method_has_a_command():
    assert set(COMMANDS) == set(METHODS) | {"study"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_options_come_from_the_config(name):
    mod = method_module(name)
    cmd = method_command(name)
    by_name = {p.name: p for p in cmd.params}
    for spec in fields_of(mod.Config):
        opt = by_name[spec.name]
        assert spec.flag in opt.opts, (name, spec.name)
        if not spec.multiple and spec.type is not bool and not isinstance(spec.default, (tuple, list)):
            assert opt.default == spec.default, (name, spec.name)
    # the defaults, taken back through the command line, are the Config's defaults
    kw = {p.name: p.default for p in cmd.params if p.name in {s.name for s in fields_of(mod.Config)}}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}
    assert dataclasses.asdict(config_from_options(mod.Config, kw)) == dataclasses.asdict(mod.Config())
    assert CliRunner().invoke(cli, [name, "--help"]).exit_code == 0


def test_bad_values_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "-1", "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --epochs must be >= 0") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_flags_from_boolean_fields():
    cmd = method_command("connect")
    opt = {p.name: p for p in cmd.params}["free_endpoints"]
    assert opt.is_flag and opt.default is False
