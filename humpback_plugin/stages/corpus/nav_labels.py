"""What a navigation header looks like: whole labels and label shapes, never words inside
titles.

A header is navigation when, normalised (:func:`normalise_header`: lower case, ``&`` as
``and``, punctuation and a leading or trailing count dropped, so "0 Comments", "Comments
(12)" and "Share this:" become "comments" and "share this"), it *is* one of
:data:`NAV_LABELS`, or it has one of the shapes in :data:`NAV_PATTERNS`, each anchored at
the start or the end of the header ("More from <author>", "Follow <site> online", "Most
read in <section>", "... main menu"). A title that merely contains such a word ("How
Comments Work in Python", "The Best Chocolate Chip Cookie Recipe", "How to Sign Up for
Medicare", "Copyright Law Basics for Photographers") is not a label and is kept.

The lists were written against the labelled headers of the shared HTML pages
(``tests/data/header_labels.json``; the README gives the rates). The paper's own examples
("advertisement", "forum", "quick link", "free newsletter") are labels here.
"""

from __future__ import annotations

import re


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Whole labels, normalised. Page furniture first (the paper's four examples at the top),
# then the generic site sections of news pages. Single words that are also ordinary
# article sections ("History", "Design", "Performance") are deliberately absent.
NAV_LABELS = frozenset(
    label.strip()
    for line in (
        "advertisement|advertisements|advertising|advertise|advertise with us|ad|ads",
        "forum|forums|quick link|quick links|free newsletter|newsletter|newsletters",
        "comments|comment|leave a reply|leave a reply cancel reply|leave a comment",
        "post a comment|add a comment|join the conversation|join the discussion|responses",
        "share|share this|share this story|share this article|share this post|sharing",
        "share this entry|share this page|share on social media|like this|like us on facebook",
        "follow us|connect|connect with us|stay connected|social|social media|social plugin",
        "subscribe|subscribe now|sign up|sign in|log in|login|logout|log out|register",
        "my account|account|almost done|search|site search|search form|search this site",
        "search results|menu|main menu|top menu|navigation|main navigation|site navigation",
        "skip to content|skip to main content|breadcrumb|breadcrumbs|you are at|you are here",
        "site map|sitemap|site index|site information|sections|topics|tags|related tags",
        "categories|archives|blogroll|about|about us|about the author|author|contact",
        "contact us|how to contact us|get in touch|privacy|privacy policy|cookie policy",
        "cookies|terms of use|terms of service|terms and conditions|disclaimer|notice",
        "policies|legal|copyright|all rights reserved|sponsored|sponsored content",
        "sponsored links|sponsored resources|sponsors|partner content|paid content|promoted",
        "promoted stories|our partners|partners|our network|our sites|from our advertisers",
        "from our partners|from around the web|around the web|you may also like",
        "you might also like|you may like|you might like|we recommend|recommended",
        "recommended for you|recommended stories|recommends|read more|read next",
        "read this next|up next|see also|related|related articles|related posts",
        "related stories|related news|related content|related links|related coverage",
        "more stories|more news|more articles|more videos|trending|trending now|popular",
        "most popular|editors picks|editor's picks|staff picks|featured|top stories|top news",
        "latest|latest news|latest stories|latest posts|recent|recent posts|recent comments",
        "upcoming|hot topics|in brief|newswire|headlines|today's headlines|breaking news",
        "news|world|us|lifestyle|entertainment|showbiz|showbiz and tv|opinion|video|videos",
        "photos|photo gallery|galleries|podcasts|rss|rss feed|feeds|followers|shopping cart",
        "cart|find a job|jobs|polls|scores|other|features|useful links|external links|links",
        "active forum topics|story continues below|story continues below gallery",
        "tell us what you think|we appreciate your input|send feedback|feedback",
        "accessibility links|previous story|next story|previous article|next article",
        "previous post|next post|older posts|newer posts|load more|show more",
    )
    for label in line.split("|")
)

# Words that page furniture is made of. A header of at most four words, all of them from
# this list, is a label ("Random Posts", "Privacy Statement", "Our Channels", "Watch Now",
# "Latest videos", "Support Us"): a content title always has a word of its own.
NAV_WORDS = _word_set(
    """
    a about account ads advertise advertisement advertising all alerts also and archive
    archives article articles author blog blogs browse calendar cart categories category
    channels comment comments community connect contact cookie cookies daily discover
    e edition editor's editors editorial email emails entries entry events facebook
    feed feedback feeds follow followers for from galleries gallery get headlines here home
    in index info information instagram join latest leave legal links listen login log
    me menu more most my navigation network new newer news newsletter newsletters next
    now of older on online our pages paper partner partners photo photos picks podcast
    podcasts policy popular post posts previous privacy profile random read recent
    recommended register related reply resources rss search section sections see share
    sharing shop sign site sitemap social sponsor sponsored sponsors statement stay stories
    story subscribe subscription support tags terms the this tip tips to today top topics
    trending twitter up updates us video videos view watch we web week welcome what's with
    you your youtube
    """
)
# Generic sections of news sites, as whole labels. Sections that encyclopedic articles
# also have ("Politics", "Economy", "Culture", "Education") are not in the list.
SECTION_LABELS = _word_set(
    """
    crime finance money markets tech weather traffic obituaries obits columns columnists
    letters blogs resources countries regions autos cars motoring realestate showbiz
    celebrity celebrities lifestyle entertainment opinion opinions world national local
    nation metro health wellness
    """
) | {"real estate", "local news", "world news", "us news", "uk news", "health news"}


# Label shapes on the normalised header; each is anchored so it matches a label, not a
# word in a title.
_PLACES = r"(?:in|on|from|of|about|at)"
_NAV_NOUNS = (
    r"(?:stories|story|news|articles|posts|videos|galleries|features|headlines|topics|"
    r"comments|links|content|coverage|reads|sites|deals|picks)"
)
_LEADS = r"(?:most|top|latest|recent|trending|popular|related|recommended|featured|more)"
NAV_PATTERNS = tuple(
    re.compile(p)
    for p in (
        # "More from <author>", "Recent in Sports", "Next Up In Tech", "More on this story".
        rf"^(?:{_LEADS}|next up|also|read more|see more|view more) {_PLACES} (?:\S+ ?){{1,5}}$",
        # "More Business News", "Latest Features", "<author>'s Most Recent Stories".
        rf"^(?:(?:\S+ ){{0,2}}\S+'s? )?{_LEADS}(?: \S+){{0,2}} {_NAV_NOUNS}$",
        # "Most Popular Today", "PFT Most Commented", "Most read in world news".
        r"^(?:\S+ )?most (?:popular|read|viewed|shared|commented|emailed)"
        rf"(?: (?:today|this week|now|{_NAV_NOUNS}|{_PLACES} (?:\S+ ?){{1,4}}))?$",
        r"^trending(?: \S+)?$",
        r"^trending now\b",
        r"^more \S+$",
        r"^(?:newer|older|previous|next|prev) (?:story|post|article|entry|page|stories|posts)\b",
        r"^(?:watch|listen|read|shop|subscribe|sign up|join|donate) (?:now|today|here|live)$",
        r"^you (?:may|might|will) (?:also )?(?:like|love|enjoy)\b",
        r"\bin this (?:story|article|post)$",
        r"^(?:loading|please wait)\b",
        r"^follow .{1,40} online$",
        r"^(?:\S+ ){0,3}on (?:twitter|facebook|instagram|youtube|linkedin)$",
        r"^advertise (?:with|on|in)\b",
        # Sign-up dialogs: confirmations and errors.
        r"^(?:there was an error|keep an eye on your inbox|check your inbox|thanks? (?:you )?for "
        r"(?:subscribing|signing up|registering|your feedback)|you(?:'re| are) (?:all set|"
        r"subscribed|signed up)|you did it|(?:so )?sorry to see you go|with your .{1,30} profile)",
        r"^(?:support|donate to) (?:us|our (?:work|journalism))\b",
        r"^must (?:read|reads|watch|see|listen|haves?)$",
        r"^search(?: \S+)?$",
        # Calls to action: newsletters, alerts, following, sharing, commenting.
        r"^(?:sign up|signup|subscribe|register|join)\b.*\b"
        r"(?:newsletters?|email|emails|alerts|updates|mailing list)\b",
        r"^(?:\S+ ){0,2}(?:newsletters?|emails|email alerts|news alerts)$",
        r"^follow (?:us|\S+ online|\S+ \S+ online|the author|this author|@)",
        r"^follow .{0,40}\bon (?:twitter|facebook|instagram|social media)$",
        r"^share (?:this|on|via|with|all|your|the story)\b",
        r"^(?:leave|post|add|write|submit) (?:a|your) (?:reply|comment|comments|review|response)\b",
        r"^\d* ?(?:responses?|comments?|replies|thoughts) (?:to|on) ",
        r"^(?:sign|log) (?:in|up)(?: (?:or|and)? ?(?:sign|log|create) .{0,20}|"
        r" to (?:your account|complete|continue|comment|read|save)\b.*)?$",
        r"^(?:welcome back|create (?:an |your )?account|forgot (?:your )?password|"
        r"reset (?:your )?password|check your (?:email|inbox))\b",
        r"^(?:new )?privacy (?:policy|notice|settings)\b",
        r"^cookies? (?:settings|policy|preferences|consent|notice)$",
        r"(?:^|\b(?:main|top|site|primary|secondary|footer|mobile|global) )(?:menu|navigation)$",
        r"\b(?:view|see|show) (?:all|more)(?: (?:articles|stories|posts|videos|photos))?$",
        r"^(?:keep up to date|stay (?:up to date|informed|connected|in touch|updated)|"
        r"get (?:alerts|updates|our newsletter|the newsletter|email updates))\b",
        r"^(?:found|enjoyed|liked?|loved?) (?:this|the|that) (?:story|article|post|page|piece)\b",
        r"^(?:want|like) more (?:stories|articles|news|posts) like this$",
        r"^about (?:this|the) (?:statement|article|story|author|blog|newsletter)\b",
        r"^our (?:network|partners|sponsors|sites|brands|apps|newsletters|other sites)$",
        r"^we(?:'re| are) social\b",
        r"(?:talk about|disable|turn off|whitelist|pause) your ad ?blocker|"
        r"block ads but (?:still )?support",
        r"^(?:advertisement|sponsored|promoted|paid post|partner content)\b",
    )
)

_PUNCT = re.compile(r"[^\w'\s]+")
_ABBREV_DOT = re.compile(r"(?<=\b\w)\.")


def normalise_header(header: str) -> str:
    """Lower case, ``&`` as ``and``, curly quotes straight, punctuation dropped (``U.S.``
    becomes ``us``), a leading or trailing count dropped ("0 comments", "comments 12")."""
    text = header.lower().replace("&", " and ").replace("\u2019", "'").replace("\u2018", "'")
    text = _PUNCT.sub(" ", _ABBREV_DOT.sub("", text))
    words = [w.strip("'") for w in text.split()]
    words = [w for w in words if w]
    if len(words) > 1 and words[0].isdigit():
        words = words[1:]
    if len(words) > 1 and words[-1].isdigit():
        words = words[:-1]
    return " ".join(words)
