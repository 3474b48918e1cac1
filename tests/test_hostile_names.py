"""Index names, ids and query text are data: hostile values never reach other indexes."""

from __future__ import annotations

import warnings

import pytest

from milco_os.engines import EngineError, open_engine
from milco_os.engines.base import check_index_name

pytestmark = pytest.mark.cluster

HOSTILE_NAMES = ["*", "_all", "victim-*", "../victim", "victim/_doc", "a b", "a,b", "..",
                 "Victim", "-x", "x#y", "x?y", ""]
META = {"model": "m", "views": ["pivot"], "pruning": "none"}


def test_hostile_index_names_are_refused_before_any_request(server, server_index) -> None:
    engine = server.open()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no language analyzers in some distributions
        engine.create_index(server_index, meta=META)
    engine.bulk_index(server_index, [("d", {"doc_id": "d", "passage": 0, "pivot": {"a": 1.0}})])
    operations = (lambda name: engine.delete_index(name),
                  lambda name: engine.create_index(name, meta=META),
                  lambda name: engine.bulk_index(name, [("d", {"doc_id": "d", "passage": 0})]),
                  lambda name: engine.count(name))
    for name in HOSTILE_NAMES:
        for operation in operations:
            with pytest.raises(EngineError, match="invalid index name"):
                operation(name)
    engine.refresh(server_index)
    assert engine.count(server_index) == 1  # untouched


def test_unicode_names_and_hostile_ids_are_plain_data(server) -> None:
    engine = server.open()
    name = check_index_name("ünïcode-索引")
    engine.delete_index(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine.create_index(name, meta=META)
    try:
        ids = ["../../_all", "*", "a b", "?q=1&x", "ü#frag", "%2E%2E"]
        docs = [(i, {"doc_id": i, "passage": 0, "pivot": {"t": 1.0}}) for i in ids]
        assert engine.bulk_index(name, docs) == []
        engine.refresh(name)
        assert engine.existing_ids(name, ids) == set(ids)
        assert engine.count(name) == len(ids)
    finally:
        engine.delete_index(name)


def test_local_engine_refuses_paths_outside_its_root(tmp_path) -> None:
    engine = open_engine(None, "local", local_path=str(tmp_path / "root"))
    for name in ("../escape", "/etc", "*"):
        with pytest.raises(EngineError, match="invalid index name"):
            engine.create_index(name, meta=META)
    assert not (tmp_path / "escape").exists()
