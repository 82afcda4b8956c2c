"""Exact nearest-neighbour search: the screen + re-check kernels (`exact`), the block scanner (`scan`), one
streamed pass over a train set (`passes`), shard-range parts merged exactly (`parts`)
and the stored results (`result`)."""
from clipsim.search.parts import merge_search_parts, part_dir, search_part
from clipsim.search.passes import DEFAULT_BLOCK_ROWS, Progress, SearchPass, search
from clipsim.search.result import (
    SearchResult,
    completed_searches,
    has_margins,
    interrupted_searches,
    is_fresh,
    search_status,
    searched_tests,
    searched_web_sets,
)

__all__ = ["DEFAULT_BLOCK_ROWS", "Progress", "SearchPass", "SearchResult", "completed_searches", "has_margins",
           "interrupted_searches", "is_fresh", "merge_search_parts", "part_dir", "search", "search_part",
           "search_status", "searched_tests", "searched_web_sets"]
