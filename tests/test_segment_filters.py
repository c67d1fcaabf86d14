"""The paper's segment filters, each on its own and as plugins."""

from __future__ import annotations

import json

import pytest

from humpback_plugin.core.config import CorpusConfig
from humpback_plugin.core.records import Segment
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.plugins import components, pm
from humpback_plugin.stages.corpus import filters as sf
from humpback_plugin.stages.corpus.stage import segment_corpus

ENGLISH = (
    "Tomatoes grow best in warm soil with plenty of sunlight. Water them deeply but not too "
    "often, so the roots reach down for moisture. A layer of mulch keeps the ground cool and "
    "stops weeds from taking over the bed during the summer months."
)


def make(text: str = ENGLISH, header: str | None = "Growing tomatoes") -> Segment:
    return Segment(id=Segment.make_id(text), text=text, header=header, source="t")


def test_all_builtins_registered_in_default_order(tmp_path):
    # The order a run uses without a filter list: cheap checks first, exact dedup before
    # language ID, MinHash last so only survivors enter its index.
    order = [
        "length", "header_empty_or_upper", "header_caps_ratio", "nav_header", "repetitive",
        "exact_dedup", "english", "minhash",
    ]  # fmt: skip
    assert sorted(components("register_segment_filters")) == sorted(order)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": ENGLISH * 5}) + "\n")
    summary = segment_corpus([str(path)], tmp_path / "o.jsonl", progress=False)
    assert summary.filters == order


def test_length():
    check = sf.length()
    assert check(make("x" * 599)) == "too_short"
    assert check(make("x" * 600)) is None and check(make("x" * 3000)) is None
    assert check(make("x" * 3001)) == "too_long"
    assert sf.length(min_chars=10, max_chars=20)(make("x" * 15)) is None


def test_header_empty_or_upper():
    check = sf.header_empty_or_upper()
    assert check(make(header="")) == "header_empty"
    assert check(make(header="  ")) == "header_empty"
    assert check(make(header="***")) == "header_empty"
    assert check(make(header="SHARE THIS STORY")) == "header_upper"
    assert check(make(header="Growing Tomatoes")) is None
    assert check(make(header=None)) is None  # plain text without headers
    assert sf.header_empty_or_upper(require_header=True)(make(header=None)) == "no_header"
    # Acronyms are not shouting; a long title set in capitals is a title.
    assert check(make(header="GPU")) is None and check(make(header="TL;DR")) is None
    assert check(make(header="HOW TO USE A WATER BATH CANNER")) is None
    paper = sf.header_empty_or_upper(max_words=None)  # every all-uppercase header
    assert paper(make(header="HOW TO USE A WATER BATH CANNER")) == "header_upper"


def test_header_caps_ratio():
    check = sf.header_caps_ratio()
    assert check(make(header="How To Grow Tomatoes In Pots")) is None
    assert check(make(header="NEWS Sports WEATHER")) == "header_caps"
    assert check(make(header="FAQ")) is None  # too few letters to judge
    # Acronyms among ordinary words are not shouting (issue 11).
    assert check(make(header="NASA and the ESA")) is None
    assert check(make(header="VW ID. SPACE VIZZION Gallery")) is None
    assert sf.header_caps_ratio(max_ratio=0.2)(make(header="ShOuTy HeAdEr HeRe")) == "header_caps"


@pytest.mark.parametrize(
    "header",
    [
        # The paper's examples (v3 appendix).
        "Advertisement",
        "Forum",
        "Quick Links",
        "Free Newsletter",
        # Page furniture, with counts and punctuation.
        "Related Articles",
        "0 Comments",
        "Comments (12)",
        "Share this:",
        "Leave a Comment",
        "Leave a Reply Cancel reply",
        "Share",
        "Cookie settings",
        "Main Menu",
        "The Verge main menu",
        "Sign up for our newsletter",
        "Copyright 2024",
        "Sponsored content",
        "Log in",
        "Search",
        "More from Jason Cipriani",
        "Most read in world news",
        "Follow Vox online:",
        "You may also like",
    ],
)
def test_nav_header_rejects(header):
    assert sf.nav_header()(make(header=header)) == "nav_header"


@pytest.mark.parametrize(
    "header",
    [
        "Growing tomatoes",
        "How to search a sorted array in logarithmic time",
        "Shareholders approve the merger",
        "A forum of world leaders met on climate change today",
        # Titles that contain a navigation word (issue 11): whole labels only.
        "The Best Chocolate Chip Cookie Recipe",
        "How to Sign Up for Medicare",
        "Copyright Law Basics for Photographers",
        "How Comments Work in Python",
        "Most Popular Baby Names of 2019",
        "Related Work",
        "Follow the Money",
        "Share prices slump after the merger",
    ],
)
def test_nav_header_keeps(header):
    assert sf.nav_header()(make(header=header)) is None


def test_nav_header_options():
    assert sf.nav_header(extra_labels=["Today's deals"])(make(header="Today's Deals")) == (
        "nav_header"
    )
    assert sf.nav_header(extra_patterns=[r"^deals? of the day$"])(
        make(header="Deal of the day")
    ) == ("nav_header")
    assert sf.nav_header(labels=[], patterns=[])(make(header="Advertisement")) is None


def test_repetitive():
    check = sf.repetitive()
    assert check(make()) is None
    repeated = "Buy cheap shoes online today at our shop. " * 3 + ENGLISH
    assert check(make(repeated)) == "repetitive"
    near = (
        "Click here to buy our cheap leather shoes online from the shop today. "
        "Click here to buy our cheap leather shoes online from the shop now. " + ENGLISH
    )
    assert check(make(near)) == "repetitive"
    assert sf.repetitive(max_pairs=5)(make(repeated)) is None
    assert sf.repetitive(threshold=1.01)(make(near)) is None


def test_exact_dedup_is_per_instance_and_normalised():
    check = sf.exact_dedup()
    assert check(make(ENGLISH)) is None
    assert check(make("  " + ENGLISH.upper().replace(" ", "\n"))) == "duplicate"
    assert sf.exact_dedup()(make(ENGLISH)) is None  # a fresh run starts empty
    strict = sf.exact_dedup(normalize=False)
    assert strict(make(ENGLISH)) is None and strict(make(ENGLISH.upper())) is None


def test_minhash_near_duplicates():
    check = sf.minhash()
    base = " ".join(f"word{i} and more text number {i}" for i in range(80))
    assert check(make(base)) is None
    assert check(make(base.replace("word79", "changed"))) == "near_duplicate"
    assert check(make(ENGLISH)) is None
    assert sf.minhash(threshold=0.95)(make(base)) is None


def test_english():
    check = sf.english()
    assert check(make()) is None
    german = (
        "Tomaten wachsen am besten in warmer Erde mit viel Sonnenlicht. Gießen Sie sie "
        "gründlich, aber nicht zu oft, damit die Wurzeln nach Feuchtigkeit suchen."
    )
    assert check(make(german, header="Tomaten anbauen")) == "not_english"
    assert sf.english(languages=["de"])(make(german)) is None
    assert sf.english(languages="de")(make()) == "wrong_language"


def test_filters_run_in_order_and_count_first_reason(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "# " + "X" * 10 + "\n\n" + ENGLISH}, {"text": "short"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = segment_corpus(
        [str(path)],
        tmp_path / "o.jsonl",
        CorpusConfig(filter_options={"length": {"min_chars": 100}}),
        progress=False,
    )
    assert summary.rejected == {
        "header_empty_or_upper:header_upper": 1,
        "length:too_short": 1,
    }
    summary = segment_corpus(
        [str(path)], tmp_path / "o.jsonl", CorpusConfig(filters=["none"]), progress=False
    )
    assert summary.kept == 2


def test_third_party_filter_plugin_by_name_and_override(tmp_path):
    class Plugin:
        @hookimpl
        def register_segment_filters(self, register):
            register(
                "no_tomatoes",
                lambda word="tomato": lambda s: "tomato" if word in s.text.lower() else None,
            )  # noqa: E501
            register("length", lambda **kw: lambda s: None)  # replaces the built-in

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": ENGLISH}) + "\n" + json.dumps({"text": "tiny"}) + "\n")
    pm.register(Plugin(), name="test-filters")
    try:
        summary = segment_corpus(
            [str(path)],
            tmp_path / "o.jsonl",
            CorpusConfig(filters=["length", "no_tomatoes"]),
            progress=False,
        )
        assert summary.rejected == {"no_tomatoes:tomato": 1} and summary.kept == 1
        default = segment_corpus([str(path)], tmp_path / "o.jsonl", progress=False)
        assert default.filters[-1] == "no_tomatoes"
    finally:
        pm.unregister(name="test-filters")
