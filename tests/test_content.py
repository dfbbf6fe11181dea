from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from newsletter import content
from newsletter.errors import AmbiguousIssue, ContentError, IssueNotFound

OSLO = ZoneInfo("Europe/Oslo")


def test_front_matter_and_body_line(tmp_path):
    doc = content.split_front_matter("---\ntitle: Hi\nauthor: Ann\n---\nBody\n", tmp_path / "a.md")
    assert doc.meta == {"title": "Hi", "author": "Ann"}
    assert doc.body == "Body\n"
    assert doc.body_line == 5


def test_no_front_matter_is_all_body(tmp_path):
    doc = content.split_front_matter("Just text\n", tmp_path / "a.md")
    assert doc.meta == {} and doc.body == "Just text\n" and doc.body_line == 1


def test_malformed_yaml_names_file_and_line(tmp_path):
    text = "---\ntitle: Fine\nauthor: [unclosed\nsummary: x\n---\nBody\n"
    with pytest.raises(ContentError) as caught:
        content.split_front_matter(text, tmp_path / "01-post.md")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / '01-post.md'} line ")
    line = int(message.split(" line ")[1].split(":")[0])
    assert line == 3  # where the list opens, not line 5 where YAML notices it is not closed
    assert "front matter is not valid YAML" in message


def yaml_error_line(text: str, tmp_path) -> tuple[int, str]:
    with pytest.raises(ContentError) as caught:
        content.split_front_matter(text, tmp_path / "issue.md")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'issue.md'} line "), message
    assert "front matter is not valid YAML" in message and "\n" not in message
    return int(message.split(" line ")[1].split(":")[0]), message


@pytest.mark.parametrize(
    ("front", "line", "said"),
    [
        # The line a person would fix; line 1 is the opening ---.
        ('subject: "Why quotas fail\npreheader: P\nlist: main\n', 2, 'the " opened on this line is never closed'),
        ("subject: S\npreheader: 'Pre\nlist: main\n", 3, "the ' opened on this line is never closed"),
        ('subject: "Why quotas fail\npreheader: "Pre"\nlist: main\n', 2, 'the " opened on this line closes only on line 3'),
        ("subject: S\n  preheader: P\nlist: main\n", 3, "does not line up with the lines above"),
        ("posts:\n  - 01-a.md\n - 02-b.md\nlist: main\n", 4, "does not line up with the lines above"),
        ("subject: S\n\tpreheader: P\nlist: main\n", 3, "a tab"),
        ("subject: S\npreheader: Tip: sell well\nlist: main\n", 3, "put a value with ': ' or a quote inside it in quotes"),
        ("subject: S\njust a line of text\nlist: main\n", 3, "no `key: value`"),
        ("subject: S\nposts: [01-a.md, 02-b.md\nlist: main\n", 3, "the [ opened on this line is never closed"),
        ("subject: @ann on sales\n", 2, "put the value in quotes"),
    ],
    ids=["unclosed-double-quote", "unclosed-single-quote", "quote-closed-a-line-late",
         "indented-key", "indented-list-item", "tab", "colon-in-value", "no-colon",
         "unclosed-bracket", "reserved-character"],
)
def test_yaml_errors_point_at_the_line_to_fix(tmp_path, front, line, said):
    found, message = yaml_error_line(f"---\n{front}---\nBody\n", tmp_path)
    assert found == line, message
    assert said in message, message


def test_unclosed_front_matter(tmp_path):
    with pytest.raises(ContentError, match="line 1: front matter starts with --- but has no closing"):
        content.split_front_matter("---\ntitle: x\n", tmp_path / "a.md")


def test_front_matter_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ContentError, match="must be key: value pairs"):
        content.split_front_matter("---\n- a\n- b\n---\n", tmp_path / "a.md")


def make_issue(write, slug="2026-12-01-first", issue="---\nsubject: Hello\npreheader: Hi\n---\n", posts=None):
    write(f"issues/{slug}/issue.md", issue)
    for name, text in (posts or {"01-a.md": "---\ntitle: A\n---\nAlpha\n"}).items():
        write(f"issues/{slug}/{name}", text)
    return slug


def test_posts_are_assembled_in_name_order(letter, write):
    slug = make_issue(write, posts={
        "02-b.md": "---\ntitle: B\n---\nBeta\n",
        "01-a.md": "---\ntitle: A\nauthor: Kari\ncanonical_url: https://blog.example.com/a\nsummary: S\n---\nAlpha\n",
        "10-c.md": "---\ntitle: C\n---\nGamma\n",
    })
    issue = content.load_issue(letter / "issues" / slug, "Ann Berg", OSLO)
    assert [p.title for p in issue.posts] == ["A", "B", "C"]
    assert issue.posts[0].author == "Kari" and issue.posts[1].author == "Ann Berg"
    assert issue.posts[0].canonical_url == "https://blog.example.com/a"
    assert issue.posts[0].summary == "S"
    assert issue.subject == "Hello" and issue.preheader == "Hi"
    assert issue.date == dt.date(2026, 12, 1)


def test_posts_listed_by_path(letter, write):
    write("blog/posts/why.md", "---\ntitle: Why\n---\nBecause\n")
    slug = make_issue(
        write,
        issue="---\nsubject: S\nposts:\n  - ../../blog/posts/why.md\n---\nA note.\n",
        posts={"01-ignored.md": "---\ntitle: Ignored\n---\nx\n"},
    )
    issue = content.load_issue(letter / "issues" / slug, "Ann", OSLO)
    assert [p.title for p in issue.posts] == ["Why"]
    assert issue.note == "A note.\n"


def test_listed_post_that_does_not_exist(letter, write):
    slug = make_issue(write, issue="---\nsubject: S\nposts: [missing.md]\n---\n")
    with pytest.raises(ContentError, match="posts lists 'missing.md', which does not exist"):
        content.load_issue(letter / "issues" / slug, "Ann", OSLO)


def test_post_without_title(letter, write):
    slug = make_issue(write, posts={"01-a.md": "---\nauthor: Ann\n---\nText\n"})
    with pytest.raises(ContentError) as caught:
        content.load_issue(letter / "issues" / slug, "Ann", OSLO)
    assert "01-a.md: title is missing; add `title:" in str(caught.value)


def test_unknown_issue_key_is_named(letter, write):
    slug = make_issue(write, issue="---\nsubjet: Typo\n---\n")
    with pytest.raises(ContentError, match="unknown front matter key 'subjet'"):
        content.load_issue(letter / "issues" / slug, "Ann", OSLO)


def test_issue_without_posts(letter, write):
    write("issues/2026-12-01-empty/issue.md", "---\nsubject: S\n---\n")
    with pytest.raises(ContentError, match="the issue has no posts"):
        content.load_issue(letter / "issues" / "2026-12-01-empty", "Ann", OSLO)


def test_send_at_without_offset_is_in_the_newsletter_zone(letter, write):
    slug = make_issue(write, issue="---\nsubject: S\nsend_at: 2026-03-31 09:00\n---\n")
    issue = content.load_issue(letter / "issues" / slug, "Ann", OSLO)
    assert issue.send_at == dt.datetime(2026, 3, 31, 9, 0, tzinfo=OSLO)
    assert issue.send_at.utcoffset() == dt.timedelta(hours=2)  # summer time
    assert issue.date == dt.date(2026, 3, 31)


def test_send_at_with_offset_and_bad_value(letter, write):
    assert content.parse_send_at("2026-12-08T09:00:00+01:00", OSLO, "x").utcoffset() == dt.timedelta(hours=1)
    with pytest.raises(ContentError, match="is not a date and time"):
        content.parse_send_at("next tuesday", OSLO, "issue.md")


def test_resolve_issue_by_slug_path_short_slug_and_newest(letter, write):
    make_issue(write, "2026-12-01-first")
    make_issue(write, "2026-12-08-second")
    issues = letter / "issues"
    assert content.resolve_issue(issues, None).name == "2026-12-08-second"
    assert content.resolve_issue(issues, "2026-12-01-first").name == "2026-12-01-first"
    assert content.resolve_issue(issues, "first").name == "2026-12-01-first"
    assert content.resolve_issue(issues, "issues/2026-12-01-first/").name == "2026-12-01-first"


def test_unknown_issue_lists_the_ones_that_exist(letter, write):
    make_issue(write, "2026-12-01-first")
    with pytest.raises(IssueNotFound) as caught:
        content.resolve_issue(letter / "issues", "nope")
    assert "no issue 'nope'" in str(caught.value)
    assert "(issues: 2026-12-01-first)" in str(caught.value)


def test_a_short_name_of_two_issues_is_ambiguous(letter, write):
    make_issue(write, "2026-12-01-why-quotas-fail")
    make_issue(write, "2027-03-02-why-quotas-fail")
    with pytest.raises(AmbiguousIssue) as caught:
        content.resolve_issue(letter / "issues", "why-quotas-fail")
    message = str(caught.value)
    assert "ambiguous" in message
    assert "2026-12-01-why-quotas-fail" in message and "2027-03-02-why-quotas-fail" in message
    assert content.resolve_issue(letter / "issues", "2027-03-02-why-quotas-fail").name == "2027-03-02-why-quotas-fail"


def test_no_issues_at_all(letter):
    with pytest.raises(IssueNotFound, match="newsletter new"):
        content.resolve_issue(letter / "issues", None)


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Why quotas fail", "why-quotas-fail"),
        ("Sälj bra: 5 tips!", "salj-bra-5-tips"),
        ("???", "issue"),
        ("Tromsø og Ålesund", "tromso-og-alesund"),
        ("ÆØÅ", "aeoa"),
        ("Blåbær på Færøyene", "blabaer-pa-faeroyene"),
        ("Große Straße", "grosse-strasse"),
        ("Łódź, Þórshöfn, Œuvre", "lodz-thorshofn-oeuvre"),
        ("Launch day 🎉", "launch-day"),
    ],
)
def test_slugify(title, slug):
    assert content.slugify(title) == slug


@pytest.mark.parametrize(("key", "meant"), [
    ("canonical-url", "canonical_url"), ("Canonical_URL", "canonical_url"), ("titel", "title"),
    ("sumary", "summary"), ("autor", "author"),
])
def test_a_misspelt_post_key_is_refused_with_the_key_it_was_meant_to_be(letter, write, key, meant):
    write("issues/2026-12-01-x/issue.md", "---\nsubject: S\n---\n")
    write("issues/2026-12-01-x/01-a.md",
          f"---\ntitle: A\ntags: [sales]\n{key}: https://blog.example.com/a\n---\nBody.\n")
    if key == "titel":
        write("issues/2026-12-01-x/01-a.md", "---\ntitel: A\n---\nBody.\n")
    with pytest.raises(ContentError) as caught:
        content.load_issue(letter / "issues" / "2026-12-01-x", "Ann Berg", ZoneInfo("UTC"))
    message = str(caught.value)
    assert "01-a.md line" in message and f"{key!r}" in message and f"did you mean {meant!r}?" in message


def test_a_blogs_own_post_keys_are_left_alone(letter, write):
    write("issues/2026-12-01-x/issue.md", "---\nsubject: S\n---\n")
    write("issues/2026-12-01-x/01-a.md",
          "---\ntitle: A\nsubtitle: B\ndate: 2026-11-30\ntags: [sales]\ndraft: false\nslug: a\n---\nBody.\n")
    issue = content.load_issue(letter / "issues" / "2026-12-01-x", "Ann Berg", ZoneInfo("UTC"))
    assert [p.title for p in issue.posts] == ["A"]


def test_a_misspelt_issue_key_suggests_the_right_one(letter, write):
    write("issues/2026-12-01-x/issue.md", "---\nsubject: S\npre-header: P\n---\n")
    write("issues/2026-12-01-x/01-a.md", "---\ntitle: A\n---\nBody.\n")
    with pytest.raises(ContentError, match=r"issue.md line 3: unknown front matter key 'pre-header'; did you mean 'preheader'\?"):
        content.load_issue(letter / "issues" / "2026-12-01-x", "Ann Berg", ZoneInfo("UTC"))
