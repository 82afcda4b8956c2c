"""Text search over any embedded set: prompts embedded with the similarity model's own text tower, then the exact
top-k of the image embeddings (the block scanner, canonical similarity, ties to the lower row).

The prompt embedding is L2-normalised and stored as float16 like the image embeddings, so a result's similarity
is float32(float64 q . x) of the two float16 vectors, exactly what brute force over the set gives.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import ModelError, WorkspaceError
from clipsim.search.passes import DEFAULT_BLOCK_ROWS, resolve_precision
from clipsim.search.scan import ExactScanner, Group

DEFAULT_K = 50
log = logging.getLogger(__name__)


@dataclass
class TextEncoder:
    """An open_clip model's text tower and tokenizer, with the model identity (see clipsim.models.load_model)."""

    model: object
    tokenizer: object
    info: dict
    device: str

    def embed(self, queries: list[str]) -> np.ndarray:
        """(q, d) float16 L2-normalised prompt embeddings.

        Raises:
            WorkspaceError: an empty prompt.
        """
        from clipsim.embed import encode_texts

        empty = [q for q in queries if not str(q).strip()]
        if empty or not queries:
            raise WorkspaceError("a text query is empty; type what to look for, e.g. 'a sketch of a star'")
        return encode_texts(self.model, self.tokenizer, [str(q) for q in queries], device=self.device).astype(np.float16)


def query_model(ws, dataset: str) -> tuple[str, str | None]:
    """(model, pretrained) whose text tower matches `dataset`'s images: the workspace's similarity model
    (settings['similarity_model']), else the model recorded in the dataset's embedding config.

    Raises:
        ModelError: neither is known (the message says how to set it).
    """
    saved = ws.settings.get("similarity_model") or {}
    if "model" in saved:
        return str(ws.resolve(saved["model"])), (str(ws.resolve(saved["pretrained"])) if saved.get("pretrained")
                                                 else None)
    config = ws.embedding_dir(dataset) / "config.json"
    if config.exists():
        made = fileio.read_json(config)
        return made.get("model_config") or made["model"], made.get("checkpoint") or made.get("pretrained")
    raise ModelError(f"no similarity model is known for {dataset!r} (no settings.similarity_model in "
                     f"{ws.root / 'clipsim.json'} and no embedding config); embed it with `python -m clipsim embed "
                     "--model M --pretrained P`, or set similarity_model in the workspace settings")


def load_text_encoder(ws, dataset: str, device: str = "auto") -> TextEncoder:
    """The text tower of the model that embedded `dataset`, checked against its embedding config.

    Raises:
        ModelError: the model cannot be loaded offline, or it is not the model that made the embeddings.
    """
    from clipsim.models import load_model

    model, pretrained = query_model(ws, dataset)
    net, _, tokenizer, info = load_model(model, pretrained, device)
    config = ws.embedding_dir(dataset) / "config.json"
    if config.exists():
        made = fileio.read_json(config)
        if made.get("model_config_fingerprint") not in (None, info["model_config_fingerprint"]):
            raise ModelError(f"the embeddings of {dataset!r} were made with model {made.get('model')} but the "
                             f"workspace's similarity model is {info['model']} (another architecture or config); text "
                             "queries would not be comparable: set settings.similarity_model to the embedding model")
        if made.get("checkpoint_fingerprint") not in (None, info["checkpoint_fingerprint"]):
            log.warning("the checkpoint %s is not the file that embedded %r (%s; name, size or modification time "
                        "differ): text similarities are only meaningful if the weights are the same",
                        info["checkpoint"], dataset, made.get("checkpoint"))
    return TextEncoder(net, tokenizer, info, str(next(net.parameters()).device))


def text_search(ws, dataset: str, queries: str | list[str], k: int = DEFAULT_K, encoder: TextEncoder | None = None,
                precision: str = "auto", device: str = "auto", block_rows: int = DEFAULT_BLOCK_ROWS,
                progress=None) -> pd.DataFrame:
    """The exact top-k images of `dataset` for each text query.

    Args:
        ws: the workspace.
        dataset: an embedded set (train or test).
        queries: one prompt or several (one scan serves all).
        k: results per query.
        encoder: a loaded text encoder (default: load_text_encoder).
        precision, device: scanner screen precision and device; block_rows: rows per streamed block.
        progress: optional callable(done_rows, total_rows, description).

    Returns:
        DataFrame: query, rank (1 = best), row (global id), key, similarity (float32), caption ('' where none);
        sorted by query order, then rank.

    Raises:
        WorkspaceError: k < 1 or an empty query; ModelError: the text model does not match the embeddings.
    """
    queries = [queries] if isinstance(queries, str) else list(queries)
    if int(k) < 1:
        raise WorkspaceError(f"k={k} must be at least 1 (results per query)")
    emb = ws.embeddings(dataset)
    encoder = encoder or load_text_encoder(ws, dataset, device)
    q16 = encoder.embed(queries)
    if q16.shape[1] != emb.dim:
        raise ModelError(f"the text tower gives {q16.shape[1]}-d embeddings but {dataset!r} holds {emb.dim}-d images; "
                         "set settings.similarity_model to the model that embedded it")
    prec, dev = resolve_precision(precision, device)
    scanner = ExactScanner(q16, [Group("text", 0, len(q16))], int(k), prec, dev, row_stats=False)
    done = 0
    for _, base, block in emb.iter_blocks(block_rows):
        scanner.add_block(block, base)
        done += len(block)
        if progress:
            progress(done, emb.count, f"text search {dataset}")
    state = scanner.state()
    sims, ids = state["top_s"], state["top_i"]
    qi, rank = np.nonzero(ids >= 0)
    rows = ids[qi, rank]
    columns = ["key", "caption"] if "caption" in emb.columns() else ["key"]
    meta = emb.metadata_at(rows, columns)
    captions = meta["caption"].fillna("").astype(str).to_numpy() if "caption" in meta else np.full(len(rows), "")
    return pd.DataFrame({"query": np.asarray(queries, dtype=object)[qi], "rank": rank + 1, "row": rows,
                         "key": meta["key"].astype(str).to_numpy(), "similarity": sims[qi, rank].astype(np.float32),
                         "caption": captions})
