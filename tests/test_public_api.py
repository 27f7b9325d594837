"""The public names are exactly the exported ones, and each resolves."""

from __future__ import annotations

import importlib
import inspect

import pytest

import flowstream as fs

MODULES = [
    "flowstream",
    "flowstream.sinks",
    "flowstream.sources",
    "flowstream.checkpoints",
    "flowstream.leases",
    "flowstream.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_every_public_name(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and getattr(v, "__module__", name).startswith("flowstream")
        and not (type(v).__name__ == "module" and n not in module.__all__)
    }
    public.discard("annotations")
    assert set(module.__all__) == public - {"__version__"}
    for exported in module.__all__:
        assert getattr(module, exported) is not None


def test_design_names_are_exported() -> None:
    for name in [
        "Pipeline",
        "when",
        "Record",
        "EventName",
        "StreamViewType",
        "decode_records",
        "RunReport",
        "PipelineError",
        "FlowstreamError",
        "ShardStoppedError",
    ]:
        assert name in fs.__all__
    assert fs.EventName.REMOVE == "REMOVE"


def test_dead_letter_names_are_exported() -> None:
    for name in ["DeadLetter", "decode_dead_letter", "replay_dead_letters"]:
        assert name in fs.__all__
    assert "dead_letters" in fs.sources.__all__
    assert inspect.iscoroutinefunction(fs.replay_dead_letters)
