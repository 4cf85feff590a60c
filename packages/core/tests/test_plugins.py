"""Plugin host: registration, provenance, broken and duplicate plugins, disabling."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnkit.core import LSTM, Cell, Kernel, hookimpl
from rnnkit.core.errors import PluginConflictError, UnknownNameError
from rnnkit.core.hookspecs import HOOK_NAMES, RegisterCell, RegisterKernel
from rnnkit.core.plugins import PluginHost, PluginWarning, module_plugin, use_host
from rnnkit.core.reference import reference_forward


class MyLSTM(LSTM):
    """a test cell"""


def _cells_plugin(name: str, cell_name: str) -> Any:
    def rnnkit_register_cells(register: RegisterCell) -> None:
        register(cell_name, MyLSTM)

    return module_plugin(name, rnnkit_register_cells=rnnkit_register_cells)


def test_builtin_core_plugin_is_loaded_from_its_entry_point() -> None:
    host = PluginHost()
    assert {"elman", "lstm", "gru", "slstm"} <= set(host.cells.names())
    core = host.plugins["core"]
    assert core.status == "ok"
    assert core.origin.distribution == "rnnkit-core"
    assert core.origin.version
    assert host.cells.get("lstm").origin.plugin == "core"
    assert "reference/*" in host.kernels.names()


def test_every_hook_is_callable_and_records_what_it_registered() -> None:
    @hookimpl
    def rnnkit_register_kernels(register: RegisterKernel) -> None:
        register(Kernel("mine", "lstm", reference_forward, description="test"))

    plugin = module_plugin(
        "p",
        rnnkit_register_cells=lambda register: register("c1", MyLSTM),
        rnnkit_register_models=lambda register: register("m1", lambda: torch.nn.Identity()),
        rnnkit_register_tasks=lambda register: register("t1", object(), description="a task"),
        rnnkit_register_commands=lambda register: register(
            "hello", help="say hello", configure=lambda p: None, run=lambda a: 0
        ),
    )
    plugin.rnnkit_register_kernels = rnnkit_register_kernels
    host = PluginHost(load_entry_points=False, plugins=[("p", plugin)])
    info = host.plugins["p"]
    assert info.status == "ok"
    assert info.registered == {
        "cells": ["c1"],
        "kernels": ["mine/lstm"],
        "models": ["m1"],
        "tasks": ["t1"],
        "commands": ["hello"],
    }
    assert len(HOOK_NAMES) == 5
    assert host.tasks.get("t1").description == "a task"
    assert host.cells.get("c1").description == "a test cell"  # from the docstring


def test_a_duplicate_name_skips_the_later_plugin_with_a_warning_naming_both() -> None:
    def rnnkit_register_cells(register: RegisterCell) -> None:
        register("own", MyLSTM)
        register("twin", MyLSTM)

    second = module_plugin("second", rnnkit_register_cells=rnnkit_register_cells)
    with pytest.warns(
        PluginWarning,
        match=r"plugin second was skipped: conflict: cell 'twin' is already registered by "
        r"plugin first",
    ):
        host = PluginHost(
            load_entry_points=False,
            plugins=[
                ("first", _cells_plugin("first", "twin")),
                ("second", second),
                ("third", _cells_plugin("third", "other")),
            ],
        )
    assert host.cells.get("twin").origin.plugin == "first"
    assert host.plugins["second"].status == "broken"
    assert "own" not in host.cells  # skipped whole: none of its registrations are kept
    assert host.plugins["second"].registered == {}
    assert host.plugins["third"].status == "ok" and "other" in host.cells


def test_a_second_lstm_leaves_the_library_and_every_command_working(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rnnkit.core import create_cell
    from rnnkit.core.cli import main

    with pytest.warns(PluginWarning, match=r"'lstm' is already registered by plugin core \("):
        host = PluginHost(plugins=[("copycat", _cells_plugin("copycat", "lstm"))])
    with use_host(host):
        assert type(create_cell("lstm", input_size=2, hidden_size=3)) is LSTM
        assert main(["plugins"]) == 0
        out = capsys.readouterr().out
        assert "copycat" in out and "broken: conflict: cell 'lstm'" in out
        assert main(["list", "cells"]) == 0
        assert "lstm" in capsys.readouterr().out


def test_registry_add_still_raises_on_a_duplicate() -> None:
    """Programmatic registries keep refusing duplicates loudly; only the host skips."""
    from rnnkit.core.registry import Entry, Origin, Registry

    reg: Registry[int] = Registry("thing")
    reg.add(Entry("a", 1, Origin("p1")))
    with pytest.raises(PluginConflictError, match=r"thing 'a'.*plugin p1 and by plugin p2"):
        reg.add(Entry("a", 2, Origin("p2")))


def test_a_command_named_like_a_builtin_is_a_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    from rnnkit.core import cli
    from rnnkit.core.plugins import BUILTIN_COMMANDS

    assert set(cli.BUILTIN) == BUILTIN_COMMANDS
    plugin = module_plugin(
        "shadow",
        rnnkit_register_commands=lambda register: register(
            "list", help="my list", configure=lambda p: None, run=lambda a: 7
        ),
    )
    with pytest.warns(PluginWarning, match="command 'list' is a built-in rnnkit command"):
        host = PluginHost(plugins=[("shadow", plugin)])
    assert host.plugins["shadow"].status == "broken"
    assert "list" not in host.commands
    with use_host(host):
        assert cli.main(["plugins"]) == 0
        row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("shadow"))
        assert "commands: list" not in row and "broken" in row
        assert cli.main(["list", "cells"]) == 0  # the built-in still runs


@pytest.mark.parametrize(
    "failure",
    [SystemExit(3), KeyboardInterrupt(), RuntimeError("import-time bug")],
    ids=["sys.exit", "KeyboardInterrupt", "RuntimeError"],
)
@pytest.mark.parametrize("where", ["import", "hook"])
def test_a_plugin_exiting_or_interrupting_is_skipped(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException, where: str
) -> None:
    import importlib.metadata as md
    import sys
    import types

    module = types.ModuleType("rnnkit_test_exiting_plugin")
    if where == "hook":

        def rnnkit_register_cells(register: RegisterCell) -> None:
            raise failure

        module.rnnkit_register_cells = hookimpl(rnnkit_register_cells)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
    else:
        finder = _RaisingFinder(module.__name__, failure)
        monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    real = md.entry_points

    def fake(**kw: Any) -> Any:
        eps = list(real(**kw))
        if kw.get("group") == "rnnkit":
            eps.append(md.EntryPoint("exiting", module.__name__, "rnnkit"))
        return eps

    monkeypatch.setattr(md, "entry_points", fake)
    with pytest.warns(
        PluginWarning, match=r"plugin exiting was skipped: .*" + type(failure).__name__
    ):
        host = PluginHost()
    assert host.plugins["exiting"].status == "broken"
    assert host.plugins["core"].status == "ok" and "lstm" in host.cells


class _RaisingFinder:
    """A meta-path finder whose module raises ``failure`` when imported."""

    def __init__(self, name: str, failure: BaseException) -> None:
        self.name, self.failure = name, failure

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        import importlib.util

        return importlib.util.spec_from_loader(name, self) if name == self.name else None

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        raise self.failure


def test_a_kernel_whose_available_raises_is_skipped_naming_its_plugin() -> None:
    def broken_available() -> str | None:
        raise RuntimeError("driver probe crashed")

    def broken_supports(call: Any) -> str | None:
        raise KeyError("no such field")

    def rnnkit_register_kernels(register: RegisterKernel) -> None:
        register(
            Kernel("flaky", "lstm", reference_forward, priority=99, available=broken_available)
        )
        register(Kernel("picky", "gru", reference_forward, priority=99, supports=broken_supports))

    plugin = module_plugin("flakyplug", rnnkit_register_kernels=rnnkit_register_kernels)
    host = PluginHost(plugins=[("flakyplug", plugin)])
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    with use_host(host):
        from rnnkit.core import GRU, BackendUnavailableError

        for cell, name, method in (
            (LSTM(4, 5), "flaky", "available"),
            (GRU(4, 5), "picky", "supports"),
        ):
            with pytest.warns(PluginWarning, match=rf"{method}\(\) of kernel {name}/.*flakyplug"):
                y, _ = cell(x)  # auto passes over the broken kernel
            assert torch.allclose(y, cell(x, backend="reference")[0])
            with pytest.raises(
                BackendUnavailableError,
                match=rf"{method}\(\) of kernel {name}/\w+ \(plugin flakyplug\)",
            ):
                cell(x, backend=name)


def test_plugin_raising_in_a_hook_is_reported_and_skipped_whole() -> None:
    def rnnkit_register_cells(register: RegisterCell) -> None:
        register("half", MyLSTM)
        raise RuntimeError("boom")

    bad = module_plugin("bad", rnnkit_register_cells=rnnkit_register_cells)
    good = _cells_plugin("good", "fine")
    with pytest.warns(PluginWarning, match=r"plugin bad was skipped: rnnkit_register_cells raised"):
        host = PluginHost(load_entry_points=False, plugins=[("bad", bad), ("good", good)])
    assert host.plugins["bad"].status == "broken"
    assert "boom" in host.plugins["bad"].error
    assert "half" not in host.cells  # nothing of a failed plugin is kept
    assert "fine" in host.cells


def test_plugin_with_unknown_hook_is_skipped() -> None:
    bad = module_plugin("typo", rnnkit_register_cell=lambda register: None)
    with pytest.warns(
        PluginWarning,
        match="unknown hook.*rnnkit_register_cell \\(did you mean 'rnnkit_register_cells'",
    ):
        host = PluginHost(load_entry_points=False, plugins=[("typo", bad)])
    assert host.plugins["typo"].status == "broken"


def test_a_marked_hook_with_a_misspelled_prefix_is_an_unknown_hook() -> None:
    bad = module_plugin("prefix", rnkit_register_cells=lambda register: None)
    with pytest.warns(PluginWarning, match="unknown hook.*did you mean 'rnnkit_register_cells'"):
        host = PluginHost(load_entry_points=False, plugins=[("prefix", bad)])
    assert host.plugins["prefix"].status == "broken"


def test_unmarked_or_misspelled_hook_functions_warn_with_a_did_you_mean(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import types

    from rnnkit.core.cli import main

    called = []
    module = types.ModuleType("quiet")

    def rnnkit_register_cells(register: RegisterCell) -> None:  # no @hookimpl
        called.append("cells")

    def rnnkti_register_models(register: Any) -> None:  # misspelled prefix, no marker
        called.append("models")

    def helper() -> None:  # an ordinary function: no warning
        pass

    def register_cells() -> None:  # a helper without the prefix: no warning either
        pass

    module.rnnkit_register_cells = rnnkit_register_cells  # type: ignore[attr-defined]
    module.rnnkti_register_models = rnnkti_register_models  # type: ignore[attr-defined]
    module.helper = helper  # type: ignore[attr-defined]
    module.register_cells = register_cells  # type: ignore[attr-defined]
    with pytest.warns(PluginWarning) as record:
        host = PluginHost(plugins=[("quiet", module)])
    messages = [str(w.message) for w in record if "quiet" in str(w.message)]
    assert any("rnnkit_register_cells is not marked with @hookimpl" in m for m in messages)
    assert any(
        "rnnkti_register_models looks like a misspelled hook name (did you mean "
        "'rnnkit_register_models'?)" in m
        for m in messages
    )
    assert not any("helper" in m or " register_cells" in m for m in messages)
    assert called == []
    info = host.plugins["quiet"]
    assert info.status == "warning" and len(info.warnings) == 2
    with use_host(host):
        assert main(["plugins"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("quiet"))
    assert "warning: rnnkit_register_cells is not marked" in row


def test_builtin_plugins_load_without_warnings() -> None:
    host = PluginHost()
    assert {n: i.warnings for n, i in host.plugins.items() if i.warnings} == {}


def test_plugin_with_wrong_hook_arguments_is_skipped() -> None:
    bad = module_plugin("args", rnnkit_register_cells=lambda registrar: None)
    with pytest.warns(PluginWarning, match="invalid hook implementation"):
        host = PluginHost(load_entry_points=False, plugins=[("args", bad)])
    assert host.plugins["args"].status == "broken"


def test_registering_a_non_cell_is_rejected() -> None:
    bad = module_plugin("notacell", rnnkit_register_cells=lambda register: register("x", int))
    with pytest.warns(PluginWarning, match="must be a Cell subclass"):
        PluginHost(load_entry_points=False, plugins=[("notacell", bad)])


def test_disable_plugins_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNKIT_DISABLE_PLUGINS", "core, somethingelse")
    host = PluginHost()
    assert host.plugins["core"].status == "disabled"
    assert "lstm" not in host.cells


def test_broken_entry_point_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as md

    real = md.entry_points

    def fake(**kw: Any) -> Any:
        eps = list(real(**kw))
        if kw.get("group") == "rnnkit":
            eps.append(md.EntryPoint("ghost", "rnnkit_no_such_module_xyz", "rnnkit"))
        return eps

    monkeypatch.setattr(md, "entry_points", fake)
    with pytest.warns(PluginWarning, match=r"ghost was skipped: import failed"):
        host = PluginHost()
    assert host.plugins["ghost"].status == "broken"
    assert "lstm" in host.cells


def test_unknown_names_suggest_the_closest() -> None:
    host = PluginHost()
    with pytest.raises(UnknownNameError, match=r"unknown cell 'lstn'; did you mean 'lstm'"):
        host.cells.get("lstn")
    with use_host(host):
        from rnnkit.core import create_cell

        with pytest.raises(ValueError, match="did you mean 'gru'"):
            create_cell("gur", input_size=2, hidden_size=2)


_COMPILE_FIRST = """
import sys, torch
from rnnkit.core import LSTM
torch.manual_seed(0)
cell = LSTM(5, 8)
x = torch.randn(2, 4, 5)
y, _ = torch.compile(cell, backend="aot_eager")(x, backend="reference")
y_eager, _ = cell(x, backend="reference")
assert torch.allclose(y, y_eager, rtol=1e-5, atol=1e-6), (y - y_eager).abs().max()
print("ok")
"""


def test_torch_compile_as_the_first_call_of_a_process() -> None:
    """The plugin host is created outside the graph when the first rnnkit call of a process
    runs under torch.compile (dynamo cannot trace pluggy's hook introspection)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_FIRST], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_a_wrong_keyword_names_it_and_lists_the_cell_keywords() -> None:
    """``--set KEY=VALUE`` with a misspelt key: the error names the key, the closest keyword
    and the cell's keywords, from ``create_cell`` and from a ``Recurrent`` stack alike."""
    from rnnkit.core import Recurrent, create_cell
    from rnnkit.core.errors import UnknownKeywordError

    with pytest.raises(UnknownKeywordError, match=r"cell 'lstm' takes no keyword 'hiden'") as e:
        create_cell("lstm", input_size=2, hidden_size=2, hiden=3)
    assert e.value.keyword == "hiden"
    assert "did you mean 'hidden_size'" in str(e.value) and "heads" in str(e.value)
    with pytest.raises(UnknownKeywordError, match=r"cell 'gru' takes no keyword 'head'"):
        Recurrent("gru", 2, 4, num_layers=2, head=2)
    # an error raised inside a constructor keeps its own type and message
    with pytest.raises(ValueError, match="hidden_size") as inner:
        create_cell("lstm", input_size=2, hidden_size="x")
    assert not isinstance(inner.value, UnknownKeywordError)


def test_an_unknown_name_without_a_close_match_ends_its_sentence() -> None:
    with pytest.raises(UnknownNameError, match=r"^unknown cell 'zzzz'\. Registered: .*lstm"):
        PluginHost().cells.get("zzzz")


class _NoStateType(LSTM):
    state_type = None  # type: ignore[assignment]


class _NoHiddenSize(LSTM):
    """takes input_size as a keyword, but names its width otherwise"""

    def __init__(self, input_size: int, width: int = 4) -> None:
        super().__init__(input_size, width)


class _TupleLessStateType(LSTM):
    state_type = dict  # type: ignore[assignment]


class _Abstract(Cell[Any]):
    """a cell that forgot recur and state_spec"""

    state_type = LSTM.state_type

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Positional(LSTM):
    """names its sizes otherwise"""

    def __init__(self, n_in: int, n_hidden: int) -> None:
        super().__init__(n_in, n_hidden)


@pytest.mark.parametrize(
    ("cls", "configs", "match"),
    [
        (MyLSTM, {"heads": 2}, r"test_configs of cell 'c' must be a list of dicts .* got dict"),
        (MyLSTM, None, r"test_configs of cell 'c' must be a list of dicts .* got NoneType"),
        # a string is a sequence, but not of dicts
        (MyLSTM, "heads", r"test_configs of cell 'c' must be a list of dicts .* got str 'heads'"),
        (MyLSTM, [("heads", 2)], r"test_configs\[0\] of cell 'c' must be a dict"),
        (MyLSTM, [{}, {"haeds": 2}], r"test_configs\[1\]: .* no keyword 'haeds'; did you mean"),
        (_NoStateType, [{}], r"cell 'c' \(_NoStateType\) must set the class attribute state_type"),
        (_TupleLessStateType, [{}], r"\(_TupleLessStateType\) must set .* got <class 'dict'>"),
        (_Abstract, [{}], r"cell 'c' \(_Abstract\) does not implement recur\(\), state_spec\(\)"),
        (_Positional, [{}], r"takes no keyword 'input_size'.*n_in, n_hidden; every cell's const"),
        (_NoHiddenSize, [{}], r"takes no keyword 'hidden_size'.*; every cell's constructor"),
    ],
)
def test_a_cell_registration_is_checked_with_an_error_that_names_the_mistake(
    cls: type[Any], configs: Any, match: str
) -> None:
    """Wrong test_configs and an unusable cell class are refused where they are registered,
    with the plugin author's own line, not later inside the conformance kit or a forward."""

    def rnnkit_register_cells(register: RegisterCell) -> None:
        register("c", cls, test_configs=configs)

    plugin = module_plugin("p", rnnkit_register_cells=rnnkit_register_cells)
    with pytest.warns(PluginWarning, match=match) as record:
        host = PluginHost(load_entry_points=False, plugins=[("p", plugin)])
    assert host.plugins["p"].status == "broken"
    assert "c" not in host.cells
    line = rnnkit_register_cells.__code__.co_firstlineno + 1
    assert f"(raised at {__file__}:{line})" in str(record[0].message)


def _host_with_module_plugins(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    files: dict[str, str],
    entry_points: dict[str, str],
) -> tuple[PluginHost, int]:
    """A plugin host loading, besides the installed plugins, the entry points ``name -> value``
    of the group ``rnnkit``, with the modules ``files`` (module name -> source) written to
    ``tmp_path`` and importable afresh; they must fail. Returns the host and how many
    ``PluginWarning``s loading it gave."""
    import importlib.metadata as md
    import sys

    for module, source in files.items():
        (tmp_path / f"{module}.py").write_text(source)
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    real = md.entry_points

    def fake(**kw: Any) -> Any:
        eps: list[Any] = list(real(**kw))
        if kw.get("group") == "rnnkit":
            eps += [md.EntryPoint(name, value, "rnnkit") for name, value in entry_points.items()]
        return eps

    monkeypatch.setattr(md, "entry_points", fake)
    with pytest.warns(PluginWarning) as record:
        host = PluginHost()
    return host, len(record)


def test_a_plugin_that_fails_on_import_says_where_and_which_entry_point(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    host, warned = _host_with_module_plugins(
        monkeypatch,
        tmp_path,
        {"rnnkit_raises_xyz": "import math\n\nSCALE = math.sqrt(-1)\n"},
        {"raises": "rnnkit_raises_xyz", "typo": "rnnkit_no_such_xyz.plugn"},
    )
    errors = {n: host.plugins[n].error or "" for n in ("raises", "typo")}
    where = tmp_path / "rnnkit_raises_xyz.py"
    assert f"ValueError('math domain error') (raised at {where}:3)" in errors["raises"]
    assert "entry point raises = 'rnnkit_raises_xyz'" in errors["raises"]
    # a module that is not there has no line of its own: the entry point says what was asked
    assert "No module named 'rnnkit_no_such_xyz'" in errors["typo"]
    assert "raised at" not in errors["typo"]
    assert "entry point typo = 'rnnkit_no_such_xyz.plugn' in the group 'rnnkit'" in errors["typo"]
    assert warned == 2


def test_a_hook_failure_names_the_plugin_s_line_not_rnnkit_s_or_torch_s() -> None:
    """An error raised in torch, or by an rnnkit helper the hook called, is reported at the
    hook's own line: the innermost frame in the plugin's source."""
    from rnnkit.core.dispatch import cell_method_kernel

    def in_torch(register: RegisterCell) -> None:
        torch.nn.Linear(2, 2)(torch.zeros(3))  # raised in torch/nn/modules/linear.py

    def in_rnnkit(register: RegisterKernel) -> None:
        wrong: Any = in_torch  # not a method of LSTM: cell_method_kernel refuses it
        register(cell_method_kernel(LSTM, wrong, backend="x", description="x", priority=0))

    for hook, name in ((in_torch, "rnnkit_register_cells"), (in_rnnkit, "rnnkit_register_kernels")):
        plugin = module_plugin("p", **{name: hook})
        with pytest.warns(PluginWarning):
            host = PluginHost(load_entry_points=False, plugins=[("p", plugin)])
        line = hook.__code__.co_firstlineno + (1 if hook is in_torch else 2)
        assert f"(raised at {__file__}:{line})" in (host.plugins["p"].error or ""), hook


def test_an_unknown_name_mentions_the_plugins_that_failed_to_load() -> None:
    """``create_cell("janet")`` where the plugin meant to register janet failed: the error
    says that plugin was not searched, not only that the name is unknown."""

    def boom(register: RegisterCell) -> None:
        raise RuntimeError("boom")

    broken = module_plugin("janet", rnnkit_register_cells=boom)
    with pytest.warns(PluginWarning):
        host = PluginHost(load_entry_points=False, plugins=[("janet", broken)])
    with pytest.raises(
        UnknownNameError,
        match=r"^unknown cell 'janet'.*\(not loaded, so not searched: plugin janet, skipped for "
        r"an error that `rnnkit plugins` shows\)$",
    ):
        host.cells.get("janet")
    # a broken plugin may have been meant to register any kind of name
    for registry in (host.kernels, host.models, host.tasks, host.commands):
        with pytest.raises(UnknownNameError, match=r"\(not loaded, so not searched: plugin janet"):
            registry.get("janet")
    healthy = PluginHost(load_entry_points=False, plugins=[("p", _cells_plugin("p", "c"))])
    with pytest.raises(UnknownNameError) as caught:
        healthy.cells.get("janet")
    assert "not loaded" not in str(caught.value)


def test_a_failure_inside_rnnkit_core_s_own_plugin_keeps_its_line() -> None:
    """rnnkit-core's own hooks live in rnnkit-core: their failures are located there, not at
    the caller outside it (and never at the plugin loader)."""
    from rnnkit.core import plugins
    from rnnkit.core.errors import UnknownKeywordError, check_keywords

    with pytest.raises(UnknownKeywordError) as caught:
        check_keywords("cell", "c", lambda a: None, {"b": 1})
    where = plugins._raised_at(caught.value, plugins._CORE_DIR)
    assert f"{plugins._CORE_DIR}errors.py:" in where


def test_an_import_failure_inside_rnnkit_names_the_plugin_s_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A plugin whose import calls rnnkit-core, which refuses: the location is the plugin's
    line that made the call, not rnnkit's line that raised."""
    source = "from rnnkit.core.registry import Registry\n\nCELL = Registry('cell').get('lstn')\n"
    host, _ = _host_with_module_plugins(
        monkeypatch, tmp_path, {"rnnkit_refused_xyz": source}, {"refused": "rnnkit_refused_xyz"}
    )
    error = host.plugins["refused"].error or ""
    assert "unknown cell 'lstn'" in error
    assert f"(raised at {tmp_path / 'rnnkit_refused_xyz.py'}:3)" in error


def test_an_import_failure_names_the_innermost_line_of_the_plugin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A helper of the plugin's that raises: its line, where the error is, not the line of
    the module that called it."""
    source = "def scale():\n    raise ValueError('no scale')\n\n\nSCALE = scale()\n"
    host, _ = _host_with_module_plugins(
        monkeypatch, tmp_path, {"rnnkit_nested_xyz": source}, {"nested": "rnnkit_nested_xyz"}
    )
    where = tmp_path / "rnnkit_nested_xyz.py"
    assert f"ValueError('no scale') (raised at {where}:2)" in (host.plugins["nested"].error or "")


def test_a_hook_failure_in_a_helper_module_of_the_plugin_names_the_helper_s_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The plugin's source is its hook's folder, not only the hook's file: an error raised in
    a helper module beside it is reported at the helper's line."""
    import importlib
    import sys

    (tmp_path / "rnnkit_helper_xyz.py").write_text("def build():\n    raise ValueError('bad')\n")
    hooks = "from rnnkit_helper_xyz import build\n\n\ndef register_cells(register):\n    build()\n"
    (tmp_path / "rnnkit_hooks_xyz.py").write_text(hooks)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("rnnkit_helper_xyz", "rnnkit_hooks_xyz"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module("rnnkit_hooks_xyz")
    plugin = module_plugin("p", rnnkit_register_cells=module.register_cells)
    with pytest.warns(PluginWarning):
        host = PluginHost(load_entry_points=False, plugins=[("p", plugin)])
    where = tmp_path / "rnnkit_helper_xyz.py"
    assert f"ValueError('bad') (raised at {where}:2)" in (host.plugins["p"].error or "")


def test_an_empty_test_configs_runs_the_defaults() -> None:
    """``test_configs=[]`` is the cell's defaults (``[{}]``), not no configuration at all
    (which would leave the conformance kit nothing to check)."""

    def rnnkit_register_cells(register: RegisterCell) -> None:
        register("c", MyLSTM, test_configs=[])

    plugin = module_plugin("p", rnnkit_register_cells=rnnkit_register_cells)
    host = PluginHost(load_entry_points=False, plugins=[("p", plugin)])
    assert host.cells.get("c").obj.test_configs == ({},)


def test_test_configs_are_copied_into_dicts() -> None:
    """Any mapping is taken (a read-only one included) and stored as a dict of its own, so
    the plugin changing its object afterwards does not change what the kit runs."""
    import types

    mine = {"heads": 2}

    def rnnkit_register_cells(register: RegisterCell) -> None:
        register("c", MyLSTM, test_configs=[types.MappingProxyType({"heads": 2}), mine])

    plugin = module_plugin("p", rnnkit_register_cells=rnnkit_register_cells)
    host = PluginHost(load_entry_points=False, plugins=[("p", plugin)])
    mine["heads"] = 3
    configs = host.cells.get("c").obj.test_configs
    assert configs == ({"heads": 2}, {"heads": 2})
    assert all(type(c) is dict for c in configs)
