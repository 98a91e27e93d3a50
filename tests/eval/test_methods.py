"""The method table: lookup by name, options, unavailable packages, and the import layering
that keeps `eval` and `lps` apart."""

import ast
from pathlib import Path

import pytest

import paramsim
from paramsim import methods
from paramsim.errors import ParamsimError
from paramsim.methods import MethodEntry, MethodUnavailable, make_method, parse_method_names

SRC = Path(paramsim.__file__).parent


def test_names_resolve_to_methods_with_their_options():
    m = make_method("match", mode="reference")
    assert m.name == "match" and m.mode == "reference"
    assert make_method("lps-authors").variant == "lps-authors"
    assert make_method("lps", extra_zoo="/z").extra_zoo == "/z"
    with pytest.raises(ParamsimError, match="bad options for method flat"):
        make_method("flat", depth=3)
    with pytest.raises(ParamsimError, match="unknown method 'nosuch'"):
        make_method("nosuch")


def test_parse_names():
    assert parse_method_names(None) == list(methods.FIXED_METHODS)
    assert parse_method_names("chain, lps") == ["chain", "lps"]
    for text, message in [
        ("chain,nosuch", "unknown method"),
        ("flat,flat", "twice"),
        (",", "empty"),
    ]:
        with pytest.raises(ParamsimError, match=message):
            parse_method_names(text)


def test_table_lists_every_lps_variant():
    from paramsim.lps import VARIANTS

    assert set(methods.LPS_VARIANTS) == set(VARIANTS)
    assert all(methods.entry(v).learned for v in VARIANTS)
    assert not any(methods.entry(f).learned for f in methods.FIXED_METHODS)


def test_missing_third_party_package_is_unavailable_but_our_own_is_a_bug(monkeypatch, tmp_path):
    (tmp_path / "needs_pkg_test.py").write_text("import nosuchpkg_xyz\n")
    (tmp_path / "needs_ours_test.py").write_text("import paramsim.nosuch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(methods.METHODS, "pkg", MethodEntry("pkg", "needs_pkg_test:X", "fixed", ""))
    monkeypatch.setitem(
        methods.METHODS, "ours", MethodEntry("ours", "needs_ours_test:X", "fixed", "")
    )
    with pytest.raises(MethodUnavailable, match="nosuchpkg_xyz"):
        make_method("pkg")
    made, unavailable = methods.make_methods(["flat", "pkg"])
    assert list(made) == ["flat"] and "nosuchpkg_xyz" in unavailable["pkg"]
    with pytest.raises(ModuleNotFoundError) as info:
        make_method("ours")
    assert not isinstance(info.value, ParamsimError)


def _imports(package: str) -> set[str]:
    """Every module named by an import statement anywhere in a package (lazy ones too)."""
    out: set[str] = set()
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("package, forbidden", [("eval", "paramsim.lps"), ("lps", "paramsim.eval")])
def test_eval_and_lps_do_not_import_each_other(package, forbidden):
    bad = {m for m in _imports(package) if m == forbidden or m.startswith(forbidden + ".")}
    assert not bad, f"paramsim.{package} imports {sorted(bad)}"


def test_methods_module_imports_no_stage_at_load_time():
    tree = ast.parse((SRC / "methods.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert {m for m in names if m and m.startswith("paramsim.")} <= {"paramsim.errors"}
