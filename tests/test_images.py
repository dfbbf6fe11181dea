"""Images in the email: their width attribute, resizing of wide ones, and the checks on
damaged, heavy, unshowable and transparent images. Every image here is a real file made with
Pillow, read back the way mail clients and browsers would."""

from __future__ import annotations

import hashlib
import random
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from newsletter import build, images
from newsletter import config as cfg
from newsletter.web.archive import AssetIndex

SLUG = "2026-12-01-pictures"
FOLDER = f"issues/{SLUG}"


@pytest.fixture
def issue(letter: Path, write):
    """issue(*markdown_lines) -> the folder of a one-post issue whose body is those lines."""

    def _issue(*lines: str) -> Path:
        write(f"{FOLDER}/issue.md", "---\nsubject: Pictures\npreheader: What the pipeline shows\n---\n")
        write(f"{FOLDER}/01-post.md", "---\ntitle: The chart\n---\nThe numbers first.\n\n"
              + "\n\n".join(lines) + "\n")
        return letter / FOLDER

    return _issue


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 7) -> Image.Image:
    """A picture that does not compress: every pixel random, as in a photo's grain."""
    rng = random.Random(seed)
    return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * len(mode)))


def load_config(letter: Path):
    return cfg.load(letter / "newsletter.toml", environ={})


def img_tags(html: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", html)


def attr(tag: str, name: str) -> str | None:
    found = re.search(rf'\s{name}="([^"]*)"', tag)
    return found.group(1) if found else None


def test_every_image_carries_its_displayed_width(issue, letter):
    folder = issue("![A small chart](small.png)", "![A wide chart](wide.png)")
    Image.new("RGB", (300, 120), "white").save(folder / "small.png")
    Image.new("RGB", (900, 300), "white").save(folder / "wide.png")
    rendered = build.render(load_config(letter), SLUG)
    small, wide = img_tags(rendered.html)
    assert attr(small, "width") == "300"  # its natural width
    assert attr(wide, "width") == str(images.COLUMN)  # at most the content column
    for tag in (small, wide):
        assert attr(tag, "height") is None  # no height="auto", which is not HTML
        assert "max-width:100%" in (attr(tag, "style") or "").replace(" ", "")  # phones
    web_small, web_wide = img_tags(rendered.web_html)
    assert attr(web_small, "width") == "300" and attr(web_wide, "width") == str(images.COLUMN)


def test_a_wide_photo_is_resized_and_published_in_place_of_the_original(issue, letter, cli):
    folder = issue("![The team at the offsite](photo.jpg)")
    noise((2400, 1600)).save(folder / "photo.jpg", quality=95)
    original = hashlib.sha256((folder / "photo.jpg").read_bytes()).hexdigest()
    result = cli("build", SLUG)
    assert result.exit_code == 0, result.output
    assert "resized issues/2026-12-01-pictures/photo.jpg for email: 2,400 to 1,072 px wide" in result.output
    published = letter / "dist" / SLUG / "web" / "photo.jpg"
    with Image.open(published) as small:
        assert small.size == (images.LARGEST, 715) and small.format == "JPEG"
    assert published.stat().st_size < (folder / "photo.jpg").stat().st_size / 2
    assert hashlib.sha256((folder / "photo.jpg").read_bytes()).hexdigest() == original  # untouched
    html = (letter / "dist" / SLUG / "email.html").read_text()
    (tag,) = img_tags(html)
    assert attr(tag, "width") == str(images.COLUMN)
    assert attr(tag, "src") == f"https://letter.example.com/archive/{SLUG}/photo.jpg"
    # the archive and the preview publish the same resized copy under the same name
    served = AssetIndex(load_config(letter)).get(SLUG)["photo.jpg"]
    assert served.read_bytes() == published.read_bytes()
    assert served.is_relative_to(letter / ".cache")


def test_a_turned_phone_photo_is_measured_as_it_is_shown(issue, letter):
    folder = issue("![A portrait from the road](portrait.jpg)")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown turned a quarter
    noise((2400, 1800)).save(folder / "portrait.jpg", exif=exif.tobytes())
    rendered = build.render(load_config(letter), SLUG)
    (picture,) = rendered.images
    assert (picture.width, picture.height) == (images.LARGEST, 1429)  # portrait, upright
    with Image.open(picture.file) as small:
        assert small.size == (images.LARGEST, 1429)


def test_an_image_no_wider_than_twice_the_column_is_left_alone(issue, letter):
    folder = issue("![A sharp chart](retina.png)")
    Image.new("RGB", (images.LARGEST, 400), "white").save(folder / "retina.png")
    (picture,) = build.render(load_config(letter), SLUG).images
    assert not picture.resized and picture.file == (folder / "retina.png").resolve()


def test_an_animated_gif_is_left_as_it_is(issue, letter):
    folder = issue("![The funnel, animated](funnel.gif)")
    frames = [Image.new("P", (1600, 400), colour) for colour in (1, 2, 3)]
    frames[0].save(folder / "funnel.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)
    rendered = build.render(load_config(letter), SLUG)
    (picture,) = rendered.images
    assert not picture.resized and picture.width == 1600
    assert attr(img_tags(rendered.html)[0], "width") == str(images.COLUMN)


def test_a_damaged_image_is_an_error_naming_the_file(issue, letter, cli):
    folder = issue("![The quarter](quarter.jpg)")
    noise((800, 400)).save(folder / "quarter.jpg")
    data = (folder / "quarter.jpg").read_bytes()
    (folder / "quarter.jpg").write_bytes(data[: len(data) // 2])  # cut off in the middle
    result = cli("check", SLUG)
    assert result.exit_code == 1
    assert re.search(r"issues/2026-12-01-pictures/01-post.md line \d+: image 'quarter.jpg' cannot "
                     r"be read as an image \(.*truncated.*\); open it and save it again", result.output)


@pytest.mark.parametrize(("name", "content", "says"), [
    ("plan.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
     "is not an image mail clients can show (JPEG, PNG or GIF); save it as one"),
    ("notes.png", b"These are meeting notes, not a picture.",
     "is not an image mail clients can show (JPEG, PNG or GIF); save it as one"),
    ("scan.bmp", None, "is a BMP image, which mail clients do not show; save it as JPEG or PNG"),
])
def test_an_image_mail_clients_cannot_show_is_an_error(issue, letter, cli, name, content, says):
    folder = issue(f"![The plan]({name})")
    if content is None:
        Image.new("RGB", (40, 40)).save(folder / name)
    else:
        (folder / name).write_bytes(content)
    result = cli("check", SLUG)
    assert result.exit_code == 1
    assert f"image '{name}' {says}" in result.output


def test_an_image_too_large_to_read_safely_is_an_error(issue, letter, cli):
    # A PNG whose header says 20,000 x 20,000 px: Pillow refuses it before reading the pixels.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    folder = issue("![The whole territory](territory.png)")
    (folder / "territory.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b""))
    result = cli("check", SLUG)
    assert result.exit_code == 1
    assert "image 'territory.png' is too large to read safely" in result.output


def test_heavy_images_are_flagged_one_by_one_and_together(issue, letter, cli):
    folder = issue(*(f"![Grain {n}](grain-{n}.png)" for n in range(1, 4)))
    for n in range(1, 4):
        noise((1000, 700), seed=n).save(folder / f"grain-{n}.png")  # about 2 MB each: no compression helps
    result = cli("check", SLUG)
    assert result.exit_code == 0, result.output  # warnings do not stop a send
    assert "warning: issues/2026-12-01-pictures/01-post.md line 6: image 'grain-1.png' is 2.0 MB; readers on " \
           "phones wait for it: keep each image under 1.0 MB" in result.output
    assert result.output.count("readers on phones wait for it: keep each image") == 3
    assert "the issue's images come to 6.0 MB; readers on phones wait for them: keep them under 3.0 MB in all" \
        in result.output


def test_a_resized_image_is_judged_by_the_copy_that_is_mailed(issue, letter, cli):
    folder = issue("![The grain of a wide photo](wide-grain.png)")
    noise((2200, 900)).save(folder / "wide-grain.png")  # 5.7 MB, still 1.2 MB at 1,072 px
    result = cli("check", SLUG)
    assert "image 'wide-grain.png' is 1.2 MB after resizing to 1,072 px wide" in result.output


def test_dark_art_on_a_transparent_background_is_flagged_for_gmail_dark_mode(issue, letter, cli):
    folder = issue("![Our logo](logo.png)", "![A chart on white](chart.png)")
    logo = Image.new("RGBA", (300, 100), (0, 0, 0, 0))
    ImageDraw.Draw(logo).rectangle((20, 20, 120, 80), fill=(20, 24, 30, 255))
    logo.save(folder / "logo.png")
    chart = Image.new("RGBA", (300, 100), (255, 255, 255, 255))
    ImageDraw.Draw(chart).rectangle((20, 20, 120, 80), fill=(20, 24, 30, 255))
    chart.save(folder / "chart.png")
    result = cli("check", SLUG)
    assert "image 'logo.png' is dark on a transparent background; Gmail's dark mode" in result.output
    assert "image 'chart.png' is dark" not in result.output


def test_a_remote_image_is_flagged_for_its_unknown_width(issue, letter, cli):
    issue("![The board](https://cdn.example.com/board.png)")
    result = cli("check", SLUG)
    assert "image 'https://cdn.example.com/board.png' is not beside the post, so its width is " \
           "unknown and Outlook for Windows shows it at full size" in result.output


def test_an_html_image_without_a_width_is_flagged(issue, letter, cli):
    issue('<img src="https://cdn.example.com/team.jpg" alt="The team">',
          '<img src="https://cdn.example.com/logo.png" alt="Our logo" width="120">')
    result = cli("check", SLUG)
    assert "01-post.md line 6: image 'https://cdn.example.com/team.jpg' has no width attribute, so " \
           "Outlook for Windows shows it at full size; add width=\"...\" (at most 536)" in result.output
    assert "logo.png' has no width" not in result.output


def test_the_sample_issues_images_pass(sample_letter, cli):
    result = cli("check", "2026-12-01-the-quota-is-not-the-goal")
    assert result.exit_code == 0, result.output
    assert "image" not in result.output


def inspect_afresh(source: Path, cache: Path) -> images.Image:
    """What a new process finds: the in-memory record of this one is forgotten."""
    images._seen.clear()
    return images.inspect(source, cache)


@pytest.fixture
def pillow_opens(monkeypatch):
    opened = []
    real = images._inspect

    def counting(source, *rest):
        opened.append(source)
        return real(source, *rest)

    monkeypatch.setattr(images, "_inspect", counting)
    return opened


def test_what_was_measured_is_kept_so_a_new_process_need_not_open_the_image(tmp_path, pillow_opens):
    source = tmp_path / "photo.jpg"
    noise((2400, 1600)).save(source, quality=90)
    first = inspect_afresh(source, tmp_path / "cache")
    again = inspect_afresh(source, tmp_path / "cache")
    assert pillow_opens == [source]
    assert again == first and again.resized and again.width == images.LARGEST


def test_a_changed_image_is_measured_again(tmp_path, pillow_opens):
    source = tmp_path / "chart.png"
    noise((300, 200)).save(source)
    assert inspect_afresh(source, tmp_path / "cache").width == 300
    noise((500, 200)).save(source)
    assert inspect_afresh(source, tmp_path / "cache").width == 500
    assert len(pillow_opens) == 2


def test_a_removed_copy_is_made_again(tmp_path, pillow_opens):
    source = tmp_path / "photo.jpg"
    noise((2400, 1600)).save(source, quality=90)
    first = inspect_afresh(source, tmp_path / "cache")
    first.file.unlink()
    again = inspect_afresh(source, tmp_path / "cache")
    assert again.file.is_file() and again.width == images.LARGEST and len(pillow_opens) == 2


def test_a_damaged_record_is_measured_again(tmp_path, pillow_opens):
    source = tmp_path / "chart.png"
    noise((300, 200)).save(source)
    inspect_afresh(source, tmp_path / "cache")
    (record,) = (tmp_path / "cache").glob("*.json")
    for damaged in ("{", '{"format": "PNG"}', record.read_text().replace("300", '"wide"')):
        record.write_text(damaged)
        assert inspect_afresh(source, tmp_path / "cache").width == 300
    assert len(pillow_opens) == 4


def test_a_problem_is_not_kept(tmp_path, pillow_opens):
    source = tmp_path / "chart.png"
    source.write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    assert inspect_afresh(source, tmp_path / "cache").problem
    noise((300, 200)).save(source)
    assert inspect_afresh(source, tmp_path / "cache").problem is None


def test_a_second_build_does_not_load_pillow(sample_letter):
    quota = "2026-12-01-the-quota-is-not-the-goal"  # the sample issue with a chart
    code = ("import sys; from newsletter import build, config; "
            f"r = build.build(config.load('newsletter.toml', environ={{}}), {quota!r}); "
            "print([(i.width, i.height) for i in r.rendered.images], 'PIL' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=sample_letter, capture_output=True,
                           text=True, check=True).stdout.strip() for _ in range(2)]
    sizes = runs[0].rsplit(" ", 1)[0]
    assert sizes != "[]" and runs == [f"{sizes} True", f"{sizes} False"]
