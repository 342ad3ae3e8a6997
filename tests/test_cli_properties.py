"""Property-based checks of the command line: any value of any numeric or choice option of any command either
passes the Config's check or is an error without a traceback (a one-line `error:` or click's usage error).

The options come from the Configs (lowloss.config.fields_of); the run itself is replaced by Config.check(), so
the property covers every option quickly."""

import math
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lowloss.api import METHODS, method_module  # noqa: E402
from lowloss.cli import main  # noqa: E402
from lowloss.config import check_common, fields_of  # noqa: E402
from lowloss.errors import LowlossError  # noqa: E402


class Checked(Exception):
    """Raised by the stand-in for the run: the values passed Config.check()."""


def _options():
    out = []
    for name in sorted(METHODS):
        for spec in fields_of(method_module(name).Config):
            if spec.multiple or spec.nargs or spec.parse is not None:
                continue
            if spec.choices or spec.type in (int, float):
                out.append((name, spec))
    return out


OPTIONS = _options()
SPECIAL = ["0", "-0", "-1", "1", "1e-300", "1e300", "nan", "inf", "-inf", "", " ", "abc", "1.5", "2**3", "0x10",
           "9" * 40, "-" + "9" * 40, "none", "None"]


def _values(spec):
    if spec.choices:
        return st.one_of(st.sampled_from([str(c) for c in spec.choices]), st.text(max_size=12),
                         st.sampled_from(SPECIAL))
    if spec.type is int:
        return st.one_of(st.integers(-(2**70), 2**70).map(str), st.integers(-3, 3).map(str), st.sampled_from(SPECIAL))
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.floats(-3, 3).map(repr),
                     st.sampled_from(SPECIAL))


@st.composite
def option_and_value(draw):
    name, spec = draw(st.sampled_from(OPTIONS))
    return name, spec, draw(_values(spec))


def _inputs(name, tmp):
    meta = getattr(method_module(name), "INPUTS", None)
    if meta is None:
        return []
    n = meta.get("nargs", -1)
    return [str(tmp)] * (n if n > 0 else 3)


def _check_only(mod, config, inputs, out, **kw):
    check_common(config)  # what run_method checks first
    config.check()
    raise Checked


@pytest.fixture(scope="module")
def in_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("inputs")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option_and_value())
def test_any_option_value_runs_or_is_a_clean_error(in_dir, capsys, case):
    name, spec, value = case
    argv = [name, *_inputs(name, in_dir), spec.flag, value, "--out", str(in_dir / "never"), "-q"]
    with mock.patch("lowloss.rundir.run_method", _check_only):
        try:
            main(argv)
        except Checked:  # passed the check: the value must be one the option allows
            capsys.readouterr()
            if spec.choices:
                assert value in [str(c) for c in spec.choices], (argv, "accepted a value outside the choices")
            if spec.type is float:
                assert math.isfinite(float(value)), (argv, "accepted a number that is not finite")
            if spec.name.endswith("seed"):
                assert 0 <= int(value) < 2**32, (argv, "accepted a seed numpy and torch refuse")
            return
        except SystemExit as e:
            err = capsys.readouterr().err
            assert e.code == 2, (argv, e.code, err)
            assert "Traceback" not in err
            if err.startswith("error: "):
                assert err.count("\n") == 1, (argv, err)  # lowloss's own: one line naming the option
            else:
                assert "Error: " in err and ("Invalid value" in err or "No such option" in err
                                             or "requires an argument" in err), (argv, err)  # click's usage error
            return
    pytest.fail(f"{argv}: neither ran nor stopped")


def test_non_finite_numbers_are_refused_for_every_float_option():
    """NaN and infinity pass no float option of any method (a NaN compares False with everything)."""
    for name in sorted(METHODS):
        mod = method_module(name)
        for spec in fields_of(mod.Config):
            if spec.type is not float or spec.multiple or spec.nargs or spec.parse:
                continue
            for bad in (math.nan, math.inf, -math.inf):
                with pytest.raises(LowlossError, match=f"{spec.flag} must be a finite number"):
                    check_common(mod.Config(**{spec.name: bad}))
