"""The corpus stage's built-in plugin: readers, extractors, segmenters and the paper's
segment filters."""

from __future__ import annotations

from typing import Any

from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.stages.corpus.extractors import BUILTIN_EXTRACTORS
from humpback_plugin.stages.corpus.filters import BUILTIN_FILTERS
from humpback_plugin.stages.corpus.mediawiki import MediaWikiReader
from humpback_plugin.stages.corpus.readers import BUILTIN_READERS
from humpback_plugin.stages.corpus.segmenters import BUILTIN_SEGMENTERS


@hookimpl
def register_corpus_readers(register: Any) -> None:
    for name, reader in BUILTIN_READERS.items():
        register(name, reader)
    register("mediawiki", MediaWikiReader())


@hookimpl
def register_extractors(register: Any) -> None:
    for name, extractor in BUILTIN_EXTRACTORS.items():
        register(name, extractor)


@hookimpl
def register_segmenters(register: Any) -> None:
    for name, segmenter in BUILTIN_SEGMENTERS.items():
        register(name, segmenter)


@hookimpl
def register_segment_filters(register: Any) -> None:
    for name, factory in BUILTIN_FILTERS.items():
        register(name, factory)
