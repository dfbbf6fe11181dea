"""What an email's HTML uses, checked against caniemail's client-support data.

``used_features`` names every feature a document uses by caniemail's slug (``html-lists``,
``css-padding``, ``css-at-media``, ...), each with the places it was seen. ``evaluate`` looks
them up for the clients in ``CLIENTS``, taking each platform's newest test (the last entry in
the data's ``stats``), and returns those not supported ("n") or only partly ("a"). The data is
``data/caniemail.json`` from the npm package ``caniemail`` (MIT), installed by
``npm ci --prefix tests/caniemail --ignore-scripts``; its code is never run.

``python -m tests.clientsupport FILE.html ...`` prints the findings for saved emails.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cssselect
import cssutils
import lxml.html
from lxml import etree

DATA = Path(__file__).resolve().parent / "caniemail" / "node_modules" / "caniemail" / "data" / "caniemail.json"

CLIENTS = {  # family -> platforms, as caniemail names them
    "gmail": ("desktop-webmail", "ios", "android", "mobile-webmail"),
    "outlook": ("windows", "windows-mail", "macos", "outlook-com", "ios", "android"),
    "apple-mail": ("macos", "ios"),
    "yahoo": ("desktop-webmail", "ios", "android"),
}

TAGS = {  # tags under a shared slug; any other tag is looked up as html-<tag>
    **{f"h{n}": "html-h1-h6" for n in range(1, 7)},
    **dict.fromkeys(("ul", "ol", "li", "dl", "dt", "dd"), "html-lists"),
    **dict.fromkeys(("article", "aside", "details", "figcaption", "figure", "footer", "header",
                     "main", "mark", "nav", "section", "summary", "time"), "html-semantics"),
    **dict.fromkeys(("map", "area"), "html-image-maps"),
}
ATTRIBUTES = {  # attribute -> slug; aria-* ones are looked up as html-aria-*
    **{name: f"html-{name}" for name in ("align", "valign", "width", "height", "cellpadding", "cellspacing",
                                         "role", "lang", "dir", "target", "background", "hidden", "required")},
    "srcset": "html-srcset", "sizes": "html-srcset", "loading": "html-loading-attribute",
}
IMAGES = {"jpeg": "jpg", "tif": "tiff", "heic": "heif"}  # other extensions name their slug
FOLDS = [  # (property, full match) -> slug, for properties without a slug of their own
    (r"border(-(top|bottom))?(-(left|right))?-radius", "css-border-radius"),
    (r"border-(start|end)-(start|end)-radius", "css-border-radius-logical"),
    (r"border-(inline|block)", "css-border-inline-block"),
    (r"border-(inline|block)-(start|end)-(color|style|width)", "css-border-inline-block-longhand"),
    (r"border-(inline|block)-.+", "css-border-inline-block-individual"),
    (r"border-image-.+", "css-border-image"),
    (r"border-.+", "css-border"),
    (r"(padding|margin)-(inline|block)", r"css-\1-inline-block"),
    (r"(padding|margin)-(inline|block)-(start|end)", r"css-\1-\2-start-end"),
    (r"(padding|margin)-(top|right|bottom|left)", r"css-\1"),
    (r"overflow-(x|y|block|inline)", "css-overflow"),
    (r"(column|row)-gap", "css-gap"),
    (r"columns|column-.+", "css-column-layout-properties"),
    (r"grid-template-.+", "css-grid-template"),
    (r"top|right|bottom|left", "css-left-right-top-bottom"),
    (r"inset-.+", "css-inset"),
    (r"block-size", "css-block-inline-size"),
]
VALUES = [  # (searched in a declaration's value) -> slug
    (r"\bcalc\(", "css-unit-calc"), (r"\bclamp\(", "css-function-clamp"), (r"\bmin\(", "css-function-min"),
    (r"\bmax\(", "css-function-max"), (r"\brgb\(", "css-rgb"), (r"\brgba\(", "css-rgba"),
    (r"\bvar\(", "css-variables"), (r"\blight-dark\(", "css-function-light-dark"),
    (r"\b(ok)?(lch|lab)\(", "css-modern-color"), (r"\b(repeating-)?linear-gradient\(", "css-linear-gradient"),
    (r"\b(repeating-)?radial-gradient\(", "css-radial-gradient"), (r"\bconic-gradient\(", "css-conic-gradient"),
    (r"\binitial\b", "css-unit-initial"), (r"\b(fit|min|max)-content\b", "css-intrinsic-size"),
    (r"\b(system-ui|ui-serif|ui-sans-serif|ui-rounded|ui-monospace)\b", "css-sytem-ui"),
]
DISPLAYS = {"none": "css-display-none", "flex": "css-display-flex", "inline-flex": "css-display-flex",
            "grid": "css-display-grid", "inline-grid": "css-display-grid"}
UNIT = re.compile(r"(?<![\w.#-])[-+]?(?:\d+\.?\d*|\.\d+)(px|r?em|%|p[tc]|[cm]m|in|ex|ch|v[hw]|vmin|vmax)(?![\w-])")
MEDIA = [(r"prefers-color-scheme", "css-at-media-prefers-color-scheme"),
         (r"prefers-reduced-motion", "css-at-media-prefers-reduced-motion"),
         (r"\borientation\b", "css-at-media-orientation"), (r"\b(any-)?hover\b", "css-at-media-hover"),
         (r"device-pixel-ratio", "css-at-media-device-pixel-ratio")]
COMBINATORS = {" ": "css-selector-descendant", ">": "css-selector-child",
               "+": "css-selector-adjacent-sibling", "~": "css-selector-general-sibling"}
PARTS = {"Class": "css-selector-class", "Hash": "css-selector-id", "Attrib": "css-selector-attribute"}
PARSER = cssutils.CSSParser(validate=False, fetcher=lambda url: (None, ""))  # never fetches an @import


class Finding(NamedTuple):
    """A used feature that a client does not support ("n") or only partly ("a")."""

    slug: str
    title: str
    client: str  # "family/platform", e.g. "outlook/windows"
    support: str  # "n" or "a"
    notes: str  # caniemail's numbered notes on that result


def load_data(path: Path = DATA) -> dict:
    """caniemail's data file as it is; ``data`` holds one dict per feature."""
    return json.loads(path.read_text(encoding="utf-8"))


def client_name(data: dict, client: str) -> str:
    """"outlook/windows" -> "Outlook Windows", in caniemail's own names."""
    family, platform = client.split("/")
    first, second = data["nicenames"]["family"][family], data["nicenames"]["platform"][platform]
    return second if second.startswith(first) else f"{first} {second}"


def property_slug(name: str, slugs: set[str]) -> str | None:
    """A CSS property's slug: its own, or the one it folds into; vendor properties have none."""
    if name.startswith("--"):
        return "css-variables"
    if name.startswith(("-", "mso-")):
        return None
    if f"css-{name}" in slugs:
        return f"css-{name}"
    for pattern, slug in FOLDS:
        match = re.fullmatch(pattern, name)
        if match and match.expand(slug) in slugs:
            return match.expand(slug)
    return None


def declaration_slugs(name: str, value: str, important: bool, slugs: set[str]) -> set[str]:
    """The slugs of one declaration: its property's, and those of values with a slug
    (``color: rgba(...)`` uses css-rgba, though color has none); vendor properties have none."""
    if name.startswith(("-", "mso-")) and not name.startswith("--"):
        return set()
    plain = re.sub(r"url\([^)]*\)|\"[^\"]*\"|'[^']*'", "", value.lower())
    found = {property_slug(name, slugs), *(slug for pattern, slug in VALUES if re.search(pattern, plain))} - {None}
    found |= {"css-unit-" + ("percent" if unit == "%" else unit) for unit in UNIT.findall(plain)}
    if name == "display" and plain.strip() in DISPLAYS:
        found.add(DISPLAYS[plain.strip()])
    return found | ({"css-important"} if important else set())


def _walk(node, found: set[str]) -> int:
    """Add a parsed selector's slugs to ``found``; return how many class, id and attribute
    parts its right-most compound has."""
    kind = type(node).__name__
    if kind == "Element":
        found.update({"css-selector-type"} if node.element else ())
        return 0
    if kind == "CombinedSelector":
        found.add(COMBINATORS[node.combinator])
        _compound(node.selector, found)
        return _walk(node.subselector, found)
    if kind == "Negation":
        found.add("css-pseudo-class-not")
        _compound(node.subselector, found)
    elif kind == "Relation":
        found.add("css-pseudo-class-has")
        for _combinator, selector in node.arguments:
            _compound(selector.parsed_tree, found)
    elif kind in ("Pseudo", "Function"):
        found.add(f"css-pseudo-class-{getattr(node, 'ident', None) or node.name}")
    found.update({PARTS[kind]} if kind in PARTS else ())
    return _walk(node.selector, found) + (kind in PARTS)


def _compound(node, found: set[str]) -> None:
    """As _walk; two or more class, id or attribute parts in one compound is chaining."""
    if _walk(node, found) >= 2:
        found.add("css-selector-chaining")


def selector_slugs(text: str) -> set[str]:
    """The slugs of a rule's selector list: kinds of selector, combinators, pseudo-classes."""
    try:
        selectors = cssselect.parse(text)
    except cssselect.SelectorError as error:  # say so: a selector skipped would hide its features
        raise ValueError(f"clientsupport cannot read the selector {text!r}: {error}") from error
    found = {"css-selector-grouping"} if len(selectors) > 1 else set()
    for selector in selectors:
        _compound(selector.parsed_tree, found)
        if selector.pseudo_element:
            found.add("css-pseudo-element-" + getattr(selector.pseudo_element, "name", selector.pseudo_element))
    if re.search(r"(^|[\s>+~(,])\*", re.sub(r"\[[^\]]*\]", "", text)):
        found.add("css-selector-universal")
    return found


def stylesheet_places(rules, slugs: set[str]) -> Iterator[tuple[str, str]]:
    """(slug, place) for what a parsed style sheet's rules use, nested @media rules too."""
    for rule in rules:
        if rule.type == rule.STYLE_RULE:
            yield from ((slug, rule.selectorText) for slug in sorted(selector_slugs(rule.selectorText)))
            for prop in rule.style.getProperties(all=True):
                for slug in declaration_slugs(prop.name, prop.value, bool(prop.priority), slugs):
                    yield slug, f"{rule.selectorText} {{ {prop.name} }}"
        elif rule.type == rule.MEDIA_RULE:
            media = rule.media.mediaText
            for slug in ["css-at-media", *(slug for pattern, slug in MEDIA if re.search(pattern, media))]:
                yield slug, f"@media {media}"
            yield from stylesheet_places(rule.cssRules, slugs)
        elif rule.type == rule.COMMENT:
            yield "css-comments", rule.cssText[:40]
        elif keyword := re.match(r"\s*@([\w-]+)", rule.cssText or ""):  # @font-face, @supports...
            yield f"css-at-{keyword.group(1).lower()}", f"@{keyword.group(1)}"


def element_places(el, slugs: set[str]) -> Iterator[tuple[str, str]]:
    """(slug, place) for what one element uses: its tag, attributes, link, image, inline style."""
    tag = el.tag.lower()
    yield TAGS.get(tag, f"html-{tag}"), f"<{tag}>"
    if tag in ("input", "button"):
        yield f"html-{tag}-{el.get('type', 'text' if tag == 'input' else 'submit').lower()}", f"<{tag}>"
    for name in el.attrib:
        slug = ATTRIBUTES.get(name.lower()) or (f"html-{name.lower()}" if name.startswith("aria-") else None)
        if slug:
            yield slug, f"<{tag} {name}>"
    href = (el.get("href") or "").strip().lower() if tag == "a" else ""
    if href.startswith(("#", "mailto:")):
        yield "html-anchor-links" if href.startswith("#") else "html-mailto-links", f'<a href="{el.get("href")}">'
    if tag == "meta" and (el.get("name") or "").lower() in ("color-scheme", "supported-color-schemes"):
        yield "html-meta-color-scheme", f'<meta name="{el.get("name")}">'
    src = (el.get("src") or "").strip() if tag == "img" else ""
    extension = re.split(r"[?#]", src)[0].rsplit(".", 1)[-1].lower() if "." in src else ""
    if src:
        yield ("image-base64" if src.startswith("data:") else f"image-{IMAGES.get(extension, extension)}",
               f"<img src=...{src[-30:]}>")
    for prop in PARSER.parseStyle(el.get("style") or "").getProperties(all=True):
        for slug in declaration_slugs(prop.name, prop.value, bool(prop.priority), slugs):
            yield slug, f'<{tag} style="{prop.name}">'



def used_features(html: str, slugs: set[str]) -> dict[str, list[str]]:
    """Each slug in ``slugs`` the document uses -> the places it was seen, without repeats."""
    root = lxml.html.document_fromstring(html)
    used: dict[str, list[str]] = {}

    def add(places) -> None:
        for slug, place in places:
            if slug in slugs and place not in used.setdefault(slug, []):
                used[slug].append(place)

    if (root.getroottree().docinfo.doctype or "").lower() == "<!doctype html>":
        add([("html-doctype", "<!DOCTYPE html>")])
    for el in root.iter():
        if el.tag is etree.Comment:
            add([("html-comments", f"<!--{(el.text or '')[:16]}...-->")])
        elif isinstance(el.tag, str):
            add(element_places(el, slugs))
            if el.tag.lower() == "style":
                add(stylesheet_places(PARSER.parseString(el.text or "").cssRules, slugs))
    return {slug: used[slug] for slug in sorted(used) if used[slug]}


def evaluate(used, data: dict, clients: dict = CLIENTS) -> list[Finding]:
    """The used slugs each client's newest test found unsupported ("n") or partly supported
    ("a"); slugs the data does not have are ignored."""
    features = {feature["slug"]: feature for feature in data["data"]}
    findings = []
    for slug in sorted(set(used) & set(features)):
        feature = features[slug]
        for family, platforms in clients.items():
            for platform in platforms:
                versions = feature["stats"].get(family, {}).get(platform)
                result = list(versions.values())[-1] if versions else "u"
                if result[:1] in ("n", "a"):
                    notes = [(feature.get("notes_by_num") or {}).get(n, "") for n in re.findall(r"#(\d+)", result)]
                    findings.append(Finding(slug, feature["title"], f"{family}/{platform}", result[0],
                                            " ".join(notes).strip()))
    return findings


def main(paths: list[str]) -> None:
    """Print, for each saved HTML file, its "n" and then its "a" findings with their places."""
    data = load_data()
    for path in paths:
        used = used_features(Path(path).read_text(encoding="utf-8"), {f["slug"] for f in data["data"]})
        print(f"== {path}")
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for finding in evaluate(used, data):
            key = (finding.support, finding.slug, finding.title)
            grouped.setdefault(key, []).append(client_name(data, finding.client))
        for (support, slug, title), names in sorted(grouped.items(), key=lambda item: item[0][0] != "n"):
            print(f"{support} {slug} ({title}): {', '.join(names)}\n    at: {'; '.join(used[slug][:4])}")


if __name__ == "__main__":
    main(sys.argv[1:])
