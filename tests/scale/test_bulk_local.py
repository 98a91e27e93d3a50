"""Executors, bulk embedding and resumable parts, without Ray (the default path)."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.scale.helpers import fingerprint, small_recipe

from paramsim.cli import main
from paramsim.embed_bulk import (
    Parts,
    collect_items,
    embed_chunk,
    embed_items,
    items_digest,
    load_items,
)
from paramsim.errors import ParamsimError
from paramsim.executors import LocalExecutor, make_executor
from paramsim.index import EmbeddingIndex
from paramsim.lps import LPS
from paramsim.zoo import Zoo, build_zoo


def test_nothing_imports_ray_unless_asked():
    """Ray is imported only inside functions (when --executor ray runs), never by a module."""
    import ast

    import paramsim

    root = Path(paramsim.__file__).parent
    at_import = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        body = list(tree.body)
        while body:  # module level, including if/try blocks, but not function bodies
            node = body.pop()
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names.append(getattr(node, "module", None) or "")
                if any(n == "ray" or n.startswith("ray.") for n in names):
                    at_import.append(f"{path.name}:{node.lineno}")
            elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                body += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
            elif isinstance(node, ast.ClassDef):  # class bodies run at import too
                body += [c for c in node.body if not isinstance(c, ast.FunctionDef)]
    assert at_import == []
    assert "ray" in (root / "executors.py").read_text()  # the check looks where ray is used


def test_ray_missing_and_bad_addresses_are_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if absent
    with pytest.raises(ParamsimError, match=r"needs Ray, which is not installed.*\[ray\]"):
        make_executor("ray")
    out = tmp_path / "zoo"
    args = ["zoo", "build", "digits-pairs", "--out", str(out), "--tasks", "0-1", "--executor"]
    assert main([*args, "ray"]) == 2
    assert main([*args, "local", "--address", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "needs Ray" in err[0] and "needs --executor ray" in err[1]
    assert not out.exists()  # nothing written


def test_unreachable_addresses_fail_fast_with_one_line():
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ParamsimError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"):
        make_executor("ray", f"127.0.0.1:{port}")
    with pytest.raises(ParamsimError, match="HOST:PORT"):
        make_executor("ray", "nonsense")


def test_a_build_stopped_by_a_failed_job_resumes_to_the_same_zoo(local_zoo, tmp_path):
    class FailsAfterTwo(LocalExecutor):
        def map(self, fn, shared, jobs):
            for n, result in enumerate(super().map(fn, shared, jobs)):
                if n == 2:
                    raise ParamsimError("worker lost")
                yield result

    out = tmp_path / "zoo"
    with pytest.raises(ParamsimError, match="worker lost"):
        build_zoo(small_recipe(), out, progress=False, executor=FailsAfterTwo())
    shards, models = fingerprint(out)
    assert len(shards) == 2 and len(models) == 2  # what finished is committed, nothing else
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]
    build_zoo(small_recipe(), out, progress=False)
    assert fingerprint(out) == fingerprint(local_zoo)


def test_directory_tree_of_zoos_and_files(tiny_zoo, lps_dir, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(tiny_zoo, tree / "b" / "zoo")
    files = tree / "a"
    files.mkdir(parents=True)
    for mid, name in ((8, "m8.safetensors"), (3, "m3.pt")):
        assert main(["zoo", "export", str(tiny_zoo), str(mid), "--out", str(files / name)]) == 0
    (files / "notes.txt").write_text("not a model")
    (files / ".m9.safetensors.tmp").write_text("a killed write")
    items = collect_items([str(tree)])
    assert [it.ref.rsplit("/", 1)[-1] for it in items[:2]] == ["m3.pt", "m8.safetensors"]
    assert [it.local_id for it in items[2:]] == list(range(9)) and len(items) == 11
    zoo = Zoo(tiny_zoo)
    assert items[1].task == zoo.records[8].task.name and items[1].acc == pytest.approx(
        zoo.records[8].test_acc
    )
    lps = LPS.load(lps_dir)
    emb, archs = embed_items(items, lps, chunk_size=4)
    direct = lps.embed([zoo.network(3), zoo.network(8), *zoo.networks()])
    np.testing.assert_allclose(emb, direct, atol=1e-6)
    assert archs == [zoo.records[3].arch.label, zoo.records[8].arch.label] + [
        r.arch.label for r in zoo.records
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParamsimError, match="no zoo and no checkpoint"):
        collect_items([str(tmp_path / "empty")])


def test_a_linked_folder_is_not_followed_without_a_word(tiny_zoo, tmp_path, capsys):
    tree = tmp_path / "tree"
    (tree / "real").mkdir(parents=True)
    assert main(["zoo", "export", str(tiny_zoo), "1", "--out", str(tree / "real" / "m.pt")]) == 0
    capsys.readouterr()
    (tree / "link").symlink_to(tree / "real")  # could as well lead back up the tree
    (tree / "zoo").symlink_to(tiny_zoo)  # a linked zoo is read, as a zoo named directly
    items = collect_items([str(tree)])
    assert len(items) == 1 + len(Zoo(tiny_zoo))
    err = capsys.readouterr().err
    assert "1 symbolic link(s)" in err and "link" in err and "zoo)" not in err


def test_parts_resume_and_each_model_embedded_once(tiny_zoo, lps_dir, tmp_path):
    items = collect_items([str(tiny_zoo)])
    lps = LPS.load(lps_dir)
    reference, _ = embed_items(items, lps, chunk_size=9)
    calls: list[list[str]] = []

    def failing(lps_, chunk):
        if chunk[0].local_id == 6:
            raise OSError("disk went away")
        calls.append([it.ref for it in chunk])
        return embed_chunk(lps_, chunk)

    parts = Parts(tmp_path / "e.npy", "digest-1", n_chunks=3)
    with pytest.raises(OSError):
        embed_items(items, lps, chunk_size=3, parts=parts, chunk_fn=failing)
    assert sorted(p.name for p in parts.dir.iterdir()) == [
        "manifest.json",
        "part-000000.npz",
        "part-000001.npz",
    ]
    calls.clear()

    def counting(lps_, chunk):
        calls.append([it.ref for it in chunk])
        return embed_chunk(lps_, chunk)

    emb, _ = embed_items(items, lps, chunk_size=3, parts=parts, chunk_fn=counting)
    assert calls == [[it.ref for it in items[6:9]]]  # only the missing chunk ran
    np.testing.assert_allclose(emb, reference, atol=1e-6)
    # another job (other digest) never reuses these parts
    calls.clear()
    other = Parts(tmp_path / "e.npy", "digest-2", n_chunks=3)
    embed_items(items, lps, chunk_size=3, parts=other, chunk_fn=counting)
    assert len(calls) == 3
    other.clear()
    assert not other.dir.exists()
    other.dir.mkdir()
    (other.dir / "mine.txt").write_text("user data")
    with pytest.raises(ParamsimError, match="not embedding parts"):
        embed_items(items, lps, chunk_size=3, parts=other)
    assert (other.dir / "mine.txt").exists()


def test_index_over_several_sources_names_each_model(tiny_zoo, lps_dir, tmp_path, capsys):
    f = tmp_path / "files" / "m2.safetensors"
    f.parent.mkdir()
    assert main(["zoo", "export", str(tiny_zoo), "2", "--out", str(f)]) == 0
    out = tmp_path / "idx"
    args = [str(tiny_zoo), str(f.parent), f"{tiny_zoo}:2", "--model", str(lps_dir)]
    assert main(["index", "build", *args, "--out", str(out), "--kind", "ivf", "-q"]) == 0
    idx = EmbeddingIndex.load(out)
    assert len(idx) == 10  # ZOO:2 again is not indexed twice
    assert list(idx.ids) == list(range(10)) and idx.ref_of(9) == str(f.resolve())
    assert json.loads((out / "index.json").read_text())["meta"]["sources"][1] == str(f.parent)
    capsys.readouterr()
    assert main(["search", str(f), "--index", str(out), "-k", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("query") and rows[1].endswith("(model)")
    best = {rows[2].split()[1], rows[3].split()[1]}
    assert best == {"2", "9"}  # the model itself, from the zoo and from the file
    nets = load_items(collect_items([str(f)]))
    assert nets[0].n_outputs == 2


def test_parts_digest_changes_when_a_checkpoint_is_replaced(tiny_zoo, tmp_path):
    """An interrupted run's parts must not serve a checkpoint replaced before the rerun."""
    import os

    ck = tmp_path / "ck"
    ck.mkdir()
    for i in (0, 5):
        assert main(["zoo", "export", str(tiny_zoo), str(i), "--out", str(ck / f"m{i}.pt")]) == 0
    items = collect_items([str(ck), str(tiny_zoo)])
    before = items_digest(items, "sha", 3)
    assert items_digest(collect_items([str(ck), str(tiny_zoo)]), "sha", 3) == before
    st = (ck / "m0.pt").stat()
    shutil.copyfile(ck / "m5.pt", ck / "m0.pt")  # same name, other weights
    os.utime(ck / "m0.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert items_digest(items, "sha", 3) != before
    now = items_digest(items, "sha", 3)
    (tiny_zoo / "auxiliary-like-extra").mkdir()  # a new entry beside the zoo's models
    try:
        assert items_digest(items, "sha", 3) == now  # the models did not change
    finally:
        (tiny_zoo / "auxiliary-like-extra").rmdir()


def test_directory_models_come_in_sorted_path_order(tmp_path):
    """`paramsim embed DIR` writes one row per model in sorted path order: the rows carry no
    names, so that order is the only way to tell them apart (os.walk lists a directory's
    files before its subdirectories')."""
    from paramsim.embed_bulk import collect_items

    for rel in ("0.pt", "a/x.pt", "b/y.pt", "c.pt", "b/a/z.pt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")  # only listed here, never loaded
    got = [it.source for it in collect_items([str(tmp_path)])]
    assert got == sorted(str(p.resolve()) for p in tmp_path.rglob("*.pt"))
