"""Index names, ids and query text are data: hostile values never reach other indexes."""

from __future__ import annotations

import pytest

from milco_os.connection import ConnectionSettings
from milco_os.engines import EngineError, open_engine
from milco_os.engines.base import check_index_name

pytestmark = pytest.mark.cluster

HOSTILE_NAMES = ["*", "_all", "victim-*", "../victim", "victim/_doc", "a b", "a,b", "..",
                 "Victim", "-x", "x#y", "x?y", ""]
META = {"model": "m", "views": ["pivot"], "pruning": "none"}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_index_names_are_refused_before_any_request(cluster_url, index_name,
                                                            name) -> None:
    engine = open_engine(ConnectionSettings(url=cluster_url))
    engine.create_index(index_name, meta=META)
    engine.bulk_index(index_name, [("d", {"doc_id": "d", "passage": 0, "pivot": {"a": 1.0}})])
    for operation in (lambda: engine.delete_index(name),
                      lambda: engine.create_index(name, meta=META),
                      lambda: engine.bulk_index(name, [("d", {"doc_id": "d", "passage": 0})]),
                      lambda: engine.count(name)):
        with pytest.raises(EngineError, match="invalid index name"):
            operation()
    engine.refresh(index_name)
    assert engine.count(index_name) == 1  # untouched


def test_unicode_names_and_hostile_ids_are_plain_data(cluster_url) -> None:
    engine = open_engine(ConnectionSettings(url=cluster_url))
    name = check_index_name("ünïcode-索引")
    engine.delete_index(name)
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
