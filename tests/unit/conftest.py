# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Fixtures: a running fake Patroni cluster and an in-process module runner."""

from __future__ import annotations

import typing as t

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from fake_patroni import FakeCluster


class ModuleExit(Exception):
    """Raised instead of exit_json/fail_json; ``result`` is what the module returned."""

    def __init__(self, result: t.Dict[str, t.Any], failed: bool) -> None:
        super().__init__(result.get("msg", ""))
        self.result = result
        self.failed = failed


def _exit_json(self: basic.AnsibleModule, **kwargs: t.Any) -> t.NoReturn:
    kwargs.setdefault("changed", False)
    raise ModuleExit(kwargs, failed=False)


def _fail_json(self: basic.AnsibleModule, msg: str, **kwargs: t.Any) -> t.NoReturn:
    kwargs["msg"] = msg
    kwargs.setdefault("changed", False)
    raise ModuleExit(kwargs, failed=True)


@pytest.fixture
def run_module(monkeypatch: pytest.MonkeyPatch) -> t.Callable[..., t.Tuple[t.Dict[str, t.Any], bool]]:
    """run_module(main, args, check_mode=False, diff=False) -> (result, failed)."""
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)

    def run(
        main: t.Callable[[], None], args: t.Dict[str, t.Any], check_mode: bool = False, diff: bool = False
    ) -> t.Tuple[t.Dict[str, t.Any], bool]:
        args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        with patch_module_args(args), pytest.raises(ModuleExit) as caught:
            main()
        return caught.value.result, caught.value.failed

    return run


@pytest.fixture
def fake_cluster() -> t.Iterator[FakeCluster]:
    cluster = FakeCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def api_args(fake_cluster: FakeCluster) -> t.Dict[str, t.Any]:
    """Module arguments reaching the fake cluster with the right credentials."""
    return {
        "api_url": fake_cluster.urls,
        "api_username": "patroni",
        "api_password": "s3cret",
        "timeout": 5,
        "retries": 1,
        "use_proxy": False,
    }
