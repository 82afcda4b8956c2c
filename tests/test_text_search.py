"""Text search: prompts through a tiny open_clip text tower, exact top-k against brute force (ties to the lower row),
the CLI, and the errors for empty prompts and a text model that did not embed the set."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clipsim import fileio, store
from clipsim.cli import main as cli_main
from clipsim.errors import ModelError
from clipsim.search.exact import brute_force
from clipsim.search.text import load_text_encoder, text_search
from clipsim.workspace import Workspace
from tests.helpers import unit16

QUERIES = ["a sketch of a star", "a photo of a fish"]


@pytest.fixture
def ws(tmp_path, monkeypatch, tiny_model_config, tiny_checkpoint, one_thread) -> Workspace:
    """300 random 32-d image embeddings in two shards (rows 10 and 250 are the same vector: a tie)."""
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    workspace = Workspace.create(tmp_path / "ws")
    x = unit16(np.random.default_rng(0).standard_normal((300, 32)))
    x[250] = x[10]
    for i, (a, b) in enumerate(((0, 200), (200, 300))):
        meta = pd.DataFrame({"key": [f"img{j}" for j in range(a, b)], "caption": [f"caption {j}" for j in range(a, b)]})
        store.write_shard(workspace.path("src", "web"), i, x[a:b], meta)
    workspace.register_dataset("web", "train", workspace.path("src", "web"), "embeddings")
    workspace.update_settings(similarity_model={"model": str(tiny_model_config), "pretrained": str(tiny_checkpoint)})
    return workspace


def test_text_top_k_equals_brute_force(ws):
    encoder = load_text_encoder(ws, "web")
    q16 = encoder.embed(QUERIES)
    x = ws.embeddings("web").all()
    q16[1] = x[10]  # the second query hits the tied pair at the top: the lower row must come first
    encoder.embed = lambda queries: q16
    got = text_search(ws, "web", QUERIES, k=7, encoder=encoder, block_rows=64)
    c = brute_force(q16, x)
    for qi, query in enumerate(QUERIES):
        rows = got[got["query"] == query]
        order = np.argsort(-c[qi].astype(np.float64), kind="stable")[:7]
        assert list(rows["rank"]) == list(range(1, 8)) and np.array_equal(rows["row"], order)
        assert np.array_equal(rows["similarity"].to_numpy(), c[qi, order])
        assert list(rows["key"]) == [f"img{r}" for r in order] and list(rows["caption"]) == [f"caption {r}" for r in order]
    assert list(got[got["query"] == QUERIES[1]]["row"][:2]) == [10, 250]


def test_text_search_cli_json_and_errors(ws, capsys):
    root = str(ws.root)
    assert cli_main(["text-search", "--workspace", root, "--query", QUERIES[0], "--k", "5", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    want = text_search(ws, "web", QUERIES[0], k=5)
    assert [r["key"] for r in records] == list(want["key"]) and [r["similarity"] for r in records] == \
        [float(s) for s in want["similarity"]] and set(records[0]) == {"query", "rank", "key", "similarity", "caption"}
    for bad in (["--query", "  "], ["--query", "x", "--k", "0"], ["--query", "x", "--dataset", "nope"]):
        assert cli_main(["text-search", "--workspace", root, *bad]) == 2
        assert "error:" in capsys.readouterr().err


def test_a_text_model_that_did_not_embed_the_set_is_refused(ws):
    fileio.write_json(ws.embedding_dir("web") / "config.json", {"model": "ViT-B-32", "model_config_fingerprint": "other"})
    with pytest.raises(ModelError, match="another architecture"):
        text_search(ws, "web", "a star")
